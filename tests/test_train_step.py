"""The jitted train step on synthetic pairs: ln 2 at the start, steady decrease, one compile."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from ml_collections import ConfigDict

from musc_jax.losses import LossConfig
from musc_jax.models import ModelConfig, init_model
from musc_jax.optim import make_optimizer
from musc_jax.train_step import StepConfig, make_train_step
from synthetic import pair_batch

CFG = ModelConfig.preset("tiny", vocab_size=128)


def _optim(lr=1e-3, **kw):
    base = dict(lr=lr, warmup_steps=0, schedule="constant", final_lr_ratio=0.0, weight_decay=0.0,
                b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, grad_accum=1)
    base.update(kw)
    return ConfigDict(base)


def _setup(step_cfg: StepConfig, lr=1e-3, steps=20, **optim_kw):
    model = init_model(CFG, seed=0)
    graphdef, params = nnx.split(model)
    tx, schedule = make_optimizer(_optim(lr, **optim_kw), steps)
    opt_state = tx.init(params)
    ref = jax.tree.map(jnp.copy, params)
    return graphdef, params, opt_state, ref, tx, schedule


@pytest.mark.parametrize("loss", ["dpo", "musc", "spar"])
def test_first_loss_is_ln2_and_falls(loss):
    lc = LossConfig.preset(loss)
    cfg = StepConfig(loss=lc, weights="uniform")
    graphdef, params, opt_state, ref, tx, schedule = _setup(cfg)
    traces = []

    def counted(*a):
        traces.append(1)
        return make_train_step(graphdef, cfg, tx, schedule)(*a)

    step = jax.jit(counted, donate_argnums=(0, 1))
    batch = jax.tree.map(jnp.asarray, pair_batch(batch=4, length=32, seed=1))
    losses = []
    for _ in range(20):
        params, opt_state, m = step(params, opt_state, batch, ref)
        losses.append(float(m["loss"]))
    # policy == reference at step 0: every DPO-type term is ln 2; the SFT term is the NLL.
    expected0 = (lc.a_seq + lc.a_tok) * math.log(2)
    if lc.sft_weight:
        expected0 += lc.sft_weight * losses_sft0(cfg)
    assert abs(losses[0] - expected0) < 1e-5, (losses[0], expected0)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.1
    assert len(traces) == 1, f"train step traced {len(traces)} times for one shape"


def losses_sft0(cfg: StepConfig) -> float:
    """The SFT term at initialisation, computed independently with the model's logits."""
    model = init_model(CFG, seed=0)
    b = pair_batch(batch=4, length=32, seed=1)
    logits = np.asarray(model(jnp.asarray(b["chosen_ids"]), jnp.asarray(b["chosen_mask"])), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
    ids, resp = b["chosen_ids"], b["chosen_response_mask"]
    tok = np.take_along_axis(logp[:, :-1], ids[:, 1:, None], -1)[..., 0] * resp[:, 1:]
    return float(np.mean(-tok.sum(1) / resp[:, 1:].sum(1)))


def test_dynamic_weights_step_runs_and_weights_are_normalised():
    cfg = StepConfig(loss=LossConfig.preset("musc"), weights="dynamic", weight_kind="kl")
    graphdef, params, opt_state, ref, tx, schedule = _setup(cfg)
    step = jax.jit(make_train_step(graphdef, cfg, tx, schedule))
    batch = jax.tree.map(jnp.asarray, pair_batch(batch=4, length=32, seed=2, alt=True))
    _, _, m = step(params, opt_state, batch, ref)
    # weights are clip(s / mean(s), 0, 2): their mean over the response is at most 1.
    assert 0 < float(m["weights/mean"]) <= 1.0 + 1e-6
    assert 1.0 < float(m["weights/max"]) <= 2.0 + 1e-6
    assert abs(float(m["loss"]) - 2 * math.log(2)) < 1e-5


def test_grad_accumulation_equals_full_batch():
    cfg1 = StepConfig(loss=LossConfig.preset("dpo"))
    cfg2 = StepConfig(loss=LossConfig.preset("dpo"), grad_accum=2)
    graphdef, params, _, ref, _, _ = _setup(cfg1)
    # Plain SGD with lr 1: the update is the gradient itself, so the comparison checks the
    # accumulated gradient directly (Adam's g/sqrt(v) would magnify float32 rounding).
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    opt_state = tx.init(params)
    batch = pair_batch(batch=4, length=32, seed=3)
    full = jax.jit(make_train_step(graphdef, cfg1, tx, schedule))
    acc = jax.jit(make_train_step(graphdef, cfg2, tx, schedule))
    p1, _, m1 = full(params, opt_state, jax.tree.map(jnp.asarray, batch), ref)
    micro = {k: jnp.asarray(v.reshape(2, 2, *v.shape[1:])) for k, v in batch.items()}
    p2, _, m2 = acc(params, opt_state, micro, ref)
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-6
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


@pytest.mark.parametrize("reference", ["online", "precompute"])
def test_logits_window_step_equals_full_step(reference):
    """The step whose LM head projects only the window that holds the responses gives the loss
    and gradients of the full projection (SGD lr 1: the update is the gradient)."""
    batch = pair_batch(batch=4, length=32, seed=5)
    first = min(int(batch[f"{s}_response_mask"][i].argmax()) for s in ("chosen", "rejected")
                for i in range(4))
    window = 32 - first
    assert window < 31, "the batch must have prompt positions the window can skip"
    if reference == "precompute":
        rng = np.random.default_rng(0)
        for s in ("chosen", "rejected"):
            batch[f"ref_{s}_token_logps"] = (-rng.random((4, 32)) * batch[f"{s}_response_mask"]
                                            ).astype(np.float32)
    cfg = StepConfig(loss=LossConfig.preset("dpo"), reference=reference)
    graphdef, params, _, ref, _, _ = _setup(cfg)
    tx, schedule = optax.sgd(1.0), optax.constant_schedule(1.0)
    opt_state = tx.init(params)
    b = jax.tree.map(jnp.asarray, batch)
    p1, _, m1 = jax.jit(make_train_step(graphdef, cfg, tx, schedule))(params, opt_state, b, ref)
    cfg_w = StepConfig(loss=LossConfig.preset("dpo"), reference=reference, logits_window=window)
    p2, _, m2 = jax.jit(make_train_step(graphdef, cfg_w, tx, schedule))(params, opt_state, b, ref)
    for k in ("loss", "logps/chosen", "logps/rejected"):
        assert abs(float(m1[k]) - float(m2[k])) <= 1e-5 * max(1.0, abs(float(m1[k]))), k
    for a, c in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)
