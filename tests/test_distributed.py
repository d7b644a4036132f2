"""Multi-host robustness (musc_jax.distributed): SLURM detection only under srun, a tensor axis
inside a host, storage shared by all processes, one decision for all (two local processes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from musc_jax import distributed
from musc_jax.errors import UserError
from test_multihost import _two_processes


@pytest.mark.parametrize("env, expected", [
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, False),          # sbatch script: one process
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0", "SLURM_PROCID": "2"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}, False),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, True),
    ({}, False),
])
def test_cluster_detection_needs_srun_for_slurm(env, expected):
    assert distributed.cluster_detected(env) is expected


def _devices(procs):
    """A [data, fsdp, tensor] grid of fake devices with the given process indices."""
    p = np.asarray(procs)
    grid = np.empty(p.shape, object)
    for i, idx in enumerate(np.ndindex(*p.shape)):
        grid[idx] = SimpleNamespace(id=i, process_index=int(p[idx]))
    return grid


def test_tensor_axis_spanning_hosts_is_refused():
    distributed.check_tensor_within_hosts(_devices([[[0, 0], [1, 1]]]))  # tensor inside hosts
    with pytest.raises(UserError, match=r"mesh.tensor=2 spans processes \[0, 1\]"):
        distributed.check_tensor_within_hosts(_devices([[[0, 1], [0, 1]]]))


SCRIPT = r"""
import json, sys, pathlib
import jax
from musc_jax.config import base_config
from musc_jax import distributed
root = pathlib.Path(sys.argv[1])
distributed.maybe_initialize(base_config())
pid = jax.process_index()
out = {"processes": jax.process_count()}
distributed.check_shared_dir(root / "shared")
out["shared_ok"] = True
try:  # each process sees its own directory: what a host-local disk looks like
    distributed.check_shared_dir(root / f"local{pid}")
    out["local"] = "accepted"
except distributed.SharedStorageError as e:
    out["local"] = str(e)
out["flags"] = distributed.all_processes(pid == 0)
if pid == 0:
    print(json.dumps(out))
"""


def test_shared_storage_check_and_one_decision_with_two_processes(tmp_path):
    out = json.loads(_two_processes(SCRIPT, [str(tmp_path)], timeout=300).strip().splitlines()[-1])
    assert out["processes"] == 2 and out["shared_ok"]
    assert "processes [1] of 2 do not see what process 0 wrote" in out["local"], out
    assert out["flags"] == [True, False]
    assert not (tmp_path / "shared" / ".musc_shared_check").exists()
