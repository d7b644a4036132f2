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


FAILING = r"""
from musc_jax import cli
holder = cli.define_config_flag()

def body(config):
    import jax
    from jax.experimental import multihost_utils
    if jax.process_index() == 1:
        import os, time
        open(os.environ["RAISED_AT"], "w").write(str(time.time()))
        raise RuntimeError("boom in process 1")
    multihost_utils.sync_global_devices("waits for process 1 forever")

cli.main_with_config(holder, body)
"""


def test_a_failing_process_leaves_at_once_instead_of_hanging_the_job(tmp_path):
    """Process 1 raises while process 0 waits in a collective: process 1 must print its error and
    exit (status 1) at once, so the launcher can stop the rest; a normal exit would wait in jax's
    shutdown barrier for process 0, which waits for process 1: the job would hang."""
    import os
    import subprocess
    import sys
    import time

    from test_multihost import REPO, _free_port

    config = tmp_path / "c.py"
    config.write_text("from musc_jax.config import base_config\n\ndef get_config():\n"
                      "    return base_config()\n")
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
                   JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid), PYTHONPATH=str(REPO),
                   RAISED_AT=str(tmp_path / "raised_at"))
        procs.append(subprocess.Popen([sys.executable, "-c", FAILING, "--config", str(config)],
                                      env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        _, err = procs[1].communicate(timeout=240)
        exited_after = time.time() - float((tmp_path / "raised_at").read_text())
        assert procs[1].returncode == 1, err[-3000:]
        assert "RuntimeError: boom in process 1" in err
        # Without leave_group it waits ~30 s or more in the shutdown barrier (measured: 48 s).
        assert exited_after < 10, exited_after
    finally:
        for p in procs:
            p.kill()
            p.communicate()
