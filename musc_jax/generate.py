"""Batched sampling with a preallocated KV cache, compiled once per shape bucket.

`generate` left-pads the prompts to a length bucket, pads the batch with dummy rows to a batch
bucket, and runs prefill plus the whole decode loop (a `jax.lax.while_loop` that stops as soon as
every row has produced an EOS) inside one jitted function. Temperature, top-k and top-p are
traced values, so changing them does not recompile; only switching a filter on or off (or greedy
on or off) selects another compiled variant.

The sampling filters are pure functions of float32 logits [..., V]:
`apply_temperature`, `top_k_filter`, `top_p_filter` (removed tokens get -inf).
Each row draws from its own key, fold_in(seed key, row) then fold_in(., step), so a row's sample
does not depend on the batch bucket or on the other rows.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from musc_jax.models.llama import KVCache
from musc_jax.sharding import batch_sharding, logical_to_spec

# Number of times each jitted function was traced (a trace precedes every compilation); tests
# read it to check that a second call in the same bucket does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()

_NEG_INF = -jnp.inf
_MIN_PROMPT_BUCKET = 16
_PROMPT_BUCKET_STEP = 512   # powers of two up to this, then multiples of it
_EOS_SLOTS = 4              # eos id lists are padded (with -1) to a multiple of this


# ----------------------------------------------------------------------------- sampling filters

def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    """logits / temperature (temperature > 0; use greedy decoding for temperature 0)."""
    return logits / jnp.asarray(temperature, logits.dtype)


def _sortable(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of float32 `x` (-inf smallest, +inf largest)."""
    i = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    i = i ^ ((i >> 31) & jnp.int32(0x7FFFFFFF))     # flip the magnitude bits of negatives
    return jax.lax.bitcast_convert_type(i, jnp.uint32) ^ jnp.uint32(0x80000000)


