"""Tests for musc_jax.losses against float64 numpy formulas and TRL's DPOTrainer loss.

Tolerance everywhere (unless a test says otherwise): |ours - reference| <= 1e-6 + 1e-6 * |reference|
(``assert_close``). Our functions compute in float32; every reference is computed in float64 from
the very same float32 inputs, so the check measures only our float32 arithmetic.
"""

from __future__ import annotations

import collections
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musc_jax.losses import (
    LOSS_PRESETS,
    LOSS_TYPES,
    LossConfig,
    dpo_loss,
    preference_loss,
    sequence_logps,
    sft_loss,
    token_weighted_dpo_loss,
)

RTOL = 1e-6
ATOL = 1e-6

METRIC_NAMES = {
    "loss",
    "loss/seq",
    "loss/tok",
    "loss/sft",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "weights/mean",
    "weights/max",
}

# (loss_type, label_smoothing) combinations exercised everywhere
CASES = [("sigmoid", 0.0), ("sigmoid", 0.1), ("sigmoid", 0.3), ("ipo", 0.0), ("hinge", 0.0)]


def assert_close(actual, expected, err_msg=""):
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=RTOL, atol=ATOL, err_msg=err_msg)


# ----------------------------------------------------------------------------------------------
# float64 numpy references


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def np_pair_loss(delta, beta, loss_type, eps):
    """ℓ(z) with z = beta * delta, delta the unscaled log-ratio margin."""
    z = beta * delta
    if loss_type == "sigmoid":
        return -(1 - eps) * np_log_sigmoid(z) - eps * np_log_sigmoid(-z)
    if loss_type == "ipo":
        return (z / beta - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return np.maximum(0.0, 1 - z)
    raise AssertionError(loss_type)


def np_pair_loss_grad(delta, beta, loss_type, eps):
    """dℓ/d delta, i.e. d loss / d policy_chosen_logps."""
    z = beta * delta
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    if loss_type == "sigmoid":
        return -beta * ((1 - eps) * sig(-z) - eps * sig(z))
    if loss_type == "ipo":
        return 2 * (delta - 1 / (2 * beta))
    if loss_type == "hinge":
        return np.where(z < 1, -beta, 0.0)
    raise AssertionError(loss_type)


def f64(x):
    return np.asarray(x, np.float64)


# ----------------------------------------------------------------------------------------------
# random inputs


def seq_inputs(seed, b=16):
    """[B] summed log-probs, float32, with a spread of margins on both sides of 0."""
    rng = np.random.default_rng(seed)
    pc = -rng.uniform(5, 80, b)
    pr = -rng.uniform(5, 80, b)
    rc = pc + rng.normal(0, 4, b)
    rr = pr + rng.normal(0, 4, b)
    return [np.asarray(x, np.float32) for x in (pc, pr, rc, rr)]


def token_batch(seed, b=6, t=20, equal_chosen_len=None):
    """Per-token arrays [B, T] with a prompt, a response and right padding per row.

    Prompt and padding positions hold arbitrary (finite) log-probs, as a model would produce.
    """
    rng = np.random.default_rng(seed)

    def side(resp_len=None):
        mask = np.zeros((b, t), np.float32)
        for i in range(b):
            p = int(rng.integers(2, 7))
            n = resp_len if resp_len is not None else int(rng.integers(1, t - p + 1))
            mask[i, p:p + n] = 1
        policy = np.log(rng.uniform(0.02, 1.0, (b, t))).astype(np.float32)
        ref = (policy + rng.normal(0, 0.3, (b, t))).astype(np.float32)
        weights = np.where(mask > 0, rng.uniform(0, 2, (b, t)), 0).astype(np.float32)
        return policy, ref, mask, weights

    pc, rc, mc, wc = side(equal_chosen_len)
    pr, rr, mr, wr = side()
    return dict(pc=pc, pr=pr, rc=rc, rr=rr, mc=mc, mr=mr, wc=wc, wr=wr)


def np_preference(d, cfg, weights=True):
    """float64 reference of preference_loss: (loss, seq terms, tok terms, sft terms)."""
    pc, pr, rc, rr, mc, mr = (f64(d[k]) for k in ("pc", "pr", "rc", "rr", "mc", "mr"))
    wc, wr = (f64(d["wc"]), f64(d["wr"])) if weights else (mc, mr)
    seq = np_pair_loss(((pc - rc) * mc).sum(1) - ((pr - rr) * mr).sum(1), cfg.beta, cfg.loss_type,
                       cfg.label_smoothing)
    tok = np_pair_loss(((pc - rc) * wc).sum(1) - ((pr - rr) * wr).sum(1), cfg.beta, cfg.loss_type,
                       cfg.label_smoothing)
    sft = -(pc * mc).sum(1) / np.maximum(mc.sum(1), 1)
    loss = np.mean(cfg.a_seq * seq + cfg.a_tok * tok + cfg.sft_weight * sft)
    return loss, seq, tok, sft


def call_preference(d, cfg, weights=True):
    return preference_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"],
                           d["wc"] if weights else None, d["wr"] if weights else None, cfg=cfg)


