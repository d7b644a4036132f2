"""Static token weights (DESIGN 5.2): MuSC kl weights vs float64 numpy, diff / uniform, layout."""

import numpy as np
import pytest
import torch
import transformers

from musc_jax.config import config_from
from musc_jax.errors import UserError
from musc_jax.data.batching import BatchingConfig, ChatEncoder, collate_pairs, tokenize_pairs
from musc_jax.data.weights import (WeightConfig, batch_token_weights, compute_token_weights,
                                   diff_weights, edit_masks, weight_mass_by_constraint)
from trainer_fixtures import model_dir

WEIGHT_ATOL = 1e-5   # float32 weights vs float64 numpy from transformers' logits

# x' differs a lot from x, so the statistics are far from zero and their float32 relative error
# is small (for nearly equal distributions KL(Q||P) cancels in float32).
ROWS = [
    {"prompt": "write a short note about the river in lowercase",
     "rejected_prompt": "7 + 12 = ? !! ### 99 ::: TIGER",
     "chosen": "the river is long and quiet", "rejected": "The River Is Long."},
    {"prompt": "list two facts about the old castle. use no commas",
     "rejected_prompt": "- Bright, bright: 42?",
     "chosen": "It is old. It is tall", "rejected": "It is old, tall, and famous"},
    {"prompt": "describe a green garden with exactly three words, please",
     "rejected_prompt": "NORTH APPLE SEVEN",
     "chosen": "green quiet garden", "rejected": "a garden is green and bright and warm"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from musc_jax.models import from_pretrained, load_tokenizer

    path = model_dir(tmp_path_factory.mktemp("weights_model"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():  # sharper distributions: statistics far from zero
        hf.lm_head.weight.mul_(8.0)
    hf.save_pretrained(path)
    return hf, from_pretrained(path), load_tokenizer(path)


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor([list(ids)], dtype=torch.long)).logits[0].double().numpy()


def _reference_kl_weights(hf, enc, row, side, w_max=2.0):
    """float64: w_t = clip(s_t / mean s, 0, w_max), s_t = KL(Q_t || P_t) for every response token."""
    x = [{"role": "user", "content": row["prompt"]}]
    xa = [{"role": "user", "content": row["rejected_prompt"]}]
    px, pa = enc.prompt_ids(x), enc.prompt_ids(xa)
    y = enc.response_ids(x, px, row[side])
    lx = _hf_logits(hf, np.concatenate([px, y]))
    la = _hf_logits(hf, np.concatenate([pa, y]))
    # the distribution predicting response token t sits one position before it
    lp = _log_softmax64(lx[len(px) - 1:len(px) + len(y) - 1])
    lq = _log_softmax64(la[len(pa) - 1:len(pa) + len(y) - 1])
    s = (np.exp(lq) * (lq - lp)).sum(-1)
    ref_logp = lp[np.arange(len(y)), y]
    return np.clip(s / s.mean(), 0, w_max), ref_logp, len(y)


def test_kl_weights_match_float64_numpy(tiny):
    hf, model, tok = tiny
    cfg = WeightConfig(kind="kl", ref_logps=True, batch_size=2, max_length=256,
                       max_prompt_length=128, bucket=32)
    out, stats = compute_token_weights(ROWS, tok, cfg, model)
    assert stats.weighted == len(ROWS) and not stats.dropped
    enc = ChatEncoder(tok)
    for row, new in zip(ROWS, out):
        for side in ("chosen", "rejected"):
            ref_w, ref_lp, n = _reference_kl_weights(hf, enc, row, side)
            w = np.asarray(new[f"{side}_weights"])
            assert len(w) == n  # one value per response token, end-of-turn included
            np.testing.assert_allclose(w, ref_w, atol=WEIGHT_ATOL, rtol=0)
            assert w[0] > 0 and ref_w[0] > 0   # the first response token gets its weight
            np.testing.assert_allclose(new[f"ref_{side}_token_logps"], ref_lp, atol=1e-4, rtol=0)
    assert np.ptp(np.asarray(out[0]["chosen_weights"])) > 0.1  # not a degenerate all-ones case


def test_weights_zero_on_prompt_and_padding(tiny):
    _, model, tok = tiny
    bcfg = BatchingConfig(max_length=256, max_prompt_length=128, alt_sequences=True, bucket=32)
    examples = tokenize_pairs(ROWS, tok, bcfg).examples
    batch = collate_pairs(examples, bucket=32)
    w = batch_token_weights(model, batch, "kl")
    for side in ("chosen", "rejected"):
        resp = batch[f"{side}_response_mask"]
        arr = w[f"{side}_weights"]
        assert arr.shape == resp.shape
        assert np.all(arr[resp == 0] == 0)  # prompt and padding
        first = resp.argmax(-1)
        assert np.all(arr[np.arange(len(first)), first] > 0)
    # the stored per-token lists land on the response positions when the trainer collates them
    out, _ = compute_token_weights(ROWS, tok, WeightConfig(kind="kl", max_length=256,
                                                            max_prompt_length=128, bucket=32), model)
    tok_rows = tokenize_pairs(out, tok, BatchingConfig(max_length=256, max_prompt_length=128, bucket=32))
    b = collate_pairs(tok_rows.examples, bucket=32)
    for side in ("chosen", "rejected"):
        resp = b[f"{side}_response_mask"] == 1
        assert np.all(b[f"{side}_weights"][~resp] == 0)
        t = resp.shape[1]
        np.testing.assert_array_equal(resp, batch[f"{side}_response_mask"][:, :t] == 1)
        np.testing.assert_allclose(b[f"{side}_weights"][resp], w[f"{side}_weights"][:, :t][resp],
                                   atol=1e-6)


def test_diff_weights_on_hand_made_alignment():
    a, b = [5, 6, 7, 8, 9], [5, 6, 1, 2, 8, 9, 3]
    ma, mb = edit_masks(a, b)
    assert ma.tolist() == [False, False, True, False, False]          # 7 replaced
    assert mb.tolist() == [False, False, True, True, False, False, True]  # 1 2 replace, 3 inserted
    wc, wr = diff_weights(a, b, w_hi=3.0, w_lo=0.25)
    assert wc.tolist() == [0.25, 0.25, 3.0, 0.25, 0.25]
    assert wr.tolist() == [0.25, 0.25, 3.0, 3.0, 0.25, 0.25, 3.0]
    assert edit_masks([1, 2], [1, 2])[0].tolist() == [False, False]


def test_diff_and_uniform_rows_follow_tokenisation(tiny):
    _, _, tok = tiny
    enc = ChatEncoder(tok)
    cfg = dict(max_length=256, max_prompt_length=128, bucket=32)
    diff, _ = compute_token_weights(ROWS, tok, WeightConfig(kind="diff", w_hi=2.0, w_lo=0.5, **cfg))
    uni, _ = compute_token_weights(ROWS, tok, WeightConfig(kind="uniform", **cfg))
    for row, d, u in zip(ROWS, diff, uni):
        x = [{"role": "user", "content": row["prompt"]}]
        px = enc.prompt_ids(x)
        yc, yr = enc.response_ids(x, px, row["chosen"]), enc.response_ids(x, px, row["rejected"])
        mc, mr = edit_masks(yc, yr)
        assert d["chosen_weights"] == np.where(mc, 2.0, 0.5).tolist()
        assert d["rejected_weights"] == np.where(mr, 2.0, 0.5).tolist()
        assert u["chosen_weights"] == [1.0] * len(yc) and u["rejected_weights"] == [1.0] * len(yr)
        assert d["chosen_weights"][-1] == 0.5   # the shared end-of-turn token


def test_too_long_rows_dropped_and_missing_alt_uniform(tiny):
    _, model, tok = tiny
    rows = [ROWS[0], {**ROWS[1], "chosen": "word " * 300},
            {"prompt": "describe the river", "chosen": "it is long", "rejected": "IT IS LONG"}]
    out, stats = compute_token_weights(rows, tok, WeightConfig(kind="kl", max_length=128,
                                                               max_prompt_length=64, bucket=32), model)
    assert stats.dropped == {"too_long": 1} and stats.weighted == 2
    assert stats.no_rejected_prompt == 1
    assert set(out[1]["chosen_weights"]) == {1.0}
    with pytest.raises(ValueError, match="needs the reference model"):
        compute_token_weights(rows, tok, WeightConfig(kind="kl"))
    with pytest.raises(UserError, match=r"config weights: unknown WeightConfig key\(s\) \['wmax'\]"):
        config_from(WeightConfig, {"kind": "kl", "wmax": 2}, "weights")


def test_weight_mass_by_constraint():
    rows = [
        {"chosen_weights": [1.0, 1.0], "rejected_weights": [2.0],
         "corrupted": [{"original": {"id": "punctuation:no_comma", "kwargs": {}}}]},
        {"chosen_weights": [3.0], "rejected_weights": [1.0],
         "corrupted": [{"original": {"id": "punctuation:no_comma", "kwargs": {}}},
                       {"original": {"id": "detectable_format:title", "kwargs": {}}}]},
        {"chosen_weights": [2.0], "rejected_weights": [0.0], "corrupted": []},
    ]
    shares = weight_mass_by_constraint(rows)
    total = 4 + 4 + 2
    assert shares == pytest.approx({"punctuation:no_comma": (4 + 2) / total,
                                    "detectable_format:title": 2 / total, "<none>": 2 / total})
    assert weight_mass_by_constraint([]) == {}


# ---- dynamic weights come from the current policy (issue 13) ---------------------------------

def _f64_kl_weights(model, batch, side: str, w_max: float = 2.0) -> np.ndarray:
    import jax.numpy as jnp

    """MuSC "kl" weights recomputed in float64 numpy from the model's logits: s_t = KL(Q_t || P_t)
    with P_t = pi(.|x, y_<t), Q_t = pi(.|x', y_<t) (the k-th response token of x and of x'
    matched, each predicted from the position before it), w = clip(s / mean(s), 0, w_max)."""
    import jax.numpy as jnp

    def logp(ids, mask):
        z = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)), np.float64)
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp = logp(batch[f"{side}_ids"], batch[f"{side}_mask"])
    lq = logp(batch[f"{side}_alt_ids"], batch[f"{side}_alt_mask"])
    out = np.zeros(batch[f"{side}_ids"].shape, np.float64)
    for b in range(out.shape[0]):
        tx = np.nonzero(batch[f"{side}_response_mask"][b])[0]
        ta = np.nonzero(batch[f"{side}_alt_response_mask"][b])[0]
        p, q = lp[b, tx - 1], lq[b, ta - 1]
        s = (np.exp(q) * (q - p)).sum(-1)
        out[b, tx] = np.clip(s / s.mean(), 0.0, w_max)
    return out


