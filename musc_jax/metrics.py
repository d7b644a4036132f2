"""Training metrics: a progress bar, metrics.jsonl and TensorBoard event files (process 0 only)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping

import jax


class NonFiniteError(FloatingPointError):
    """A NaN or inf in the loss or the gradients."""


def check_finite(step: int, metrics: Mapping[str, float], keys=("loss", "grad_norm"),
                 when: str = "") -> None:
    """Stop the run, naming the step and the metric, when a watched metric is not finite.

    `when` says which parameters the metric was computed with, e.g. "after the update"."""
    for key in keys:
        if key in metrics and not math.isfinite(metrics[key]):
            at = f" {when}" if when else ""
            raise NonFiniteError(f"step {step}: {key}{at} = {metrics[key]} (non-finite); stopping "
                                 "with nothing saved for this step. Lower optim.lr, check the "
                                 "data, or enable optim.clip_norm.")


def drop_steps_after(path: Path, step: int) -> int:
    """Remove the records of steps > `step` from a metrics.jsonl (a resumed run replays them);
    returns how many were removed. A torn last line (a killed writer) is dropped too."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if record.get("step", 0) > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(x + "\n" for x in kept))
        tmp.replace(path)
    return dropped


class MetricsWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard; shows a tqdm progress bar."""

    def __init__(self, workdir: str | Path, total_steps: int, initial_step: int = 0,
                 tensorboard: bool = True, progress: bool = True):
        self.active = jax.process_index() == 0
        self.workdir = Path(workdir)
        self._tb = None
        self._bar = None
        self._file = None
        self.total_steps = total_steps
        if not self.active:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        # Steps after `initial_step` were written by a run that stopped before checkpointing
        # them; this run writes them again.
        drop_steps_after(self.workdir / "metrics.jsonl", initial_step)
        self._file = open(self.workdir / "metrics.jsonl", "a")
        if tensorboard:
            from tensorboardX import SummaryWriter
            # purge_step hides events of replayed steps that an interrupted run wrote.
            self._tb = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=initial_step + 1)
        if progress:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True,
                             desc="train", mininterval=1.0)
        self._t0 = time.time()

    def write(self, step: int, scalars: Mapping[str, float], split: str = "train") -> None:
        if not self.active:
            return
        record = {"step": step, "split": split, "time": round(time.time() - self._t0, 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), step)
        if self._bar is not None and split == "train":
            self._bar.n = step
            shown = {k: scalars[k] for k in ("loss", "rewards/margins", "rewards/accuracies",
                                              "tokens_per_s") if k in scalars}
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in shown.items()},
                                  refresh=False)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
