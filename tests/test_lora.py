"""LoRA (musc_jax.models.lora): the adapted kernels against float64 numpy, adapter-off = base,
stacked (scanned) layers, and a Trainer whose only trained state is the adapters; export merges."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import jax
import jax.numpy as jnp

from musc_jax.models import lora as lora_lib
from musc_jax.models.config import ModelConfig
from musc_jax.models.llama import DecoderLM

ALL = tuple(lora_lib.TARGETS)


def _model(scan_layers=False):
    cfg = ModelConfig.preset("tiny")
    return DecoderLM(cfg, rngs=nnx.Rngs(0), scan_layers=scan_layers)


def _random_adapter(params, cfg, seed=1):
    """Adapters with B != 0 (a fresh adapter's B is zero, which would hide errors)."""
    ad = lora_lib.init_adapter(params, cfg, jax.random.key(seed))
    return {k: {"a": v["a"], "b": jax.random.normal(jax.random.key(hash(k) % 2**31), v["b"].shape)}
            for k, v in ad.items()}


def _flat(state):
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_merged_kernels_equal_float64_hand_computation(scan_layers):
    model = _model(scan_layers)
    _, params = nnx.split(model)
    cfg = lora_lib.LoraConfig(rank=4, alpha=8.0, targets=ALL)
    ad = _random_adapter(params, cfg)
    merged, base = _flat(lora_lib.merge(params, ad, cfg)), _flat(params)
    assert set(ad) == {k for k in base if k.split("/")[-1] in ALL}
    assert len(ad) == (7 if scan_layers else 14)
    for name, w in base.items():
        if name not in ad:
            np.testing.assert_array_equal(merged[name], w)   # not adapted: untouched
            continue
        n_in, n_out = lora_lib.TARGETS[name.split("/")[-1]]
        lead = w.ndim - n_in - n_out
        a = np.asarray(ad[name]["a"], np.float64)
        b = np.asarray(ad[name]["b"], np.float64)
        # explicit W + alpha/r * A @ B over the flattened input / output axes, layer by layer
        lead_shape = w.shape[:lead]
        i = int(np.prod(w.shape[lead:lead + n_in]))
        a2 = a.reshape(*lead_shape, i, 4)
        b2 = b.reshape(*lead_shape, 4, -1)
        want = w.astype(np.float64) + (8.0 / 4) * np.matmul(a2, b2).reshape(w.shape)
        np.testing.assert_allclose(merged[name], want, rtol=1e-5, atol=1e-6)


def test_lora_forward_equals_x_w_plus_scaled_x_a_b():
    """One adapted MLP projection inside the model: gate(x) = x W + (alpha/r) (x A) B."""
    model = _model()
    graphdef, params = nnx.split(model)
    cfg = lora_lib.LoraConfig(rank=2, alpha=3.0, targets=("gate_proj",))
    ad = _random_adapter(params, cfg)
    merged = nnx.merge(graphdef, lora_lib.merge(params, ad, cfg))
    x = np.random.default_rng(0).normal(size=(3, model.config.hidden_size))
    w = np.asarray(model.layers[0].mlp.gate_proj[...], np.float64)
    a, b = (np.asarray(ad["layers/0/mlp/gate_proj"][k], np.float64) for k in "ab")
    want = x @ w + 1.5 * (x @ a) @ b
    got = np.asarray(x.astype(np.float32) @ merged.layers[0].mlp.gate_proj[...])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_fresh_adapter_is_the_base_model():
    model = _model()
    graphdef, params = nnx.split(model)
    cfg = lora_lib.LoraConfig(rank=8, alpha=16.0, targets=ALL)
    ad = lora_lib.init_adapter(params, cfg, jax.random.key(0))
    ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6) % model.config.vocab_size
    np.testing.assert_array_equal(np.asarray(nnx.merge(graphdef, lora_lib.merge(params, ad, cfg))(ids)),
                                  np.asarray(model(ids)))
    assert lora_lib.num_params(ad) == sum(
        8 * (int(np.prod(v["a"].shape[:-1])) + int(np.prod(v["b"].shape[1:]))) for v in ad.values())


def test_bad_lora_config_is_named():
    from ml_collections import ConfigDict
    assert lora_lib.LoraConfig.from_config(ConfigDict(dict(rank=0, alpha=1.0, targets="q_proj"))) is None
    with pytest.raises(ValueError, match="model.lora.targets"):
        lora_lib.LoraConfig.from_config(ConfigDict(dict(rank=4, alpha=1.0, targets="q_proj,qkv")))
    with pytest.raises(ValueError, match="model.lora.alpha"):
        lora_lib.LoraConfig.from_config(ConfigDict(dict(rank=4, alpha=0.0, targets="q_proj")))


def test_trainer_trains_only_adapters_and_export_merges(tmp_path):
    from trainer_fixtures import model_dir, pairs_file
    from musc_jax.config import base_config
    from musc_jax.models import from_pretrained
    from musc_jax.trainer import Trainer
    c = base_config()
    c.model.path = str(model_dir(tmp_path / "model"))
    c.data.train = str(pairs_file(tmp_path / "pairs.jsonl", 8))
    c.data.max_length, c.data.max_prompt_length = 128, 64
    c.workdir = str(tmp_path / "run")
    c.train.batch_size, c.train.max_steps = 4, 2
    c.optim.lr = 1e-2
    c.loss.a_tok = 0.0
    c.reference.mode = "online"
    c.model.lora.rank, c.model.lora.alpha = 4, 8.0
    t = Trainer(c)
    base_before = _flat(t.base_params)
    n_adapter = lora_lib.num_params(t.params)
    assert set(t.params) == {k for k in base_before if k.split("/")[-1] in ALL}
    # Optimizer state: AdamW mu and nu of the adapters and step counters, nothing else.
    opt = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t.opt_state))
    assert 2 * n_adapter <= opt <= 2 * n_adapter + 8
    assert t.ref_params is t.base_params    # the reference is the base: no copy
    metrics = t.train()
    assert np.isfinite(metrics["loss"])
    for k, v in _flat(t.base_params).items():
        np.testing.assert_array_equal(v, base_before[k])   # frozen
    assert any(np.abs(np.asarray(v["b"])).max() > 0 for v in t.params.values())  # adapters moved
    out = t.export(tmp_path / "export")
    t.close()
    want = _flat(lora_lib.merge(t.base_params, t.params, t.lora))
    from musc_jax.export import export_checkpoint  # from the run's checkpoint, as the CLI does
    for d in (out, export_checkpoint(c, tmp_path / "from_checkpoint")):
        got = _flat(nnx.state(from_pretrained(d)))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