# ----------------------------------------------------------------------------------------------
# dpo_loss


@pytest.mark.parametrize("loss_type,eps", CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_numpy(loss_type, eps, beta):
    pc, pr, rc, rr = seq_inputs(0)
    losses, cr, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert losses.shape == cr.shape == rj.shape == (16,)
    assert losses.dtype == jnp.float32
    delta = (f64(pc) - f64(rc)) - (f64(pr) - f64(rr))
    assert_close(losses, np_pair_loss(delta, beta, loss_type, eps))
    assert_close(cr, beta * (f64(pc) - f64(rc)))
    assert_close(rj, beta * (f64(pr) - f64(rr)))


def test_dpo_loss_default_is_sigmoid_beta_0_1():
    pc, pr, rc, rr = seq_inputs(1)
    delta = (f64(pc) - f64(rc)) - (f64(pr) - f64(rr))
    assert_close(dpo_loss(pc, pr, rc, rr)[0], -np_log_sigmoid(0.1 * delta))


def test_dpo_loss_extreme_margins_finite():
    big = np.array([1e4, -1e4, 0.0], np.float32)
    zero = np.zeros(3, np.float32)
    for loss_type, eps in CASES:
        losses = dpo_loss(big, zero, zero, zero, loss_type=loss_type, label_smoothing=eps)[0]
        assert np.all(np.isfinite(np.asarray(losses))), (loss_type, eps, losses)
    assert_close(dpo_loss(big, zero, zero, zero)[0], [0.0, 1e3, math.log(2)])


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_dpo_loss_gradient_matches_analytic(loss_type, eps):
    pc, pr, rc, rr = seq_inputs(2)
    beta = 0.1

    def total(pc_):
        return jnp.sum(dpo_loss(pc_, pr, rc, rr, beta=beta, loss_type=loss_type, label_smoothing=eps)[0])

    grad = jax.grad(total)(jnp.asarray(pc))
    delta = (f64(pc) - f64(rc)) - (f64(pr) - f64(rr))
    assert_close(grad, np_pair_loss_grad(delta, beta, loss_type, eps))
    # d/d policy_rejected is the negative; rewards carry no gradient
    g_rej = jax.grad(lambda pr_: jnp.sum(dpo_loss(pc, pr_, rc, rr, beta=beta, loss_type=loss_type,
                                                  label_smoothing=eps)[0]))(jnp.asarray(pr))
    assert_close(g_rej, -np_pair_loss_grad(delta, beta, loss_type, eps))
    g_rew = jax.grad(lambda pc_: jnp.sum(dpo_loss(pc_, pr, rc, rr)[1]))(jnp.asarray(pc))
    assert np.all(np.asarray(g_rew) == 0)


def test_dpo_loss_unknown_loss_type_lists_known():
    x = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="robust") as exc:
        dpo_loss(x, x, x, x, loss_type="robust")
    for name in LOSS_TYPES:
        assert name in str(exc.value)


def test_dpo_loss_bad_hparams():
    x = np.zeros(2, np.float32)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(x, x, x, x, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing.*ipo"):
        dpo_loss(x, x, x, x, loss_type="ipo", label_smoothing=0.1)


def test_dpo_loss_shape_errors():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"ref_rejected_logps has shape \(5,\).*policy_chosen_logps.*\(4,\)"):
        dpo_loss(x, x, x, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match=r"policy_rejected_logps must have shape \[B\].*\(4, 1\)"):
        dpo_loss(x, x[:, None], x, x)
    # raised at trace time under jit, too
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        jax.jit(dpo_loss)(x, x, np.zeros(3, np.float32), x)