def _largest_threshold(keys: jax.Array, ok) -> jax.Array:
    """Per row the largest uint32 t with ok(keys >= t) true, by bisection (32 exact steps).

    `ok(keep_mask) -> [..., 1] bool` must be monotone (true for t = 0, i.e. keep all). The answer
    is always one of the row's keys, so `keys >= t` is an exact top-set, found without a sort.
    """
    lo = jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32)          # ok(lo) holds
    hi = jnp.max(keys, axis=-1, keepdims=True)                   # answer <= max key

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2                            # upper mid, no overflow
        good = ok(keys >= mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return lo


def top_k_filter(logits: jax.Array, k) -> jax.Array:
    """Keep the k largest logits of each row (ties with the k-th are kept); the rest -> -inf.

    k <= 0 or k >= V keeps everything. `k` may be a traced integer. Exact, without a sort.
    """
    k = jnp.asarray(k, jnp.int32)
    keys = _sortable(logits)
    t = _largest_threshold(keys, lambda keep: jnp.sum(keep, -1, keepdims=True, dtype=jnp.int32) >= k)
    keep = (keys >= t) | (k <= 0)
    return jnp.where(keep, logits, _NEG_INF)


def top_p_filter(logits: jax.Array, p) -> jax.Array:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p.

    Equivalently, a token is kept when the mass of the tokens ranked above it is < p, so the top
    token is always kept; tokens tied with the last kept one are kept too. p >= 1 keeps all.
    `p` may be a traced float. Works on logits already filtered (-inf entries have mass 0).
    The threshold is found by bisection on the logits' bit patterns (exact, no sort).
    """
    p = jnp.asarray(p, jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keys = _sortable(logits)
    t = _largest_threshold(keys, lambda keep: jnp.sum(jnp.where(keep, probs, 0.0), -1,
                                                       keepdims=True) >= p)
    keep = (keys >= t) | (p >= 1.0)
    return jnp.where(keep, logits, _NEG_INF)


def filter_logits(logits: jax.Array, temperature=1.0, top_k=0, top_p=1.0, *,
                  use_top_k: bool = True, use_top_p: bool = True) -> jax.Array:
    """Temperature, then top-k, then top-p (on the top-k renormalised distribution)."""
    logits = apply_temperature(logits.astype(jnp.float32), temperature)
    if use_top_k:
        logits = top_k_filter(logits, top_k)
    if use_top_p:
        logits = top_p_filter(logits, top_p)
    return logits


# ----------------------------------------------------------------------------- buckets

def bucket_length(n: int, minimum: int = _MIN_PROMPT_BUCKET, step: int = _PROMPT_BUCKET_STEP) -> int:
    """Prompt length bucket: powers of two from `minimum` up to `step`, then multiples of `step`."""
    n = max(int(n), 1)
    if n > step:
        return -(-n // step) * step
    b = minimum
    while b < n:
        b *= 2
    return b


def bucket_batch(n: int, multiple: int = 1) -> int:
    """Batch bucket: the next power of two, rounded up to a multiple of the mesh batch size."""
    b = 1
    while b < n:
        b *= 2
    return -(-b // multiple) * multiple


def _eos_array(eos_token_id) -> np.ndarray:
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, (int, np.integer)):
        ids = [int(eos_token_id)]
    else:
        ids = sorted({int(e) for e in eos_token_id})
    size = max(_EOS_SLOTS, -(-len(ids) // _EOS_SLOTS) * _EOS_SLOTS)
    return np.array(ids + [-1] * (size - len(ids)), np.int32)


# ----------------------------------------------------------------------------- the compiled loop

@dataclasses.dataclass(frozen=True)
class _Static:
    max_new_tokens: int
    greedy: bool
    use_top_k: bool
    use_top_p: bool


def _argmax(x: jax.Array) -> jax.Array:
    """argmax over the last axis (first index of the maximum) as two plain reductions.

    Same result as jnp.argmax for non-NaN input; XLA:CPU runs the fused (value, index) reduce
    of jnp.argmax several times slower than a max followed by a min.
    """
    m = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == m, iota, x.shape[-1]), axis=-1)


def _sample(logits, keys, step, temperature, top_k, top_p, st: _Static):
    """Next token [B] from float32 logits [B, V]; one key per row (Gumbel-max sampling)."""
    if st.greedy:
        return _argmax(logits)
    logits = filter_logits(logits, temperature, top_k, top_p,
                           use_top_k=st.use_top_k, use_top_p=st.use_top_p)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys)
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[-1:], jnp.float32))(step_keys)
    return _argmax(logits + gumbel)


def _decode(graphdef, state, ids, mask, live, seed, eos, pad, temperature, top_k, top_p,
            st: _Static, cache_spec):
    """Prefill + while_loop decode. ids/mask [B, Tp] left-padded; live [B] real rows."""
    TRACE_COUNTS["generate"] += 1
    model = nnx.merge(graphdef, state)
    b, tp = ids.shape
    base = jax.random.key(seed)
    keys = jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.arange(b))
    n = st.max_new_tokens
    cache = model.init_cache(b, tp + max(n - 1, 1))
    if cache_spec is not None:
        cache = jax.lax.with_sharding_constraint(cache, cache_spec)

    h, cache = model.hidden_states(ids, mask, cache=cache)
    logits = model.logits(h[:, -1])
    tok = _sample(logits, keys, 0, temperature, top_k, top_p, st)

    def is_eos(t):
        return jnp.any(t[:, None] == eos[None, :], axis=-1)

    out = jnp.full((b, n), pad, jnp.int32).at[:, 0].set(tok)
    done = ~live | is_eos(tok)
    lengths = live.astype(jnp.int32)

    def cond(carry):
        i, _, done, _, _, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, tok, done, cache, out, lengths = carry
        h, cache = model.hidden_states(tok[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
        nxt = _sample(model.logits(h[:, 0]), keys, i, temperature, top_k, top_p, st)
        out = jax.lax.dynamic_update_slice(out, jnp.where(done, pad, nxt)[:, None], (0, i))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | is_eos(nxt)
        # finished rows keep decoding (their output is padding); feed them token 0, always valid
        return i + 1, jnp.where(done, 0, nxt), done, cache, out, lengths

    carry = (jnp.int32(1), jnp.where(done, 0, tok), done, cache, out, lengths)
    _, _, _, _, out, lengths = jax.lax.while_loop(cond, body, carry)
    return out, lengths


_JIT_CACHE: dict[Any, Any] = {}


def _compiled(graphdef, st: _Static, mesh: Mesh | None, cache_spec):
    key = (graphdef, st, mesh, cache_spec)
    fn = _JIT_CACHE.get(key)
    if fn is None:
        def run(state, ids, mask, live, seed, eos, pad, temperature, top_k, top_p):
            return _decode(graphdef, state, ids, mask, live, seed, eos, pad, temperature, top_k,
                           top_p, st, cache_spec)
        if mesh is None:
            fn = jax.jit(run)
        else:
            # parameters and inputs arrive placed; GSPMD propagates the rest
            fn = jax.jit(run, out_shardings=(batch_sharding(mesh, 2), batch_sharding(mesh, 1)))
        _JIT_CACHE[key] = fn
    return fn


# ----------------------------------------------------------------------------- public API

@dataclasses.dataclass
class GenerateOutput:
    """tokens [B*n, T_new] int32 (EOS included, pad after); lengths [B*n] (EOS counted)."""

    tokens: np.ndarray
    lengths: np.ndarray


def _left_pad(prompts: Sequence[Sequence[int]], rows: int, length: int):
    """Left-padded ids/mask [rows, length]; padding and dummy rows use token 0 (always valid)."""
    ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    mask[len(prompts):, -1] = 1  # dummy rows hold one real token, so no row attends to nothing
    return ids, mask


def generate(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: int | Sequence[int] | None = None, seed: int = 0,
             num_samples: int = 1, pad_token_id: int = 0, mesh: Mesh | None = None) -> GenerateOutput:
    """Sample `max_new_tokens` continuations of each prompt (a list of token-id lists).

    temperature == 0 is greedy. Rows stop at their own EOS (an id or a list of ids) and are
    padded with `pad_token_id` after it. Output rows are prompt-major: rows [i*n:(i+1)*n] are
    the `num_samples` samples of prompt i. With `mesh`, rows are sharded over ("data", "fsdp").
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    prompts = [list(map(int, p)) for p in prompt_ids]
    if not prompts:
        raise ValueError("prompt_ids is empty")
    vocab = model.config.vocab_size
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty (a prompt needs at least one token, e.g. BOS)")
        if any(t < 0 or t >= vocab for t in p):
            raise ValueError(f"prompt {i}: token ids must be in [0, {vocab}), got {p}")

    rows = [p for p in prompts for _ in range(num_samples)]
    multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    b = bucket_batch(len(rows), multiple)
    tp = bucket_length(max(len(p) for p in rows))
    ids, mask = _left_pad(rows, b, tp)
    live = np.arange(b) < len(rows)

    st = _Static(max_new_tokens=int(max_new_tokens), greedy=temperature == 0,
                 use_top_k=0 < top_k < vocab, use_top_p=top_p < 1.0)
    graphdef, state = nnx.split(model)
    cache_spec = None
    if mesh is not None:
        c = model.config
        kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"),
                                  (b, 1, c.num_kv_heads, c.head_dim), mesh)
        kv = NamedSharding(mesh, kv_spec)
        rep = NamedSharding(mesh, P())
        cache_spec = KVCache(
            keys=(kv,) * c.num_layers, values=(kv,) * c.num_layers,
            mask=batch_sharding(mesh, 2), index=rep, lengths=batch_sharding(mesh, 1))
    fn = _compiled(graphdef, st, mesh, cache_spec)
    args = (ids, mask, live)
    if mesh is not None:
        args = tuple(jax.device_put(a, batch_sharding(mesh, a.ndim)) for a in args)
    out, lengths = fn(state, *args, np.uint32(seed % 2**32), _eos_array(eos_token_id),
                      np.int32(pad_token_id),
                      np.float32(temperature if temperature > 0 else 1.0),
                      np.int32(top_k), np.float32(top_p))
    out = np.asarray(jax.device_get(out))[: len(rows)]
    lengths = np.asarray(jax.device_get(lengths))[: len(rows)]
    return GenerateOutput(tokens=out.astype(np.int32), lengths=lengths.astype(np.int32))


