"""Peak host memory of `from_pretrained` in bfloat16 vs float32 (issue 2).

Saves a ~100M-parameter random Llama in float32 (the worst case for a bfloat16 load: every
tensor must be converted), then loads it in a fresh process per dtype and reports the peak RSS,
both absolute and above the process's RSS just before loading (imports and the JAX runtime).
The bfloat16 load should peak at no more than 0.6x the float32 load above that baseline.

    python bench/load_memory.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import sys, json
def status_kib(field):
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec.
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
import jax, jax.numpy as jnp
from musc_jax.models import from_pretrained
jnp.zeros(1).block_until_ready()  # start the runtime before the baseline
base = status_kib("VmRSS")
model = from_pretrained(sys.argv[1], dtype=getattr(jnp, sys.argv[2]))
jax.block_until_ready(jax.tree.leaves(__import__("flax").nnx.state(model)))
peak = status_kib("VmHWM")
print(json.dumps({"base_mib": base / 1024, "peak_mib": peak / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="save the model here instead of a temp dir")
    args = ap.parse_args()

    import jax.numpy as jnp
    from musc_jax.models import ModelConfig, init_model, save_pretrained

    cfg = ModelConfig(vocab_size=16000, hidden_size=768, intermediate_size=2048, num_layers=12,
                      num_heads=12, num_kv_heads=12, head_dim=64)
    path = args.keep or Path(tempfile.mkdtemp()) / "model"
    if not (path / "config.json").exists():
        save_pretrained(init_model(cfg, dtype=jnp.float32), path)
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) / 2**20
    print(f"model: {cfg.num_params() / 1e6:.1f}M parameters, {size:.0f} MiB float32 safetensors")

    res = {}
    for dtype in ("float32", "bfloat16"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(path), dtype], check=True,
                             capture_output=True, text=True).stdout
        res[dtype] = json.loads(out.strip().splitlines()[-1])
        r = res[dtype]
        print(f"{dtype:9s} peak RSS {r['peak_mib']:7.0f} MiB  (baseline {r['base_mib']:.0f} MiB, "
              f"load adds {r['peak_mib'] - r['base_mib']:.0f} MiB)")
    added = {k: v["peak_mib"] - v["base_mib"] for k, v in res.items()}
    ratio = added["bfloat16"] / added["float32"]
    abs_ratio = res["bfloat16"]["peak_mib"] / res["float32"]["peak_mib"]
    print(f"load_memory: bf16_added_mib={added['bfloat16']:.0f} fp32_added_mib={added['float32']:.0f} "
          f"ratio={ratio:.3f} abs_peak_ratio={abs_ratio:.3f}")


if __name__ == "__main__":
    main()
