"""Two processes x 4 simulated CPU devices train like one process with 8 devices.

The processes join through jax.distributed (coordinator on 127.0.0.1), build one global mesh
and train 3 steps; the loss and the final parameters must equal a single-process 8-device run.
The multi-host checkpoint then restores in a single process onto a different mesh.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from subproc import REPO, run_python
from trainer_fixtures import model_dir, pairs_file

TRAIN = r"""
import json, os, sys, pathlib
import jax, numpy as np
from flax import nnx
from ml_collections import ConfigDict
from musc_jax.config import base_config
from musc_jax.distributed import maybe_initialize
from musc_jax.trainer import Trainer
from jax.experimental import multihost_utils

root, name, mesh = pathlib.Path(sys.argv[1]), sys.argv[2], tuple(map(int, sys.argv[3].split(",")))
resume_only = len(sys.argv) > 4
c = base_config()
maybe_initialize(c)
c.model.path, c.data.train = str(root / "model"), str(root / "pairs.jsonl")
c.workdir = str(root / name)
c.data.max_length, c.data.max_prompt_length = 128, 64
c.train.batch_size, c.train.max_steps, c.train.epochs, c.train.shuffle = 8, 3, 2, False
c.optim.lr, c.loss.a_tok = 1e-3, 0.0
c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
c.checkpoint.every = 3
c.export.enabled = False
t = Trainer(c)
if not resume_only:
    t.train()
params = {"/".join(map(str, k)): np.asarray(multihost_utils.process_allgather(v[...], tiled=True))
          for k, v in nnx.to_flat_state(t.params)}
t.close()
if jax.process_index() == 0:
    np.savez(root / f"{name}{'_restored' if resume_only else ''}.npz", **params)
    print(json.dumps({"step": t.step, "processes": jax.process_count(), "devices": jax.device_count()}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(script, args, timeout=600):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid),
                   PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
        procs.append(subprocess.Popen([sys.executable, "-c", script, *args], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"process failed ({p.returncode}):\n{out[-2000:]}\n{err[-5000:]}"
    return outs[0][0]


def test_two_processes_equal_one_and_checkpoint_restores_on_another_mesh(tmp_path):
    model_dir(tmp_path / "model", num_key_value_heads=4)
    pairs_file(tmp_path / "pairs.jsonl", 16)
    multi = json.loads(_two_processes(TRAIN, [str(tmp_path), "multi", "2,2,2"]).strip().splitlines()[-1])
    assert multi == {"step": 3, "processes": 2, "devices": 8}
    single = run_python(TRAIN.replace("sys.argv[1]", repr(str(tmp_path))).replace(
        "sys.argv[2], tuple(map(int, sys.argv[3].split(\",\")))", "'single', (2, 2, 2)").replace(
        "len(sys.argv) > 4", "False"), devices=8)
    assert json.loads(single.strip().splitlines()[-1])["processes"] == 1
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert set(a.files) == set(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], atol=1e-5, rtol=0, err_msg=k)
    losses = [[json.loads(x)["loss"] for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
              for n in ("multi", "single")]
    assert len(losses[0]) == 3 and np.allclose(losses[0], losses[1], atol=1e-5), losses
    # The multi-host checkpoint, restored by one process on a (1, 4, 2) mesh.
    code = TRAIN.replace("sys.argv[1]", repr(str(tmp_path))).replace(
        "sys.argv[2], tuple(map(int, sys.argv[3].split(\",\")))", "'multi', (1, 4, 2)").replace(
        "len(sys.argv) > 4", "True")
    out = json.loads(run_python(code, devices=8).strip().splitlines()[-1])
    assert out["step"] == 3
    r = np.load(tmp_path / "multi_restored.npz")
    for k in a.files:
        np.testing.assert_array_equal(r[k], a[k], err_msg=k)
