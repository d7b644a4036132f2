"""The static engine (kept for comparison: `generate(..., engine="static")`, bench/generate.py).

Left-pads every prompt to one length bucket and the batch to a batch bucket, then runs prefill
and a `jax.lax.while_loop` decode over the whole batch in one jit, until every row has stopped.
Finished rows keep being decoded (as padding) until the longest row ends, and every step reads
the preallocated [B, S, kv, D] cache of `DecoderLM.hidden_states(cache=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from musc_jax.engine.buckets import bucket_batch, bucket_length
from musc_jax.engine.counters import TRACE_COUNTS
from musc_jax.engine.sampling import SamplingMode, is_stop, sample
from musc_jax.models.llama import KVCache
from musc_jax.sharding import batch_sharding, logical_to_spec


@dataclasses.dataclass(frozen=True)
class _Static:
    max_new_tokens: int
    greedy: bool
    use_top_k: bool
    use_top_p: bool
    kernel: bool = False

    @property
    def mode(self) -> SamplingMode:
        return SamplingMode(self.greedy, self.use_top_k, self.use_top_p, self.kernel)


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
    tok = sample(logits, keys, 0, temperature, top_k, top_p, st.mode)

    out = jnp.full((b, n), pad, jnp.int32).at[:, 0].set(tok)
    done = ~live | is_stop(tok, eos)
    lengths = live.astype(jnp.int32)

    def cond(carry):
        i, _, done, _, _, _ = carry
        return (i < n) & ~jnp.all(done)

    def body(carry):
        i, tok, done, cache, out, lengths = carry
        h, cache = model.hidden_states(tok[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)
        nxt = sample(model.logits(h[:, 0]), keys, i, temperature, top_k, top_p, st.mode)
        out = jax.lax.dynamic_update_slice(out, jnp.where(done, pad, nxt)[:, None], (0, i))
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | is_stop(nxt, eos)
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


def left_pad(prompts: Sequence[Sequence[int]], rows: int, length: int):
    """Left-padded ids/mask [rows, length]; padding and dummy rows use token 0 (always valid)."""
    ids = np.zeros((rows, length), np.int32)
    mask = np.zeros((rows, length), np.int32)
    for i, p in enumerate(prompts):
        ids[i, length - len(p):] = p
        mask[i, length - len(p):] = 1
    mask[len(prompts):, -1] = 1  # dummy rows hold one real token, so no row attends to nothing
    return ids, mask


def generate_static(model, rows: Sequence[Sequence[int]], max_new_tokens: int, *, seed: int,
                    stop_ids: np.ndarray, pad: int, temperature: float, top_k: int, top_p: float,
                    mode: SamplingMode, mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tokens [len(rows), max_new_tokens] and lengths [len(rows)] of the static engine."""
    multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    b = bucket_batch(len(rows), multiple)
    tp = bucket_length(max(len(p) for p in rows))
    ids, mask = left_pad(rows, b, tp)
    live = np.arange(b) < len(rows)
    st = _Static(max_new_tokens=int(max_new_tokens), greedy=mode.greedy,
                 use_top_k=mode.use_top_k, use_top_p=mode.use_top_p, kernel=mode.kernel)
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
    out, lengths = fn(state, *args, np.uint32(seed % 2**32), stop_ids, np.int32(pad),
                      np.float32(temperature), np.int32(top_k), np.float32(top_p))
    out = np.asarray(jax.device_get(out))[: len(rows)]
    lengths = np.asarray(jax.device_get(lengths))[: len(rows)]
    return out.astype(np.int32), lengths.astype(np.int32)


def decode_program_text(model, batch: int, prompt_len: int, max_new: int,
                        mode: SamplingMode) -> str:
    """The optimized HLO of the static engine's prefill + decode loop (to inspect its copies)."""
    graphdef, params = nnx.split(model)
    st = _Static(max_new, mode.greedy, mode.use_top_k, mode.use_top_p, mode.kernel)
    ids = np.zeros((batch, prompt_len), np.int32)
    return _compiled(graphdef, st, None, None).lower(
        params, ids, ids, np.ones((batch,), bool), np.uint32(0), np.zeros((4,), np.int32),
        np.int32(0), np.float32(1), np.int32(0), np.float32(1)).compile().as_text()
