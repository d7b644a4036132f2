"""Batched generation vs transformers, sampling filters vs numpy, buckets, text helper."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from hf_models import sharp_hf_and_ours
from musc_jax import generate as gen
from musc_jax.generate import (bucket_batch, bucket_length, filter_logits, generate,
                               generate_text, top_k_filter, top_p_filter)
from musc_jax.models import ModelConfig, init_model


# ----------------------------------------------------------------------------- numpy references

def np_top_k(logits, k):
    out = logits.copy()
    if k <= 0 or k >= logits.shape[-1]:
        return out
    for r in range(out.shape[0]):
        kth = np.sort(logits[r])[::-1][k - 1]
        out[r][logits[r] < kth] = -np.inf
    return out


def np_top_p(logits, p):
    out = logits.copy()
    if p >= 1.0:
        return out
    for r in range(out.shape[0]):
        order = np.argsort(-logits[r], kind="stable")
        x = logits[r][order].astype(np.float64)
        probs = np.exp(x - x.max())
        probs /= probs.sum()
        cum = np.cumsum(probs)
        n_keep = int(np.searchsorted(cum, p) + 1)  # smallest prefix with mass >= p
        n_keep = min(max(n_keep, 1), len(x))
        out[r][order[n_keep:]] = -np.inf
    return out


_top_k = jax.jit(top_k_filter)   # k and p are traced: one compilation for all values
_top_p = jax.jit(top_p_filter)


@pytest.mark.parametrize("k", [0, 1, 5, 50, 64, 100])
def test_top_k_matches_numpy(k):
    logits = np.random.default_rng(k).normal(size=(6, 64)).astype(np.float32) * 3
    logits[0, :8] = logits[0, 8]  # ties with the k-th are kept
    logits[1, 5] = -np.inf
    np.testing.assert_array_equal(np.asarray(_top_k(jnp.asarray(logits), k)), np_top_k(logits, k))


@pytest.mark.parametrize("p", [0.0, 0.05, 0.3, 0.77, 0.95, 1.0])
def test_top_p_matches_numpy(p):
    logits = np.random.default_rng(int(p * 100)).normal(size=(6, 64)).astype(np.float32) * 2
    logits[1, :10] = -np.inf  # already filtered entries have no mass
    logits[2] = -logits[2] - 40.0  # all negative
    ours = np.asarray(_top_p(jnp.asarray(logits), p))
    np.testing.assert_array_equal(ours, np_top_p(logits, p))
    assert np.all(np.isfinite(ours.max(-1)))  # the top token is always kept


def test_filters_compose_as_temperature_topk_topp():
    logits = np.random.default_rng(3).normal(size=(4, 100)).astype(np.float32)
    ours = np.asarray(jax.jit(filter_logits)(jnp.asarray(logits), 0.7, 20, 0.8))
    ref = np_top_p(np_top_k(logits / np.float32(0.7), 20), 0.8)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(ref))  # the same tokens kept
    np.testing.assert_allclose(ours, ref, rtol=1e-6)  # XLA may divide as x * (1/t)


def test_buckets():
    assert [bucket_length(n) for n in (1, 16, 17, 64, 65, 512, 513)] == [16, 16, 32, 64, 128, 512, 1024]
    assert [bucket_batch(n) for n in (1, 3, 4, 5)] == [1, 4, 4, 8]
    assert bucket_batch(3, multiple=8) == 8 and bucket_batch(9, multiple=6) == 18


# ----------------------------------------------------------------------------- models

# Most tests share N new tokens and the 4-row batch bucket, so they reuse two compiled variants
# (greedy; sampling with top-p).
N = 12
PROMPTS = [[5, 17, 99, 3, 42, 8, 61, 7, 23, 11, 90], [64, 2, 33], [12, 77, 45, 9, 100, 3, 70], [88]]


@pytest.fixture(scope="module")
def tiny():
    return init_model(ModelConfig.preset("tiny", vocab_size=128), seed=0)


def _hf_greedy(hf, prompts, n):
    t = max(map(len, prompts))
    ids = np.zeros((len(prompts), t), np.int64)
    mask = np.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = p
        mask[i, t - len(p):] = 1
    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                          do_sample=False, max_new_tokens=n, pad_token_id=0)
    assert out.shape[1] == t + n  # no eos: all n tokens generated
    return out[:, t:].numpy()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_matches_transformers(family, tmp_path):
    hf, model = sharp_hf_and_ours(family, tmp_path)
    ref = _hf_greedy(hf, PROMPTS, 32)
    out = generate(model, PROMPTS, 32, temperature=0.0)
    assert out.tokens.shape == (4, 32) and out.tokens.dtype == np.int32
    np.testing.assert_array_equal(out.tokens, ref)
    np.testing.assert_array_equal(out.lengths, [32] * 4)


def test_tiny_temperature_equals_greedy(tiny):
    greedy = generate(tiny, PROMPTS, N, temperature=0.0)
    cold = generate(tiny, PROMPTS, N, temperature=1e-6, top_p=0.9, seed=5)
    np.testing.assert_array_equal(cold.tokens, greedy.tokens)


def test_top_k_one_equals_greedy(tiny):
    greedy = generate(tiny, PROMPTS, N, temperature=0.0)
    np.testing.assert_array_equal(generate(tiny, PROMPTS, N, temperature=1.0, top_k=1, seed=9).tokens,
                                  greedy.tokens)


def test_seed_determinism(tiny):
    a = generate(tiny, PROMPTS, N, temperature=1.0, top_p=0.9, seed=1)
    b = generate(tiny, PROMPTS, N, temperature=1.0, top_p=0.9, seed=1)
    c = generate(tiny, PROMPTS, N, temperature=1.0, top_p=0.9, seed=2)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert (a.tokens != c.tokens).mean() > 0.5


def _first_fresh(row, start, exclude=()):
    """The first position >= start whose token occurs neither before it nor in `exclude`."""
    return next(k for k in range(start, len(row)) if row[k] not in row[:k] and row[k] not in exclude)


def test_eos_stops_rows_and_pads(tiny):
    free = generate(tiny, PROMPTS, N, temperature=0.0).tokens
    k = _first_fresh(free[0], 3)
    eos = int(free[0, k])
    out = generate(tiny, PROMPTS, N, temperature=0.0, eos_token_id=[eos, 127], pad_token_id=1)
    for row, got, n in zip(free, out.tokens, out.lengths):
        hits = np.flatnonzero(np.isin(row, [eos, 127]))
        stop = hits[0] + 1 if len(hits) else N
        assert n == stop
        np.testing.assert_array_equal(got[:stop], row[:stop])
        assert np.all(got[stop:] == 1)
    assert out.lengths[0] == k + 1 and out.tokens[0, k] == eos and np.all(out.tokens[0, k + 1:] == 1)
    # an int eos works too; when every row stops at once the loop exits early with the same result
    first = generate(tiny, PROMPTS[:1] * 4, N, temperature=0.0, eos_token_id=eos, pad_token_id=1)
    np.testing.assert_array_equal(first.tokens, np.repeat(out.tokens[:1], 4, axis=0))


def test_num_samples_is_prompt_major(tiny):
    n = 2
    out = generate(tiny, PROMPTS[:2], N, temperature=1.0, top_p=0.9, seed=4, num_samples=n)
    assert out.tokens.shape == (4, N) and out.lengths.shape == (4,)
    repeated = generate(tiny, [PROMPTS[0]] * n + [PROMPTS[1]] * n, N, temperature=1.0, top_p=0.9,
                        seed=4)
    np.testing.assert_array_equal(out.tokens, repeated.tokens)
    assert np.any(out.tokens[0] != out.tokens[1])  # samples of one prompt differ
    greedy = generate(tiny, PROMPTS[:2], N, temperature=0.0, num_samples=n)
    single = generate(tiny, PROMPTS, N, temperature=0.0).tokens[:2]
    np.testing.assert_array_equal(greedy.tokens, np.repeat(single, n, axis=0))


@pytest.mark.parametrize("engine, keys", [("static", ("generate",)),
                                          ("continuous", ("engine_prefill", "engine_decode"))])
def test_same_bucket_does_not_recompile(tiny, engine, keys):
    generate(tiny, PROMPTS, N, temperature=0.9, top_p=0.9, seed=0, engine=engine)
    before = [gen.TRACE_COUNTS[k] for k in keys]
    # other prompt lengths (same 16 bucket), 3 rows (same batch bucket 4), other values
    generate(tiny, [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [4], [9, 9]], N, temperature=0.5,
             top_p=0.7, seed=3, eos_token_id=[3, 4], pad_token_id=2, engine=engine)
    assert [gen.TRACE_COUNTS[k] for k in keys] == before
    # a new prompt bucket: one new prefill trace (the static engine: one new program)
    generate(tiny, [[1] * 20] * 4, N, temperature=0.9, top_p=0.9, engine=engine)
    assert gen.TRACE_COUNTS[keys[0]] == before[0] + 1


def test_bad_input_errors(tiny):
    with pytest.raises(ValueError, match="prompt 1"):
        generate(tiny, [[1, 2], [1, 500]], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(tiny, [[1]], 0)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        generate(tiny, [[]], 4)


def test_mesh_sharded_generation_matches(tmp_path):
    """4 host devices, batch over (data, fsdp): the same tokens as without a mesh."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from musc_jax.models import ModelConfig, init_model
        from musc_jax.sharding import make_mesh
        from musc_jax.generate import generate
        assert jax.device_count() == 4
        cfg = ModelConfig.preset("tiny", vocab_size=128)
        mesh = make_mesh(data=2, fsdp=2)
        sharded = init_model(cfg, seed=0, mesh=mesh)
        plain = init_model(cfg, seed=0)
        prompts = [[5, 17, 99, 3], [64, 2, 33], [12, 77]]
        a = generate(sharded, prompts, 6, mesh=mesh, num_samples=2, temperature=1.0, top_p=0.9, seed=3)
        b = generate(plain, prompts, 6, num_samples=2, temperature=1.0, top_p=0.9, seed=3)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_array_equal(a.lengths, b.lengths)
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