# ----------------------------------------------------------------------------------------------
# token_weighted_dpo_loss, sequence_logps, sft_loss


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_token_weighted_matches_numpy(loss_type, eps):
    d = token_batch(3)
    got = token_weighted_dpo_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["wc"], d["wr"],
                                  beta=0.1, loss_type=loss_type, label_smoothing=eps)
    delta = ((f64(d["pc"]) - f64(d["rc"])) * f64(d["wc"])).sum(1) - \
        ((f64(d["pr"]) - f64(d["rr"])) * f64(d["wr"])).sum(1)
    assert got.shape == (6,)
    assert_close(got, np_pair_loss(delta, 0.1, loss_type, eps))


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_token_weighted_uniform_weights_equals_dpo(loss_type, eps):
    # Dyadic log-probs (multiples of 1/64, small sums) make every float32 sum exact, so the identity
    # is tested without float32 summation-order noise.
    rng = np.random.default_rng(4)
    b, t = 8, 16
    mask_c = (np.arange(t)[None] >= rng.integers(1, 8, (b, 1))).astype(np.float32)
    mask_r = (np.arange(t)[None] >= rng.integers(1, 8, (b, 1))).astype(np.float32)
    pc, pr, rc, rr = (-rng.integers(0, 320, (b, t)).astype(np.float32) / 64 for _ in range(4))
    tok = token_weighted_dpo_loss(pc, pr, rc, rr, mask_c, mask_r, loss_type=loss_type, label_smoothing=eps)
    seq, _, _ = dpo_loss(sequence_logps(pc, mask_c), sequence_logps(pr, mask_r), sequence_logps(rc, mask_c),
                         sequence_logps(rr, mask_r), loss_type=loss_type, label_smoothing=eps)
    assert_close(tok, seq)


def test_token_weighted_hand_computed():
    # positions 0, 1: prompt (weight 0, arbitrary and even non-finite log-probs); 2, 3: response.
    # chosen: Δ = [3, 2], w = [2, 1] -> 8; rejected: Δ = [-1, -1], w = [1, 1] -> -2;
    # z = 0.1 * (8 - (-2)) = 1 -> sigmoid loss = log(1 + e^-1); ipo = (10 - 5)^2 = 25; hinge = 0.
    nan, inf = np.nan, np.inf
    pc = np.array([[-inf, nan, -1.0, -2.0]], np.float32)
    rc = np.array([[-inf, 7.0, -4.0, -4.0]], np.float32)
    pr = np.array([[nan, -3.0, -3.0, -2.0]], np.float32)
    rr = np.array([[0.0, -inf, -2.0, -1.0]], np.float32)
    wc = np.array([[0, 0, 2, 1]], np.float32)
    wr = np.array([[0, 0, 1, 1]], np.float32)
    assert_close(token_weighted_dpo_loss(pc, pr, rc, rr, wc, wr), [math.log1p(math.exp(-1))])
    assert_close(token_weighted_dpo_loss(pc, pr, rc, rr, wc, wr, loss_type="ipo"), [25.0])
    assert_close(token_weighted_dpo_loss(pc, pr, rc, rr, wc, wr, loss_type="hinge"), [0.0])
    # gradient: finite everywhere, 0 on the prompt, ℓ'(z) β w_t on the response
    g = jax.grad(lambda x: token_weighted_dpo_loss(x, pr, rc, rr, wc, wr)[0])(jnp.asarray(pc))
    s = 1 / (1 + math.exp(1.0))  # σ(-z)
    assert_close(g, [[0.0, 0.0, -0.1 * s * 2, -0.1 * s * 1]])


def test_token_weighted_ignores_prompt_positions_with_zero_weight():
    d = token_batch(5)
    base = token_weighted_dpo_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["wc"], d["wr"])
    rng = np.random.default_rng(6)
    noisy = {k: np.where(d["w" + k[1]] == 0, rng.normal(0, 100, d[k].shape), d[k]).astype(np.float32)
             for k in ("pc", "pr", "rc", "rr")}
    again = token_weighted_dpo_loss(noisy["pc"], noisy["pr"], noisy["rc"], noisy["rr"], d["wc"], d["wr"])
    np.testing.assert_array_equal(np.asarray(base), np.asarray(again))


