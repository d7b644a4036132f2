"""Atomic, resumable checkpoints with orbax: train state arrays plus JSON metadata.

A checkpoint holds the parameters, the optimizer state and the step (arrays, restored straight
into the shardings of the current mesh, which may differ from the one that saved them), and a
JSON record with the data-loader position and anything else the loop needs to continue on the
same trajectory. orbax writes to a temporary directory and renames it when complete, so a run
killed at any moment resumes from the last complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Save every `every` steps, keep the last `keep`; restore the latest."""

    def __init__(self, directory: str | Path, every: int, keep: int):
        self.directory = Path(directory).absolute()
        self.every = every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, save_interval_steps=max(every, 1), create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
        """Save if `step` is due (or `force`); returns whether a save was started."""
        return self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          meta=ocp.args.JsonSave(meta)), force=force)

    def read_meta(self, step: int) -> dict:
        """The JSON record of checkpoint `step` alone (no arrays are read)."""
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restore (state, meta, step) onto the shardings named by `abstract_state`.

        `abstract_state` is a pytree of jax.ShapeDtypeStruct with `.sharding` set (e.g. from
        jax.eval_shape plus the current mesh's shardings).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{self.directory}: no complete checkpoint to restore")
        out = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"]), step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) mirroring a tree of arrays."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