# ----------------------------------------------------------------------------- text level

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|end|>"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }}"
            "{% if m['role'] == 'assistant' %}<|end|>{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(vocab_size=128, swap=None):
    """A word-level chat tokenizer over w0, w1, ...; `swap` exchanges the ids of two entries."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]
    if swap is not None:
        a, b = swap
        words[a], words[b] = words[b], words[a]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", chat_template=TEMPLATE)


CONVS = [[{"role": "user", "content": "w1 w2 w3"}], [{"role": "user", "content": "w7"}]]


def test_chat_prompt_has_one_bos_and_generation_prompt():
    tok = make_tokenizer()
    ids = gen.chat_prompt_ids(tok, CONVS[0])
    assert ids == tok.convert_tokens_to_ids(["<s>", "<|user|>", "w1", "w2", "w3", "<|assistant|>"])
    assert gen._end_of_turn_ids(tok) == [tok.convert_tokens_to_ids("<|end|>")]


def test_generate_text_matches_token_generation(tiny):
    tok = make_tokenizer()
    texts = generate_text(tiny, tok, CONVS, N, temperature=1.0, top_p=0.95, top_k=0, seed=7,
                          num_samples=2)
    prompts = [gen.chat_prompt_ids(tok, c) for c in CONVS]
    stops = [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    out = generate(tiny, prompts, N, temperature=1.0, top_p=0.95, seed=7, num_samples=2,
                   eos_token_id=stops, pad_token_id=tok.pad_token_id)
    assert len(texts) == 4
    for text, row, n in zip(texts, out.tokens, out.lengths):
        assert text == tok.decode(row[:n].tolist(), skip_special_tokens=True)
        assert "<" not in text


def test_generate_text_stops_at_end_of_turn(tiny):
    tok = make_tokenizer()
    prompt = gen.chat_prompt_ids(tok, CONVS[0])
    free = generate(tiny, [prompt] * 4, N, temperature=0.0).tokens[0]
    k = _first_fresh(free, 1, exclude=set(prompt) | set(range(len(SPECIALS))))
    g = int(free[k])
    # make the k-th greedy token the template's end-of-turn token; the prompt ids stay the same
    tok2 = make_tokenizer(swap=(SPECIALS.index("<|end|>"), g))
    assert gen.chat_prompt_ids(tok2, CONVS[0]) == prompt
    texts = generate_text(tiny, tok2, CONVS[:1] * 4, N, temperature=0.0, top_p=1.0, top_k=0, seed=0)
    assert texts == [tok2.decode(free[:k].tolist())] * 4
    assert len(texts[0].split()) == k