def test_token_weighted_shape_errors():
    x = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match=r"chosen_weights has shape \(2, 4\).*policy_chosen_token_logps.*\(2, 5\)"):
        token_weighted_dpo_loss(x, x, x, x, x[:, :4], x)
    with pytest.raises(ValueError, match=r"batch sizes"):
        token_weighted_dpo_loss(x, np.zeros((3, 5), np.float32), x, np.zeros((3, 5), np.float32), x,
                                np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"rejected_weights must have shape \[B, T\]"):
        token_weighted_dpo_loss(x, x, x, x, x, x[0])


def test_sequence_logps_and_sft_loss():
    d = token_batch(7)
    lp, m = d["pc"], d["mc"]
    assert_close(sequence_logps(lp, m), (f64(lp) * f64(m)).sum(1))
    assert_close(sft_loss(lp, m), -(f64(lp) * f64(m)).sum(1) / f64(m).sum(1))
    # empty rows: 0, not NaN; masked positions may hold -inf
    lp2 = np.array([[-np.inf, -1.0, -3.0], [-np.inf, -2.0, -5.0], [np.nan, -0.5, np.nan]], np.float32)
    m2 = np.array([[0, 1, 1], [0, 0, 0], [0, 1, 0]], np.float32)
    assert_close(sft_loss(lp2, m2), [2.0, 0.0, 0.5])
    assert_close(sequence_logps(lp2, m2), [-4.0, 0.0, -0.5])
    assert_close(sft_loss(lp2, m2.astype(bool)), [2.0, 0.0, 0.5])
    with pytest.raises(ValueError, match=r"mask has shape \(3, 2\)"):
        sft_loss(lp2, m2[:, :2])


# ----------------------------------------------------------------------------------------------
# LossConfig and preference_loss


def test_loss_config_presets():
    assert LossConfig() == LOSS_PRESETS["musc"]
    expect = {"musc": (1, 1, 0), "musc_released": (0, 1, 0), "ecd": (1, 0, 0), "spar": (1, 0, 0.1),
              "dpo": (1, 0, 0)}
    assert set(LOSS_PRESETS) == set(expect)
    for name, (a_seq, a_tok, lam) in expect.items():
        cfg = LossConfig.preset(name)
        assert (cfg.a_seq, cfg.a_tok, cfg.sft_weight, cfg.beta, cfg.loss_type, cfg.label_smoothing) == \
            (a_seq, a_tok, lam, 0.1, "sigmoid", 0.0)
    assert LossConfig.preset("spar", beta=0.2).beta == 0.2
    hash(LossConfig())  # static under jit
    with pytest.raises(ValueError, match="known presets: musc"):
        LossConfig.preset("orpo")
    with pytest.raises(ValueError, match="known loss types"):
        LossConfig(loss_type="kto")
    with pytest.raises(ValueError, match="a_tok"):
        LossConfig(a_tok=-1.0)
    with pytest.raises(ValueError, match="identically 0"):
        LossConfig(a_seq=0, a_tok=0)


def test_preference_loss_policy_equals_reference():
    d = token_batch(8)
    d["rc"], d["rr"] = d["pc"], d["pr"]
    loss, m = call_preference(d, LossConfig.preset("musc"))
    assert_close(loss, 2 * math.log(2))
    assert_close(m["loss/seq"], math.log(2))
    assert_close(m["loss/tok"], math.log(2))
    assert_close(m["rewards/margins"], 0.0)
    loss, _ = call_preference(d, LossConfig.preset("ecd"), weights=False)
    assert_close(loss, math.log(2))
    # a_seq * ln2 + a_tok * ln2 + λ * mean NLL of the chosen responses
    cfg = LossConfig(a_seq=0.5, a_tok=2.0, sft_weight=0.1)
    loss, m = call_preference(d, cfg)
    nll = np.mean(-(f64(d["pc"]) * f64(d["mc"])).sum(1) / f64(d["mc"]).sum(1))
    assert_close(m["loss/sft"], nll)
    assert_close(loss, 2.5 * math.log(2) + 0.1 * nll)


