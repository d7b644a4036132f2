"""Training on 8 simulated CPU devices equals the single-device run; FSDP divides the memory."""

import json

import numpy as np

from subproc import run_python
from trainer_fixtures import model_dir, pairs_file

CODE = r"""
import json, sys, pathlib
import jax, numpy as np
from flax import nnx
from musc_jax.config import base_config
from musc_jax.trainer import Trainer, tree_bytes_per_device

root, model, pairs = map(pathlib.Path, sys.argv[1:4])
out = {}
for mesh, steps in MESHES:
    name = "x".join(map(str, mesh))
    c = base_config()
    c.model.path, c.data.train, c.workdir = str(model), str(pairs), str(root / name)
    c.data.max_length, c.data.max_prompt_length = 128, 64
    c.train.batch_size, c.train.max_steps, c.train.shuffle, c.train.epochs = 8, steps, False, 2
    c.optim.lr, c.loss.a_tok = 1e-3, 0.0
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
    t = Trainer(c)
    t.train()
    lines = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    np.savez(root / f"{name}.npz", **{"/".join(map(str, k)): np.asarray(v[...])
                                      for k, v in nnx.to_flat_state(t.params)})
    state = {"p": t.params, "o": t.opt_state}
    per_dev = tree_bytes_per_device(state)
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    out[name] = {"losses": [x["loss"] for x in lines], "max_device_fraction": max(per_dev.values()) / total}
    t.close()
print(json.dumps(out))
"""


def _run(tmp_path, meshes, devices):
    code = CODE.replace("MESHES", repr(meshes)).replace(
        "map(pathlib.Path, sys.argv[1:4])",
        f"map(pathlib.Path, {[str(tmp_path), str(tmp_path / 'model'), str(tmp_path / 'pairs.jsonl')]!r})")
    return json.loads(run_python(code, devices=devices).strip().splitlines()[-1])


def test_mesh_run_equals_single_device_and_fsdp_shrinks_state(tmp_path):
    # 4 kv heads, hidden 64, mlp 96, vocab 256: every sharded axis divides by 2 and by 4.
    model_dir(tmp_path / "model", num_key_value_heads=4)
    pairs_file(tmp_path / "pairs.jsonl", 16)
    single = _run(tmp_path, [((1, 1, 1), 3)], devices=1)["1x1x1"]
    multi = _run(tmp_path, [((2, 2, 2), 3), ((2, 4, 1), 1)], devices=8)
    assert len(single["losses"]) == 3
    for a, b in zip(single["losses"], multi["2x2x2"]["losses"]):
        assert abs(a - b) <= 1e-5, (single["losses"], multi["2x2x2"]["losses"])
    ref, got = np.load(tmp_path / "1x1x1.npz"), np.load(tmp_path / "2x2x2.npz")
    assert set(ref.files) == set(got.files)
    err = max(float(np.abs(ref[k] - got[k]).max()) for k in ref.files)
    assert err <= 1e-5, err
    # FSDP over 4 devices: each holds about a quarter of params + Adam moments (norms replicated).
    assert multi["2x4x1"]["max_device_fraction"] <= 0.3, multi["2x4x1"]
