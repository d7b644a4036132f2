"""Trained parameters and optimizer-state bytes of training runs, read from their checkpoints.

    python scripts/checkpoint_state_size.py RUN_DIR [RUN_DIR ...] [--json OUT]

A run's checkpoint (`RUN_DIR/checkpoints/<last step>/state`) holds exactly what the trainer
keeps between steps: the trained parameters ("params": every weight with full fine-tuning, the
adapters alone with LoRA) and the optimizer state ("opt_state": AdamW's two moments per trained
parameter plus step counts). Only the orbax metadata (shapes, dtypes) is read, no arrays.
Prints one line per run: trained parameters, their bytes, optimizer-state bytes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def state_size(run_dir: Path) -> dict:
    """{"step", "trainable_params", "param_bytes", "opt_state_bytes"} of the run's last checkpoint."""
    import jax
    import orbax.checkpoint as ocp

    steps = sorted((int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()))
    if not steps:
        raise SystemExit(f"{run_dir}/checkpoints: no checkpoint (train with checkpoint.every >= 0)")
    meta = ocp.StandardCheckpointer().metadata(run_dir / "checkpoints" / str(steps[-1]) / "state")
    tree = getattr(meta, "item_metadata", meta)
    out = {"step": steps[-1]}
    for key, name in (("params", "param"), ("opt_state", "opt_state")):
        leaves = jax.tree.leaves(tree[key], is_leaf=lambda x: hasattr(x, "shape"))
        sizes = [int(np.prod(l.shape)) for l in leaves]
        if key == "params":
            out["trainable_params"] = sum(sizes)
        out[f"{name}_bytes"] = sum(n * np.dtype(l.dtype).itemsize for n, l in zip(sizes, leaves))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--json", type=Path, help="also write {run dir: sizes} here")
    args = ap.parse_args()
    result = {}
    for run in args.runs:
        s = result[str(run)] = state_size(run)
        print(f"{run}: step {s['step']}: trainable_params={s['trainable_params']:,} "
              f"param_bytes={s['param_bytes']:,} opt_state_bytes={s['opt_state_bytes']:,}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
