"""The continuous-batching engine: greedy output equal to transformers on mixed prompt and output
lengths (slots refilled, cache resized, prompts prefilled in chunks), samples equal to the static
engine's whatever the slot count, no step on finished rows, no recompilation as slots refill,
and a decode step that does not copy the cache."""

import os
import shutil

import numpy as np
import pytest
import torch

from hf_models import sharp_hf_and_ours
from musc_jax.engine import continuous, cpu_kernels, hlo, slot_cache, static
from musc_jax.engine.counters import TRACE_COUNTS
from musc_jax.engine.sampling import SamplingMode
from musc_jax.generate import generate, stop_id_array
from musc_jax.models import ModelConfig, init_model

# mixed prompt lengths (1..40 tokens) and output lengths (3..70 tokens)
PROMPTS = [[5, 17, 99, 3, 42, 8, 61, 7, 23, 11, 90], [64, 2, 33], [12, 77, 45, 9, 100, 3, 70],
           [88], list(range(1, 41)), [3] * 20, [7, 7, 1, 2]]
BUDGETS = [9, 70, 3, 33, 20, 48, 5]


def _hf_greedy_rows(hf, prompts, budgets):
    """transformers greedy decoding, one prompt at a time (no padding on its side)."""
    hf.generation_config.eos_token_id = None
    rows = []
    with torch.no_grad():
        for p, n in zip(prompts, budgets):
            out = hf.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p),
                              dtype=torch.long), do_sample=False, max_new_tokens=n, pad_token_id=0)
            rows.append(out[0, len(p):].numpy())
    return rows


@pytest.mark.parametrize("attention", ["kernel", "xla"])
@pytest.mark.parametrize("family", ["llama", "mistral"])   # mistral: sliding window of 5
def test_greedy_matches_transformers_on_mixed_lengths(family, attention, tmp_path, monkeypatch):
    """Decode attention by the CPU kernel (the engine's choice on one CPU device) and by XLA."""
    if attention == "kernel" and shutil.which(os.environ.get("CXX") or "g++") is None:
        pytest.skip("no C++ compiler to build the CPU kernel")
    want_kernel = attention == "kernel"
    assert cpu_kernels.decode_kernels_available(np.float32) or not want_kernel
    monkeypatch.setattr(continuous, "use_decode_kernel", lambda model, mesh: want_kernel)
    hf, model = sharp_hf_and_ours(family, tmp_path)
    ref = _hf_greedy_rows(hf, PROMPTS, BUDGETS)
    # 2 slots for 7 rows: every slot is refilled, the cache grows and shrinks, the tail packs
    out = generate(model, PROMPTS, BUDGETS, temperature=0.0, max_slots=2, pad_token_id=1)
    assert out.tokens.shape == (7, 70)
    np.testing.assert_array_equal(out.lengths, BUDGETS)
    for got, want, n in zip(out.tokens, ref, BUDGETS):
        np.testing.assert_array_equal(got[:n], want)
        assert np.all(got[n:] == 1)
    assert out.stats.resizes > 0 and out.stats.prefill_calls >= 6
    # prompts prefilled in chunks of 16 tokens (the 40-token prompt takes 4 chunks)
    tokens, lengths = continuous.generate_continuous(
        model, PROMPTS, BUDGETS, seed=0, stop_ids=stop_id_array(None), pad=1, temperature=1.0,
        top_k=0, top_p=1.0, mode=SamplingMode(True, False, False), max_slots=4, prefill_chunk=16)
    np.testing.assert_array_equal(tokens, out.tokens)
    np.testing.assert_array_equal(lengths, BUDGETS)


@pytest.fixture(scope="module")
def tiny():
    return init_model(ModelConfig.preset("tiny", vocab_size=128), seed=0)


SAMPLING = dict(temperature=1.0, top_p=0.9, seed=3, eos_token_id=[5, 9, 17], pad_token_id=2)


