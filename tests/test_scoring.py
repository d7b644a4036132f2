"""Teacher-forced scoring and MuSC contrast statistics vs transformers / float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from hf_models import make_hf_model
from musc_jax.models import from_pretrained
from musc_jax.scoring import (KINDS, contrast_stats, contrast_stats_from_logits, contrast_weights,
                              response_token_logps, score, token_logps)

LOGP_ATOL = 1e-4    # issue 3: per-token log-probs vs transformers' log_softmax
STAT_ATOL = 1e-5    # issue 3: contrast statistics vs float64 numpy from transformers' logits


def _hf_logits(hf, ids, mask):
    pos = np.clip(np.cumsum(mask, -1) - 1, 0, None)
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids, dtype=torch.long),
                  attention_mask=torch.tensor(mask, dtype=torch.long),
                  position_ids=torch.tensor(pos, dtype=torch.long)).logits.double().numpy()


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _pack(seqs, resp_lens, side):
    """Pad token lists to one length; the response is the last resp_len tokens of each."""
    t = max(map(len, seqs))
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros_like(ids)
    resp = np.zeros_like(ids)
    for i, (s, r) in enumerate(zip(seqs, resp_lens)):
        start = 0 if side == "right" else t - len(s)
        ids[i, start:start + len(s)] = s
        mask[i, start:start + len(s)] = 1
        resp[i, start + len(s) - r:start + len(s)] = 1
    return ids, mask, resp


@pytest.fixture(scope="module")
def pair_batch():
    """The same responses after prompt x (right-padded) and after a different prompt x' (left)."""
    rng = np.random.default_rng(0)
    xs, alts, lens = [], [], []
    for px, pa, r in [(9, 4, 6), (3, 11, 8), (6, 6, 3)]:
        y = list(rng.integers(0, 128, r))
        xs.append(list(rng.integers(0, 128, px)) + y)
        alts.append(list(rng.integers(0, 128, pa)) + y)
        lens.append(r)
    return _pack(xs, lens, "right"), _pack(alts, lens, "left")


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def models(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_model(request.param, path)
    with torch.no_grad():  # sharper distributions, so the statistics are far from zero
        hf.lm_head.weight.mul_(8.0)
    hf.save_pretrained(path)
    return hf, from_pretrained(path)


def _ref_token_logps(logits, ids):
    lp = _log_softmax64(logits)
    out = np.zeros(ids.shape)
    out[:, 1:] = np.take_along_axis(lp[:, :-1], ids[:, 1:, None].astype(np.int64), -1)[..., 0]
    return out


def test_score_matches_transformers(models, pair_batch):
    hf, model = models
    (ids, mask, resp), _ = pair_batch
    ref = _ref_token_logps(_hf_logits(hf, ids, mask), ids) * resp
    ours = np.asarray(score(model, ids, mask, resp))
    assert ours.shape == ids.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=LOGP_ATOL, rtol=0)
    assert np.all(ours[resp == 0] == 0) and np.all(ours[resp == 1] < 0)
    # the time-chunked head gives the same values
    np.testing.assert_allclose(np.asarray(score(model, ids, mask, resp, chunk=4)), ours, atol=1e-6)


def test_token_logps_convention():
    logits = np.random.default_rng(1).normal(size=(2, 5, 11)).astype(np.float32)
    ids = np.random.default_rng(2).integers(0, 11, (2, 5))
    ours = np.asarray(token_logps(jnp.asarray(logits), jnp.asarray(ids)))
    np.testing.assert_allclose(ours, _ref_token_logps(logits, ids), atol=1e-6, rtol=0)
    assert np.all(ours[:, 0] == 0)


