"""Loading straight into a sharding on 8 simulated CPU devices (mesh fsdp=4, tensor=2)."""

import json

from subproc import run_python

CODE = r"""
import json, sys, tempfile, pathlib
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from hf_models import make_hf_model
from musc_jax.models import from_pretrained
from musc_jax.sharding import LOGICAL_RULES, logical_to_spec, make_mesh

assert jax.device_count() == 8
out = {}
for family in ("llama", "qwen3"):
    path = pathlib.Path(tempfile.mkdtemp())
    # 4 kv heads so that both heads and kv_heads split over tensor=2; embed 64 over fsdp=4.
    make_hf_model(family, path, num_key_value_heads=4)
    mesh = make_mesh(data=1, fsdp=4, tensor=2)
    sharded = from_pretrained(path, mesh=mesh)
    plain = from_pretrained(path)
    bad = []
    rules = dict(LOGICAL_RULES)
    for p, var in nnx.to_flat_state(nnx.state(sharded, nnx.Param)):
        axes = var.get_metadata()["logical_axes"]
        want = logical_to_spec(axes, var.shape, mesh)
        # the rules table, applied by hand: every named axis maps to its mesh axis when divisible
        by_hand = []
        for name, dim in zip(axes, var.shape):
            m = rules[name]
            by_hand.append(m if (m is not None and dim % mesh.shape[m] == 0) else None)
        got = var[...].sharding
        if got.spec != want or tuple(want) != tuple(by_hand) or got.mesh.shape != mesh.shape:
            bad.append((p, str(got.spec), str(want), by_hand))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 128, (4, 10))
    mask = np.ones((4, 10), np.int32); mask[1, :3] = 0; mask[3, 7:] = 0
    a = np.asarray(jax.jit(lambda m, i, k: m(i, k))(sharded, jnp.asarray(ids), jnp.asarray(mask)))
    b = np.asarray(plain(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    embed_spec = str(sharded.embed[...].sharding.spec)
    out[family] = {"bad": bad, "err": float(np.abs(a - b)[real].max()), "embed": embed_spec,
                   "q": str(sharded.layers[0].attn.q_proj[...].sharding.spec)}
print(json.dumps(out))
"""


def test_sharded_load_follows_rules_and_matches_unsharded():
    out = json.loads(run_python(CODE, devices=8).strip().splitlines()[-1])
    for family, res in out.items():
        assert res["bad"] == [], f"{family}: parameters off the rules table: {res['bad']}"
        assert res["err"] <= 1e-5, f"{family}: sharded vs unsharded logits differ by {res['err']}"
        assert res["embed"] == "P('tensor', 'fsdp')"
        assert res["q"] == "P('fsdp', 'tensor', None)"
