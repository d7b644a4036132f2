"""Work split over JAX processes for the data side (pair building, evaluation).

Generation is embarrassingly parallel over prompts, so each process works on its own slice with
its own devices (`musc_jax.data.policy.policy_mesh`) and the processes meet only to exchange
small results (`allgather_json`) or at a `barrier`. Which process owns which unit of work is
`owned(n)`: round-robin, so a unit's index, not the process count, fixes everything random
about it (units are seeded by their global index).

One process (no jax.distributed) is the special case: it owns everything and nothing is
exchanged.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import numpy as np

log = logging.getLogger(__name__)


def owned(n: int, index: int | None = None, count: int | None = None) -> list[int]:
    """The units of `range(n)` process `index` of `count` works on (round-robin).

    Round-robin keeps the slices balanced when unit costs grow along the list (e.g. prompts
    sorted by length) and gives every process work as soon as n >= count.
    """
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if not 0 <= index < count:
        raise ValueError(f"process index {index} is not in [0, {count})")
    return list(range(index, n, count))


def allgather_json(obj: Any) -> list[Any]:
    """Every process's `obj` (JSON-serialisable), in process order, on every process.

    Two `process_allgather` calls (the byte lengths, then the bytes padded to the longest), so
    processes may contribute objects of any size.
    """
    if jax.process_count() == 1:
        return [json.loads(json.dumps(obj))]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(obj).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64)))
    sizes = sizes.reshape(-1)
    padded = np.zeros(max(int(sizes.max()), 1), np.uint8)
    padded[:data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:int(n)]).decode("utf-8")) for row, n in zip(gathered, sizes)]


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (no-op in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def wait_for_paths(paths: Sequence[Path], what: str, poll_s: float = 2.0,
                   report_s: float = 60.0, exists: Callable[[Path], bool] = Path.exists) -> None:
    """Block until every path exists (written by other processes on a shared filesystem).

    Used instead of a device barrier where processes may finish minutes or hours apart (a
    collective would time out or spin the accelerators); a process that dies stops the others
    through jax.distributed's failure detection, so this does not wait forever on a crash.
    """
    last = time.monotonic()
    while True:
        missing = [p for p in paths if not exists(p)]
        if not missing:
            return
        if time.monotonic() - last >= report_s:
            log.info("waiting for %d %s from other processes (e.g. %s); out_dir must be on a "
                     "filesystem every process shares", len(missing), what, missing[0])
            last = time.monotonic()
        time.sleep(poll_s)


__all__ = ["allgather_json", "barrier", "owned", "wait_for_paths"]