@pytest.mark.parametrize("loss_type,eps", CASES)
@pytest.mark.parametrize("coefs", [(1.0, 1.0, 0.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.1), (0.3, 0.7, 0.05)])
def test_preference_loss_matches_numpy(loss_type, eps, coefs):
    d = token_batch(9)
    a_seq, a_tok, lam = coefs
    cfg = LossConfig(beta=0.1, loss_type=loss_type, label_smoothing=eps, a_seq=a_seq, a_tok=a_tok,
                     sft_weight=lam)
    loss, m = call_preference(d, cfg)
    ref_loss, seq, tok, sft = np_preference(d, cfg)
    assert loss.shape == () and loss.dtype == jnp.float32
    assert_close(loss, ref_loss)
    assert_close(m["loss"], ref_loss)
    assert_close(m["loss/seq"], seq.mean())
    assert_close(m["loss/tok"], tok.mean())
    assert_close(m["loss/sft"], sft.mean())


def test_preference_loss_metrics():
    d = token_batch(10)
    loss, m = call_preference(d, LossConfig())
    assert set(m) == METRIC_NAMES
    assert all(v.shape == () for v in m.values())
    pc, pr, rc, rr, mc, mr, wc, wr = (f64(d[k]) for k in ("pc", "pr", "rc", "rr", "mc", "mr", "wc", "wr"))
    cr = 0.1 * ((pc - rc) * mc).sum(1)
    rj = 0.1 * ((pr - rr) * mr).sum(1)
    assert_close(m["rewards/chosen"], cr.mean())
    assert_close(m["rewards/rejected"], rj.mean())
    assert_close(m["rewards/margins"], (cr - rj).mean())
    assert_close(m["rewards/accuracies"], (cr > rj).mean())
    assert_close(m["logps/chosen"], (pc * mc).sum(1).mean())
    assert_close(m["logps/rejected"], (pr * mr).sum(1).mean())
    resp_w = np.concatenate([wc[mc > 0], wr[mr > 0]])
    assert_close(m["weights/mean"], resp_w.mean())
    assert_close(m["weights/max"], resp_w.max())
    # the same rewards as dpo_loss on the summed log-probs
    _, dc, dr = dpo_loss(*(sequence_logps(d[a], d[b]) for a, b in (("pc", "mc"), ("pr", "mr"), ("rc", "mc"),
                                                                  ("rr", "mr"))))
    assert_close(m["rewards/chosen"], np.mean(np.asarray(dc, np.float64)))
    assert_close(m["rewards/rejected"], np.mean(np.asarray(dr, np.float64)))


def test_preference_loss_weights_masked_to_response():
    d = token_batch(11)
    loss, m = call_preference(d, LossConfig())
    d2 = dict(d)
    d2["wc"] = np.where(d["mc"] == 0, 5.0, d["wc"]).astype(np.float32)  # junk outside the response
    d2["wr"] = np.where(d["mr"] == 0, np.nan, d["wr"]).astype(np.float32)
    loss2, m2 = call_preference(d2, LossConfig())
    np.testing.assert_array_equal(np.asarray(loss), np.asarray(loss2))
    for k in m:
        np.testing.assert_array_equal(np.asarray(m[k]), np.asarray(m2[k]), err_msg=k)


def test_preference_loss_without_weights():
    d = token_batch(12)
    for name in ("ecd", "spar", "dpo"):
        cfg = LossConfig.preset(name)
        loss, m = call_preference(d, cfg, weights=False)
        assert_close(loss, np_preference(d, cfg, weights=False)[0])
        assert set(m) == METRIC_NAMES
        assert_close(m["weights/mean"], 1.0)
        assert_close(m["weights/max"], 1.0)
        assert_close(m["loss/tok"], m["loss/seq"])  # uniform weights: token term = sequence term
    for name in ("musc", "musc_released"):
        with pytest.raises(ValueError, match="a_tok=1.0 needs chosen_weights and rejected_weights"):
            call_preference(d, LossConfig.preset(name), weights=False)
    with pytest.raises(ValueError, match="rejected_weights is None"):
        preference_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], d["wc"], None,
                        cfg=LossConfig.preset("dpo"))