def _ref_stats(logits_x, logits_alt, ids_x, resp_x, resp_alt, kind):
    """float64 statistic per x position, from each response token's predicting distribution."""
    out = np.zeros(ids_x.shape)
    for i in range(ids_x.shape[0]):
        px, pa = np.flatnonzero(resp_x[i]), np.flatnonzero(resp_alt[i])
        lp, lq = _log_softmax64(logits_x[i, px - 1]), _log_softmax64(logits_alt[i, pa - 1])
        p, q = np.exp(lp), np.exp(lq)
        if kind == "kl":
            s = (q * (lq - lp)).sum(-1)
        elif kind == "bikl":
            s = (q * (lq - lp)).sum(-1) + (p * (lp - lq)).sum(-1)
        else:
            y = ids_x[i, px]
            s = np.abs(lp[np.arange(len(px)), y] - lq[np.arange(len(px)), y])
        out[i, px] = s
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_contrast_stats_match_float64(models, pair_batch, kind):
    hf, model = models
    (ids_x, mask_x, rx), (ids_a, mask_a, ra) = pair_batch
    lx, la = _hf_logits(hf, ids_x, mask_x), _hf_logits(hf, ids_a, mask_a)
    ref = _ref_stats(lx, la, ids_x, rx, ra, kind)
    ours = np.asarray(contrast_stats(model, ids_x, mask_x, ids_a, mask_a, rx, ra, kind=kind))
    assert ours.shape == ids_x.shape
    np.testing.assert_allclose(ours, ref, atol=STAT_ATOL, rtol=0)
    # the first response token is predicted from the last prompt position and has a value
    first = rx.argmax(-1)
    assert np.all(ours[np.arange(len(first)), first] > 1e-3)
    assert np.all(ours[rx == 0] == 0)
    assert ref[rx == 1].mean() > 1e-2  # the check is not vacuous
    # the pure function on transformers' logits agrees too
    pure = jax.jit(contrast_stats_from_logits, static_argnums=5)(
        jnp.asarray(lx, jnp.float32), jnp.asarray(la, jnp.float32), jnp.asarray(ids_x),
        jnp.asarray(rx), jnp.asarray(ra), kind)
    np.testing.assert_allclose(np.asarray(pure), ref, atol=STAT_ATOL, rtol=0)
    if kind == "bikl":  # the time-chunked head (3 positions per chunk, padded) gives the same
        chunked = contrast_stats(model, ids_x, mask_x, ids_a, mask_a, rx, ra, kind=kind, chunk=3)
        np.testing.assert_allclose(np.asarray(chunked), ours, atol=1e-6)


def test_same_prompt_gives_zero_stats(models, pair_batch):
    _, model = models
    (ids, mask, resp), _ = pair_batch
    s = np.asarray(contrast_stats(model, ids, mask, ids, mask, resp, resp, kind="kl"))
    np.testing.assert_allclose(s, 0.0, atol=1e-6)


def test_contrast_stats_reject_different_responses(models, pair_batch):
    _, model = models
    (ids_x, mask_x, rx), (ids_a, mask_a, ra) = pair_batch
    bad = ids_a.copy()
    bad[1, -1] = (bad[1, -1] + 1) % 128
    with pytest.raises(ValueError, match="row 1"):
        contrast_stats(model, ids_x, mask_x, bad, mask_a, rx, ra)
    with pytest.raises(ValueError, match="unknown contrast statistic"):
        contrast_stats(model, ids_x, mask_x, ids_a, mask_a, rx, ra, kind="js")


def test_contrast_weights():
    rng = np.random.default_rng(0)
    stats = rng.exponential(size=(3, 8)).astype(np.float32)
    resp = np.zeros((3, 8), np.float32)
    resp[0, 2:7] = 1
    resp[1, 0:8] = 1
    resp[2, 5:8] = 1
    stats[2] = 0.0  # x and x' predict alike: weights fall back to 1
    w = np.asarray(contrast_weights(jnp.asarray(stats * resp + 5.0 * (1 - resp)), jnp.asarray(resp)))
    for i in range(2):
        m = resp[i].astype(bool)
        ref = np.zeros(8)
        ref[m] = np.clip(stats[i, m] / stats[i, m].mean(), 0, 2.0)
        np.testing.assert_allclose(w[i], ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(w[2], resp[2])
    assert w.max() <= 2.0 and np.all(w[resp == 0] == 0)
    w3 = np.asarray(contrast_weights(jnp.asarray(stats), jnp.asarray(resp), w_max=3.0))
    assert w3.max() > 2.0


def test_logits_window_gives_the_full_projections_values(models, pair_batch):
    """Projecting only the last `window` states (no response token before them) changes no value;
    a window that starts inside a response drops exactly the tokens before it."""
    _, model = models
    (ids, mask, resp), _ = pair_batch
    full = np.asarray(score(model, ids, mask, resp))
    t = ids.shape[1]
    need = t - int(resp.argmax(-1).min())          # states first_response-1 .. t-2
    for window in (need, need + 2, t - 1, t + 5):
        np.testing.assert_allclose(np.asarray(
            response_token_logps(model, ids, mask, resp, window=window)), full, atol=1e-6, rtol=0)
    short = np.asarray(response_token_logps(model, ids, mask, resp, window=need - 2))
    kept = np.arange(t) >= t - (need - 2)
    np.testing.assert_allclose(short[:, kept], full[:, kept], atol=1e-6, rtol=0)
    assert np.all(short[:, ~kept] == 0) and np.any(full[:, ~kept] != 0)
