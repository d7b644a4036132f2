"""A run killed with SIGKILL mid-way and resumed ends where an uninterrupted run ends."""

import json
import signal

import numpy as np
import pytest

from subproc import run_python
from trainer_fixtures import model_dir, pairs_file

RUN = r"""
import os, signal, sys
from musc_jax.config import base_config
from musc_jax.trainer import Trainer
c = base_config()
c.model.path, c.data.train, c.workdir = sys.argv[1], sys.argv[2], sys.argv[3]
c.data.max_length, c.data.max_prompt_length = 128, 64
c.train.batch_size, c.train.epochs = 4, 3          # 12 steps over 3 shuffled epochs
c.optim.lr, c.loss.a_tok = 1e-3, 0.0
c.optim.warmup_steps, c.optim.schedule = 2, "cosine"
c.checkpoint.every = 4
kill_at = int(sys.argv[4])
t = Trainer(c)
print("start", t.step, flush=True)
def maybe_die(tr):
    if tr.step == kill_at:
        tr.checkpointer.wait()  # let the step-4 save land, as it would on a real cluster
        os.kill(os.getpid(), signal.SIGKILL)
t.callbacks.append(maybe_die)
t.train()
t.export()
t.close()
"""


def _params(export_dir):
    from musc_jax.models.safetensors_io import TensorIndex
    idx = TensorIndex([export_dir / "model.safetensors"])
    return {n: np.array(idx.get(n)) for n in idx.names()}


def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    model = model_dir(tmp_path / "model")
    pairs = pairs_file(tmp_path / "pairs.jsonl", 16)
    full = tmp_path / "full"
    run_python(RUN.replace("sys.argv[1], sys.argv[2], sys.argv[3]", f"{str(model)!r}, {str(pairs)!r}, {str(full)!r}")
               .replace("int(sys.argv[4])", "-1"), devices=1)
    killed = tmp_path / "killed"
    code = RUN.replace("sys.argv[1], sys.argv[2], sys.argv[3]", f"{str(model)!r}, {str(pairs)!r}, {str(killed)!r}")
    with pytest.raises(AssertionError, match=r"subprocess failed \(-9\)"):
        run_python(code.replace("int(sys.argv[4])", "6"), devices=1)
    assert (killed / "checkpoints" / "4").exists() and not (killed / "export").exists()
    out = run_python(code.replace("int(sys.argv[4])", "-1"), devices=1)
    assert "start 4" in out
    a, b = _params(full / "export"), _params(killed / "export")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], atol=1e-6, rtol=0, err_msg=name)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    # Step 5 was logged before the kill and ran again after the resume from step 4: logged once.
    assert steps == list(range(1, 13))