# ----------------------------------------------------------------------------- text level

def _end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant message, if any."""
    sentinel = "zq7SENTINELq7z"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}],
            tokenize=False)
    except Exception:  # templates that refuse this shape of conversation
        return []
    if sentinel not in text:
        return []
    tail = text.split(sentinel, 1)[1]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    for t in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if t in special:
            return [int(t)]
        if tokenizer.decode([t]).strip():
            return []  # ordinary text comes first: no end-of-turn token
    return []


def chat_prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of `conversation` with the generation prompt; exactly one leading BOS."""
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = [int(t) for t in ids]
    bos = tokenizer.bos_token_id
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def generate_text(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                  num_samples: int = 1, mesh: Mesh | None = None) -> list[str]:
    """Chat-template each conversation, sample, and decode (special tokens skipped).

    Returns len(conversations) * num_samples strings, prompt-major. Generation stops at the
    tokenizer's EOS and at the chat template's end-of-turn token.
    """
    prompts = [chat_prompt_ids(tokenizer, c) for c in conversations]
    eos = set(_end_of_turn_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    out = generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                   top_k=top_k, eos_token_id=sorted(eos) or None, seed=seed,
                   num_samples=num_samples, pad_token_id=pad, mesh=mesh)
    return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
            for row, n in zip(out.tokens, out.lengths)]