def test_dynamic_weights_come_from_the_current_policy():
    """After some steps the weights the train step uses differ from the reference model's and
    equal a float64 recomputation from the current params (float32 logits; tolerance 2e-4 on
    weights in [0, 2])."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from musc_jax.losses import LossConfig, preference_loss
    from musc_jax.models import ModelConfig, init_model
    from musc_jax.train_step import StepConfig, make_train_step
    from synthetic import pair_batch

    def capture(pc, pr, rc, rr, mc, mr, wc, wr, cfg):
        value, metrics = preference_loss(pc, pr, rc, rr, mc, mr, wc, wr, cfg=cfg)
        return value, {**metrics, "w/chosen": wc, "w/rejected": wr}

    model = init_model(ModelConfig.preset("tiny", vocab_size=128), seed=0)
    graphdef, params = nnx.split(model)
    ref = jax.tree.map(jnp.copy, params)
    cfg = StepConfig(loss=LossConfig.preset("musc"), weights="dynamic", weight_kind="kl")
    tx = optax.adam(3e-3)
    opt_state = tx.init(params)
    step = jax.jit(make_train_step(graphdef, cfg, tx, optax.constant_schedule(3e-3), capture))
    batch = {k: jnp.asarray(v) for k, v in pair_batch(batch=4, length=32, seed=2, alt=True).items()}
    host = {k: np.asarray(v) for k, v in batch.items()}
    _, _, m0 = step(params, opt_state, batch, ref)          # at step 0: policy == reference
    for _ in range(6):
        params, opt_state, _ = step(params, opt_state, batch, ref)
    _, _, m = step(params, opt_state, batch, ref)
    current, reference = nnx.merge(graphdef, params), nnx.merge(graphdef, ref)
    for side in ("chosen", "rejected"):
        used, used0 = np.asarray(m[f"w/{side}"]), np.asarray(m0[f"w/{side}"])
        np.testing.assert_allclose(used0, _f64_kl_weights(reference, host, side), atol=2e-4)
        np.testing.assert_allclose(used, _f64_kl_weights(current, host, side), atol=2e-4)
        assert np.abs(used - used0).max() > 1e-2          # training moved them off the reference's