@pytest.fixture(scope="module")
def static_samples(tiny):
    ref = generate(tiny, PROMPTS * 2, 60, engine="static", **SAMPLING)
    assert len(set(ref.lengths.tolist())) > 5          # rows end at many different steps
    return ref


# slots=2 refills and packs the most (~20 s on a loaded machine since the cache length is fixed
# per call; was ~10 min when every length bucket compiled new programs)
@pytest.mark.parametrize("slots", [pytest.param(2, marks=pytest.mark.slow), 4, 64])
def test_samples_equal_static_engine_for_any_slot_count(tiny, static_samples, slots):
    ref = static_samples
    out = generate(tiny, PROMPTS * 2, 60, max_slots=slots, **SAMPLING)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.lengths, ref.lengths)
    # every decode step of a live slot made one token of its row (token 0 comes from prefill);
    # no step decoded a row after its end
    assert out.stats.useful == int(ref.lengths.sum()) - len(ref.lengths)
    assert out.stats.finished == 0
    if slots == 2:   # refill at once, then pack the tail into one slot: nothing idle
        assert out.stats.idle == 0


def test_rows_ending_at_their_first_token(tiny):
    free = generate(tiny, PROMPTS, 6, temperature=0.0, engine="static").tokens
    eos = int(free[1, 0])                                  # row 1 ends at token 0
    out = generate(tiny, PROMPTS, 6, temperature=0.0, eos_token_id=eos, max_slots=2)
    ref = generate(tiny, PROMPTS, 6, temperature=0.0, eos_token_id=eos, engine="static")
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    assert out.lengths[1] == 1
    one = generate(tiny, PROMPTS, 1, temperature=0.0, max_slots=2)   # budget 1: prefill only
    np.testing.assert_array_equal(one.tokens[:, 0], free[:, 0])
    assert one.stats.segments == 0


def test_no_recompilation_as_slots_refill_and_pack(tiny):
    # 2 slots: prefill groups of 1 or 2 rows, decode over 2 slots, then the tail packed into 1
    kw = dict(temperature=0.8, top_p=0.9, eos_token_id=[5, 9, 17], max_slots=2)
    prompts = [[1 + i, 2, 3] + [4] * (i % 9) for i in range(12)]   # all in the 16-token bucket
    budgets = [30, 3, 60, 9, 20, 45, 5, 12, 33, 7, 26, 50]           # rows end at many steps
    generate(tiny, prompts, budgets, seed=0, **kw)
    before = dict(TRACE_COUNTS)
    out = generate(tiny, [p[::-1] for p in prompts], budgets, seed=1, **kw)   # other tokens
    assert out.stats.prefill_calls >= 6 and out.stats.segments >= 6   # slots were refilled
    assert out.stats.resizes >= 1                                      # the tail was packed
    for key in ("engine_prefill", "engine_decode", "engine_resize"):
        assert TRACE_COUNTS[key] == before.get(key, 0), key


def test_bad_per_prompt_budgets(tiny):
    with pytest.raises(ValueError, match="one per prompt"):
        generate(tiny, [[1], [2]], [3])
    with pytest.raises(ValueError, match="static"):
        generate(tiny, [[1], [2]], [3, 4], engine="static")
    with pytest.raises(ValueError, match="engine"):
        generate(tiny, [[1]], 3, engine="paged")


def test_decode_step_does_not_copy_the_cache(tiny):
    """The static engine's [B, S, kv, D] cache is transposed and copied for K and V of every
    layer on every step; the slot cache is read and written in place."""
    mode = SamplingMode(False, False, True)
    cfg = tiny.config
    cache_elems = 8 * cfg.num_kv_heads * 32 * cfg.head_dim
    old = hlo.loop_copies(static.decode_program_text(tiny, 8, 32, 64, mode), cache_elems)
    assert len(old) >= 2 * cfg.num_layers                  # the measurement sees the copies
    new = hlo.loop_copies(continuous.decode_program_text(tiny, 8, 128, 64, mode), cache_elems)
    assert new == []


