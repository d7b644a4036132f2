"""Multi-process start-up through JAX's multi-controller runtime (jax.distributed)."""

from __future__ import annotations

import logging
import os

import jax

log = logging.getLogger(__name__)

# Environment variables that mean "this process is one of several".
_CLUSTER_HINTS = ("SLURM_NTASKS", "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                  "JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE")


def maybe_initialize(config) -> bool:
    """Call jax.distributed.initialize() when the run spans several processes.

    Explicit settings come from `config.distributed` (coordinator "host:port", num_processes,
    process_id) or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID);
    otherwise JAX auto-detects TPU pods and SLURM. A single plain process does nothing.
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
    elif any(k in os.environ for k in _CLUSTER_HINTS) and int(os.environ.get("SLURM_NTASKS", "2")) > 1:
        jax.distributed.initialize()
    else:
        return False
    log.info("process %d of %d; %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
