"""Scanned layers, remat policies and the online reference with remat.

Scanned and unscanned models built from one seed hold the same weights, so their logits and
gradients must agree to float32 rounding (2e-5 relative on logits, 1e-5 absolute on gradients of
a loss of order 1); every remat policy recomputes the same float32 operations, so loss and
gradients agree to the same tolerance. HF round trips must be exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from musc_jax.losses import LossConfig
from musc_jax.models import ModelConfig, from_pretrained, init_model, save_pretrained
from musc_jax.models.config import ConfigError
from musc_jax.models.llama import REMAT_POLICIES
from musc_jax.train_step import StepConfig, make_train_step

CFG = ModelConfig.preset("tiny", num_layers=3)  # GQA: 4 heads, 2 kv heads


def _batch():
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, CFG.vocab_size, (2, 12)), jnp.int32)
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [8]]), jnp.int32)  # right padding
    return ids, mask


def _loss(model, ids, mask):
    logits = model(ids, mask)
    lp = jax.nn.log_softmax(logits[:, :-1], -1)
    nll = -jnp.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]
    return jnp.sum(nll * mask[:, 1:]) / jnp.sum(mask[:, 1:])


def _logits(model, ids, mask):
    graphdef, params = nnx.split(model)
    return np.asarray(jax.jit(lambda p: nnx.merge(graphdef, p)(ids, mask))(params))


def _grads(model, ids, mask):
    graphdef, params = nnx.split(model)
    return jax.jit(jax.value_and_grad(lambda p: _loss(nnx.merge(graphdef, p), ids, mask)))(params)


def _flat(state, stacked: bool):
    """{hf-like name: array} with stacked params split per layer."""
    out = {}
    for path, v in nnx.to_flat_state(state):
        a = np.asarray(v[...] if hasattr(v, "__getitem__") else v)
        if stacked and path[0] == "layers":
            for i in range(a.shape[0]):
                out[("layers", i) + tuple(path[1:])] = a[i]
        else:
            out[tuple(path)] = a
    return out


def test_scanned_equals_unscanned_logits_and_grads():
    ids, mask = _batch()
    plain = init_model(CFG, seed=3)
    scanned = init_model(CFG, seed=3, scan_layers=True)
    assert _flat(nnx.state(scanned, nnx.Param), True).keys() == _flat(nnx.state(plain, nnx.Param), False).keys()
    np.testing.assert_allclose(_logits(scanned, ids, mask), _logits(plain, ids, mask),
                               rtol=2e-5, atol=2e-5)
    (l1, g1), (l2, g2) = _grads(plain, ids, mask), _grads(scanned, ids, mask)
    np.testing.assert_allclose(float(l2), float(l1), rtol=1e-6)
    f1, f2 = _flat(g1, False), _flat(g2, True)
    for k in f1:
        np.testing.assert_allclose(f2[k], f1[k], atol=1e-5, err_msg=str(k))


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_same_loss_and_grads(scan):
    ids, mask = _batch()
    ref_loss, ref_g = _grads(init_model(CFG, seed=1, scan_layers=scan, remat="none"), ids, mask)
    for policy in REMAT_POLICIES[:-1]:
        loss, g = _grads(init_model(CFG, seed=1, scan_layers=scan, remat=policy), ids, mask)
        np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=policy)


def test_remat_true_false_and_unknown():
    assert init_model(CFG, remat=True).remat == "full"
    assert init_model(CFG, remat=False).remat == "none"
    with pytest.raises(ValueError, match="model.remat='some'"):
        init_model(CFG, remat="some")


def test_hf_round_trip_with_scan(tmp_path):
    ids, mask = _batch()
    plain = init_model(CFG, seed=5)
    save_pretrained(plain, tmp_path / "plain")
    scanned = from_pretrained(tmp_path / "plain", scan_layers=True)
    assert scanned.scan_layers
    assert _flat(nnx.state(scanned, nnx.Param), True).keys() == _flat(nnx.state(plain, nnx.Param), False).keys()
    for k, v in _flat(nnx.state(plain, nnx.Param), False).items():
        np.testing.assert_array_equal(_flat(nnx.state(scanned, nnx.Param), True)[k], v)
    np.testing.assert_allclose(_logits(scanned, ids, mask), _logits(plain, ids, mask),
                               rtol=2e-5, atol=2e-5)
    save_pretrained(scanned, tmp_path / "scanned")
    back = from_pretrained(tmp_path / "scanned")
    for k, v in _flat(nnx.state(plain, nnx.Param), False).items():
        np.testing.assert_array_equal(_flat(nnx.state(back, nnx.Param), False)[k], v)
    a = (tmp_path / "plain" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "scanned" / "model.safetensors").read_bytes()


def test_scan_refuses_mixed_windows():
    cfg = CFG.replace(model_type="qwen2", sliding_window=4, sliding_layers=(False, True, True))
    with pytest.raises(ConfigError, match="scan_layers"):
        init_model(cfg, scan_layers=True)


@pytest.mark.parametrize("scan,remat", [(False, True), (True, "save_qkv_proj")])
def test_online_reference_with_remat_trains(scan, remat):
    """reference=online with remat raised TraceContextError from nnx.remat (issue 14)."""
    cfg = CFG.replace(num_layers=1)
    model = init_model(cfg, seed=0, scan_layers=scan, remat=remat)
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-2)
    step = jax.jit(make_train_step(graphdef, StepConfig(loss=LossConfig.preset("dpo"),
                                                        reference="online"),
                                   tx, optax.constant_schedule(1e-2)))
    rng = np.random.default_rng(1)
    batch = {}
    for side in ("chosen", "rejected"):
        batch[f"{side}_ids"] = jnp.asarray(rng.integers(1, cfg.vocab_size, (2, 10)), jnp.int32)
        batch[f"{side}_mask"] = jnp.ones((2, 10), jnp.int32)
        batch[f"{side}_response_mask"] = jnp.asarray(np.arange(10)[None] >= 4, jnp.float32).repeat(2, 0)
    ref = jax.tree.map(jnp.copy, params)
    opt = tx.init(params)
    losses = []
    for _ in range(3):
        params, opt, m = step(params, opt, batch, ref)
        losses.append(float(m["loss"]))
    assert abs(losses[0] - np.log(2)) < 1e-5  # policy == reference at step 1
    assert losses[2] < losses[0]


def test_compilation_cache_written(tmp_path):
    """enable_compilation_cache makes a jitted step land on disk (fresh process: global config)."""
    from subproc import run_python

    out = run_python(f"""
import jax, jax.numpy as jnp
from musc_jax.train_step import enable_compilation_cache
assert enable_compilation_cache("") is None
enable_compilation_cache({str(tmp_path / 'cache')!r})
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((8, 8))).sum()))
""", devices=1)
    assert float(out.strip().splitlines()[-1]) != 0
    assert any((tmp_path / "cache").iterdir())
