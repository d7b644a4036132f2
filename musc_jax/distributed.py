"""Multi-process start-up through JAX's multi-controller runtime (jax.distributed), and the
checks that keep several processes in step: storage all hosts share, one decision for all.
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Mapping

import jax
import numpy as np

from musc_jax.errors import UserError

log = logging.getLogger(__name__)

# Environment variables that mean "this process is one of several" (SLURM: see `srun_launched`).
_CLUSTER_HINTS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                  "JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")


class SharedStorageError(UserError):
    """A directory that every process must see is not the same storage on all hosts."""


def srun_launched(env: Mapping[str, str] = os.environ) -> bool:
    """True inside a job step that srun started with several tasks. An sbatch script, or a
    shell inside an allocation, has SLURM_JOB_ID (and often SLURM_NTASKS) but is one process:
    treating it as one of several would wait forever for tasks that never start."""
    if "SLURM_STEP_ID" not in env or "SLURM_PROCID" not in env:
        return False
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    return int(tasks) > 1


def cluster_detected(env: Mapping[str, str] = os.environ) -> bool:
    return any(k in env for k in _CLUSTER_HINTS) or srun_launched(env)


def maybe_initialize(config) -> bool:
    """Call jax.distributed.initialize() when the run spans several processes.

    Explicit settings come from `config.distributed` (coordinator "host:port", num_processes,
    process_id) or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
    otherwise JAX auto-detects TPU pods and SLURM job steps started by srun (`srun_launched`). A
    single plain process does nothing.
    """
    d = config.get("distributed") if hasattr(config, "get") else None
    coordinator = (d.coordinator if d else "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = (d.num_processes if d else 0) or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    pid = d.process_id if d and d.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if coordinator:
        if num <= 0 or pid < 0:
            raise ValueError("distributed.coordinator is set: also set distributed.num_processes "
                             "and distributed.process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    elif cluster_detected():
        jax.distributed.initialize()
    else:
        return False
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


# ------------------------------------------------------------------- one decision for all

def all_processes(flag: bool) -> list[bool]:
    """`flag` as every process sees it, indexed by process (one process: [flag])."""
    if jax.process_count() == 1:
        return [bool(flag)]
    from jax.experimental import multihost_utils
    got = multihost_utils.process_allgather(np.asarray([flag], np.int32), tiled=True)
    return [bool(x) for x in np.asarray(got)]


def check_shared_dir(path: str | Path, what: str = "workdir") -> None:
    """Raise SharedStorageError on every process unless `path` is one storage for all of them.

    Process 0 writes a random token there; after a barrier every process reads it back. Checkpoints
    (orbax), the reference cache and metrics are written by one process and read by all, so a
    host-local directory would fail later, or hang. One process: nothing to check."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils
    path = Path(path)
    token_file = path / ".musc_shared_check"
    token = multihost_utils.broadcast_one_to_all(
        np.frombuffer(secrets.token_bytes(16), np.uint8))
    if jax.process_index() == 0:
        path.mkdir(parents=True, exist_ok=True)
        token_file.write_bytes(np.asarray(token).tobytes())
    # Barrier names must agree on all processes: the key, not the path (hosts may disagree on it).
    multihost_utils.sync_global_devices(f"musc shared check {what}")
    try:
        ok = token_file.read_bytes() == np.asarray(token).tobytes()
    except OSError:
        ok = False
    seen = all_processes(ok)
    multihost_utils.sync_global_devices(f"musc shared check {what} read")
    if jax.process_index() == 0:
        token_file.unlink(missing_ok=True)
    if not all(seen):
        missing = [i for i, s in enumerate(seen) if not s]
        raise SharedStorageError(
            f"{what} {path}: processes {missing} of {len(seen)} do not see what process 0 wrote "
            f"there; point {what} at storage every host shares (NFS, Filestore, a mounted bucket)")


def check_tensor_within_hosts(devices: np.ndarray) -> None:
    """Refuse a mesh whose "tensor" axis spans processes.

    `devices` is `mesh.devices` [data, fsdp, tensor]. Each process loads the batch rows of its own
    devices and the rows are cut over (data, fsdp) only, so the devices of one tensor group must
    all belong to one process (each host loads whole rows)."""
    d = np.asarray(devices)
    for idx in np.ndindex(*d.shape[:-1]):
        procs = sorted({dev.process_index for dev in d[idx]})
        if len(procs) > 1:
            raise UserError(f"mesh.tensor={d.shape[-1]} spans processes {procs} (devices "
                            f"{[dev.id for dev in d[idx]]}): keep the tensor axis within a host "
                            f"(tensor <= {jax.local_device_count()} local devices) and scale with "
                            "data or fsdp across hosts")