def test_preference_loss_jit_and_grad():
    d = token_batch(13)
    cfg = LossConfig.preset("musc")
    eager_loss, eager_m = call_preference(d, cfg)
    jitted = jax.jit(preference_loss, static_argnames="cfg")
    loss, m = jitted(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], d["wc"], d["wr"], cfg=cfg)
    assert_close(loss, eager_loss)
    for k in eager_m:
        assert_close(m[k], eager_m[k], err_msg=k)
    # a_tok = 0 with weights None under jit
    loss_ecd, _ = jitted(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], cfg=LossConfig.preset("ecd"))
    assert_close(loss_ecd, np_preference(d, LossConfig.preset("ecd"), weights=False)[0])
    # gradients reach the policy only on response tokens and are finite
    g = jax.grad(lambda pc: preference_loss(pc, d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], d["wc"], d["wr"],
                                            cfg=cfg)[0])(jnp.asarray(d["pc"]))
    g = np.asarray(g)
    assert np.all(np.isfinite(g))
    assert np.all(g[d["mc"] == 0] == 0)
    assert np.any(g[d["mc"] > 0] != 0)


def test_preference_loss_shape_errors():
    d = token_batch(14)
    bad = np.zeros((6, 19), np.float32)
    with pytest.raises(ValueError, match=r"rejected_mask has shape \(6, 19\).*policy_rejected_token_logps.*\(6, 20\)"):
        preference_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], bad, d["wc"], d["wr"])
    with pytest.raises(ValueError, match=r"chosen_weights has shape \(6, 19\)"):
        jax.jit(preference_loss, static_argnames="cfg")(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"],
                                                        bad, d["wr"], cfg=LossConfig())
    with pytest.raises(ValueError, match=r"batch sizes"):
        preference_loss(d["pc"], d["pr"][:5], d["rc"], d["rr"][:5], d["mc"], d["mr"][:5],
                        cfg=LossConfig.preset("dpo"))
    with pytest.raises(TypeError, match="LossConfig"):
        preference_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], cfg={"beta": 0.1})


# ----------------------------------------------------------------------------------------------
# TRL 1.16 DPOTrainer._compute_loss, run on a stand-in trainer and model
#
# TRL computes its loss inside DPOTrainer._compute_loss from a model forward. We call that exact
# method (unmodified) with a minimal stand-in `self` carrying the attributes it reads and a stand-in
# model whose forward returns given per-token log-probs, in float64. Reference log-probs are passed
# precomputed (precompute_ref_log_probs=True). TRL's batch is [chosen; rejected] concatenated and its
# per-token log-probs are shifted: index t holds the log-prob of token t + 1, i.e. ours[:, 1:].


class _StubModel:
    training = False  # -> TRL's "eval" metrics bucket; no train-only bookkeeping

    def __init__(self, log_probs):
        self.log_probs = log_probs

    def __call__(self, input_ids, attention_mask, use_cache, labels, fused_lm_head):
        import torch

        assert fused_lm_head and labels.shape == input_ids.shape
        n, t = input_ids.shape
        assert self.log_probs.shape == (n, t - 1)
        return types.SimpleNamespace(
            log_probs=self.log_probs,
            entropy=torch.zeros(n, t - 1, dtype=torch.float64),
            mean_logits=torch.zeros(n, t - 1, dtype=torch.float64),
            is_top1=torch.zeros(n, t - 1, dtype=torch.bool),
        )