@pytest.mark.parametrize("window", [None, 5])
def test_decode_attention_reads_up_to_the_longest_row(window):
    """The blocked online-softmax decode attention equals a float64 softmax over each row's
    positions 0..pos (inside the window); idle rows (position L) leave the others unchanged,
    and a cache of 4 blocks with rows in the first two reads only those (garbage beyond)."""
    rng = np.random.default_rng(0)
    r, kvh, g, d, length = 5, 2, 3, 8, 4 * slot_cache.DECODE_BLOCK
    q = rng.normal(size=(r, 1, kvh * g, d)).astype(np.float32)
    kc = rng.normal(size=(r, kvh, length, d)).astype(np.float32)
    vc = rng.normal(size=(r, kvh, length, d)).astype(np.float32)
    pos = np.array([0, 3, slot_cache.DECODE_BLOCK + 7, 40, length])           # the last: idle
    hi = pos[pos < length].max() + 1
    kc[:, :, -(-hi // slot_cache.DECODE_BLOCK) * slot_cache.DECODE_BLOCK:] = np.nan  # never read
    got = np.asarray(slot_cache._decode_attention(q, kc, vc, pos[:, None], scale=0.3,
                                                  window=window))
    for i in range(r - 1):
        keep = np.arange(pos[i] + 1)
        if window is not None:
            keep = keep[pos[i] - keep < window]
        for k in range(kvh):
            for j in range(g):
                s = 0.3 * kc[i, k, keep].astype(np.float64) @ q[i, 0, k * g + j]
                p = np.exp(s - s.max())
                want = (p / p.sum()) @ vc[i, k, keep].astype(np.float64)
                np.testing.assert_allclose(got[i, 0, (k * g + j) * d:(k * g + j + 1) * d], want,
                                           rtol=1e-5, atol=1e-5)


def test_prefill_buckets_and_groups():
    """Prefill buckets step by 1.5x and 2x alternately; rows split into prefill calls at the
    least padded cost (hand-checked case, and equal to brute force over every split)."""
    from itertools import combinations

    from musc_jax.engine.buckets import bucket_batch, prefill_bucket, prefill_groups
    assert [prefill_bucket(n) for n in (1, 16, 17, 24, 25, 33, 49, 65, 96, 97, 385, 512, 513)] \
        == [16, 16, 24, 24, 32, 48, 64, 96, 96, 128, 512, 512, 1024]
    # sorted 17, 18, 20 | 60 | 90, 95: (4*24 + 64) + (1*64 + 64) + (2*96 + 64) = 544 positions;
    # one call would cost 8*96 + 64 = 832, and 17..60 | 90, 95 costs 320 + 256 = 576
    groups = prefill_groups([20, 90, 18, 60, 95, 17], call_cost=64)
    assert [g.tolist() for g in groups] == [[5, 2, 0], [3], [1, 4]]

    def cost(parts, srt):
        return sum(bucket_batch(len(p)) * prefill_bucket(srt[p[-1]]) + 64 for p in parts)

    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 300, size=int(rng.integers(1, 8)))
        srt = np.sort(lengths)
        n = len(srt)
        best = min(cost([list(range(a, b)) for a, b in zip((0, *cuts), (*cuts, n))], srt)
                   for k in range(n) for cuts in combinations(range(1, n), k))
        got = prefill_groups(lengths, call_cost=64)
        assert sorted(np.concatenate(got).tolist()) == list(range(n))      # every row once
        parts, at = [], 0
        for g in got:
            parts.append(list(range(at, at + len(g))))
            at += len(g)
        assert cost(parts, srt) == best
    # the default call cost keeps small groups whole (a program to compile per call shape)
    assert len(prefill_groups([20, 90, 18, 60, 95, 17])) == 1
    assert len(prefill_groups(np.random.default_rng(1).integers(16, 97, size=16))) == 1
    assert [len(g) for g in prefill_groups(np.random.default_rng(1).integers(16, 97, size=64))
            ] == [32, 32]
    assert len(prefill_groups(np.random.default_rng(1).integers(30, 400, size=64))) > 1
