"""The continuous-batching engine: greedy output equal to transformers on mixed prompt and output
lengths (slots refilled, cache resized, prompts prefilled in chunks), samples equal to the static
engine's whatever the slot count, no step on finished rows, no recompilation as slots refill,
and a decode step that does not copy the cache."""

import numpy as np
import pytest
import torch

from hf_models import make_hf_model
from musc_jax.engine import continuous, hlo, static
from musc_jax.engine.counters import TRACE_COUNTS
from musc_jax.engine.sampling import SamplingMode
from musc_jax.generate import generate, stop_id_array
from musc_jax.models import ModelConfig, from_pretrained, init_model

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


@pytest.mark.parametrize("family", ["llama", "mistral"])   # mistral: sliding window of 5
def test_greedy_matches_transformers_on_mixed_lengths(family, tmp_path):
    hf = make_hf_model(family, tmp_path)
    with torch.no_grad():  # sharper logits: no near-ties for the argmax to flip on
        hf.lm_head.weight.mul_(8.0)
    hf.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
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


# slots=2 compiles many (slots, length) variants: ~10 min on a loaded 2-core machine
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


def test_no_recompilation_as_slots_refill(tiny):
    kw = dict(temperature=0.8, top_p=0.9, eos_token_id=[5, 9, 17], max_slots=2)
    prompts = [[1 + i, 2, 3] + [4] * (i % 9) for i in range(12)]   # all in the 16-token bucket
    generate(tiny, prompts, 30, seed=0, **kw)
    before = dict(TRACE_COUNTS)
    out = generate(tiny, [p[::-1] for p in prompts], 30, seed=1, **kw)
    assert out.stats.prefill_calls >= 6 and out.stats.segments >= 6   # slots were refilled
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