@pytest.fixture(scope="module")
def trl_loss():
    """trl_loss(pc, pr, rc, rr, mc, mr, beta, loss_types, loss_weights, label_smoothing) -> (loss, metrics)."""
    torch = pytest.importorskip("torch")
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")

    def run(pc, pr, rc, rr, mc, mr, *, beta=0.1, loss_types=("sigmoid",), loss_weights=None, label_smoothing=0.0):
        t64 = lambda x: torch.as_tensor(np.asarray(x, np.float64))  # noqa: E731
        mask = np.concatenate([mc, mr]).astype(np.int64)
        tok = np.concatenate([f64(pc) * mc, f64(pr) * mr])  # a real model gives 0 where labels == -100
        model = _StubModel(t64(tok[:, 1:]))
        stub = types.SimpleNamespace(
            model=model,
            accelerator=types.SimpleNamespace(device=torch.device("cpu"), gather=lambda x: x,
                                              gather_for_metrics=lambda x: x),
            aux_loss_enabled=False,
            ld_alpha=None,
            precompute_ref_logps=True,
            f_divergence_type="reverse_kl",
            loss_types=list(loss_types),
            loss_weights=list(loss_weights or [1.0] * len(loss_types)),
            beta=beta,
            label_smoothing=label_smoothing,
            use_weighting=False,
            _metrics={"train": collections.defaultdict(list), "eval": collections.defaultdict(list)},
            _total_train_tokens=0,
            _tp_size=1,
        )
        inputs = {
            "input_ids": torch.zeros(mask.shape, dtype=torch.long),
            "attention_mask": torch.ones(mask.shape, dtype=torch.long),
            "completion_mask": torch.as_tensor(mask),
            "ref_chosen_logps": t64((f64(rc) * mc).sum(1)),
            "ref_rejected_logps": t64((f64(rr) * mr).sum(1)),
        }
        loss = dpo_trainer.DPOTrainer._compute_loss(stub, model, inputs, False)
        assert loss.dtype == torch.float64
        return float(loss), {k: v[-1] for k, v in stub._metrics["eval"].items()}

    def run_seq(pc, pr, rc, rr, **kw):
        """Per-pair TRL losses for [B] per-sequence log-probs: one call per pair, one response token."""
        out = []
        for i in range(len(pc)):
            one = lambda x: np.array([[0.0, x[i]]])  # noqa: E731  position 0 prompt, 1 response
            m = np.array([[0.0, 1.0]])
            out.append(run(one(pc), one(pr), one(rc), one(rr), m, m, **kw)[0])
        return np.array(out)

    run.seq = run_seq
    return run


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_trl(trl_loss, loss_type, beta):
    pc, pr, rc, rr = seq_inputs(20, b=8)
    ours = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)[0]
    assert_close(ours, trl_loss.seq(pc, pr, rc, rr, beta=beta, loss_types=[loss_type]))


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_dpo_loss_label_smoothing_matches_trl(trl_loss, eps):
    # TRL 1.16's "sigmoid" ignores label_smoothing; its conservative-DPO formula
    # -(1-ε) log σ(z) - ε log σ(-z) lives in loss_type "aot", which sorts the batch's log-ratios
    # first. With one pair per call the sort is the identity, so "aot" is exactly conservative DPO.
    pc, pr, rc, rr = seq_inputs(21, b=8)
    ours = dpo_loss(pc, pr, rc, rr, label_smoothing=eps)[0]
    assert_close(ours, trl_loss.seq(pc, pr, rc, rr, loss_types=["aot"], label_smoothing=eps))
    # Documented difference: TRL's "sigmoid" with label_smoothing is plain DPO (our ε = 0).
    assert_close(dpo_loss(pc, pr, rc, rr)[0],
                 trl_loss.seq(pc, pr, rc, rr, loss_types=["sigmoid"], label_smoothing=eps))


def test_dpo_loss_ipo_length_normalisation_vs_trl(trl_loss):
    # TRL's ipo divides each side's summed log-ratio by its number of completion tokens before the
    # loss; ours takes whatever per-sequence numbers it is given. Same numbers in -> same loss.
    d = token_batch(22)
    trl, _ = trl_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], loss_types=["ipo"])
    nc, nr = d["mc"].sum(1), d["mr"].sum(1)
    ours = dpo_loss(*(sequence_logps(d[a], d[b]) / n for a, b, n in
                      (("pc", "mc", nc), ("pr", "mr", nr), ("rc", "mc", nc), ("rr", "mr", nr))), loss_type="ipo")[0]
    assert_close(jnp.mean(ours), trl)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge"])
def test_preference_loss_and_metrics_match_trl(trl_loss, loss_type):
    d = token_batch(23, b=8, t=24)
    cfg = LossConfig.preset("dpo", loss_type=loss_type)
    loss, m = call_preference(d, cfg, weights=False)
    trl, trl_m = trl_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], loss_types=[loss_type])
    assert_close(loss, trl)
    for k in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
              "logps/rejected"):
        assert_close(m[k], trl_m[k], err_msg=k)


def test_spar_loss_matches_trl_sigmoid_plus_sft(trl_loss):
    # TRL's "sft" term is a token mean pooled over the whole batch; ours (DESIGN 5.3) is a per-pair
    # token mean averaged over the batch. They agree when all chosen responses have the same length.
    d = token_batch(24, b=8, t=24, equal_chosen_len=9)
    loss, m = call_preference(d, LossConfig.preset("spar"), weights=False)
    trl, _ = trl_loss(d["pc"], d["pr"], d["rc"], d["rr"], d["mc"], d["mr"], loss_types=["sigmoid", "sft"],
                      loss_weights=[1.0, 0.1])
    assert_close(loss, trl)
