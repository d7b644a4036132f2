"""A KV cache of decode slots, and the DecoderLM forward pass that reads and writes it.

Layout: per layer, keys and values [slots, kv_heads, L, head_dim]. Each slot holds one row at
its own length: its tokens sit at cache positions 0..pos-1, and a token's rope position is its
cache position, so slots at different lengths need no shared index and no padding on the left.

Why this layout: the decode scores `q [slot, kv, g, D] . k [slot, kv, L, D]` and the output
`p [slot, kv, g, L] . v [slot, kv, L, D]` are batched matmuls with the batch dims (slot, kv)
leading, so XLA reads the cache where it lies. The [B, S, kv, D] cache of
`DecoderLM.hidden_states(cache=...)` puts S before kv, and XLA transposes (copies) both K and V
of every layer on every step to get there. Writes are scatters into the loop-carried buffers,
which XLA performs in place.

`L` is the engine's current length bucket (it grows and shrinks between decode segments), so
attention reads only up to it, not up to the longest length a call could reach.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from musc_jax.models.attention import MASK_VALUE
from musc_jax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin


class SlotCache(NamedTuple):
    """keys/values: per layer [slots, kv_heads, L, head_dim]."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]


def init_slot_cache(config, slots: int, length: int, dtype) -> SlotCache:
    shape = (slots, config.num_kv_heads, length, config.head_dim)
    return SlotCache(keys=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
                     values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)))


def _layers(model) -> list:
    """The decoder layers as modules (one slice of the stacked weights per layer when scanned)."""
    if not getattr(model, "scan_layers", False):
        return list(model.layers)
    graphdef, state = nnx.split(model.layers)
    return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
            for i in range(model.config.num_layers)]


def _attend(attn, x, cos, sin, kc, vc, slots, positions, *, whole: bool, kv_len: int):
    """One attention block over the slot cache.

    x [R, T, E] the tokens of rows that live in `slots` [R] at cache `positions` [R, T]. Their
    keys/values are written into kc/vc (writes to a slot index >= the slot count, or a position
    >= L, are dropped: padding rows and idle slots). Then each query attends to its slot's keys
    at positions <= its own (and inside the sliding window). `whole`: the rows are all slots in
    order (decoding), so the cache is read in place; otherwise the rows' slots are gathered,
    positions < kv_len only (prefill chunks). Returns (out [R, T, E], kc, vc).
    """
    q = attn._project(x, attn.q_proj, attn.q_bias, "query_proj")
    k = attn._project(x, attn.k_proj, attn.k_bias, "key_proj")
    v = attn._project(x, attn.v_proj, attn.v_bias, "value_proj")
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    kc = kc.at[slots[:, None], :, positions, :].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[slots[:, None], :, positions, :].set(v.astype(vc.dtype), mode="drop")
    if whole:
        keys, values = kc, vc
    else:
        rows = jnp.clip(slots, 0, kc.shape[0] - 1)
        keys, values = kc[rows, :, :kv_len], vc[rows, :, :kv_len]
    r, t, h, d = q.shape
    kvh, s = keys.shape[1], keys.shape[2]
    qg = q.reshape(r, t, kvh, h // kvh, d)
    scores = jnp.einsum("rtkgd,rksd->rkgts", qg, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * attn.scale
    k_pos = jnp.arange(s)
    allowed = k_pos[None, None, :] <= positions[:, :, None]                  # [R, T, S]
    if attn.window is not None:
        allowed &= (positions[:, :, None] - k_pos[None, None, :]) < attn.window
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("rkgts,rksd->rtkgd", probs, values.astype(q.dtype)).reshape(r * t, h * d)
    o = attn.o_proj[...].astype(attn.dtype)
    return (out @ o.reshape(h * d, -1)).reshape(r, t, -1), kc, vc


def slot_forward(model, ids: jax.Array, slots: jax.Array, start: jax.Array, cache: SlotCache, *,
                 whole: bool, kv_len: int = 0) -> tuple[jax.Array, SlotCache]:
    """Final normed hidden states [R, T, E] of `ids` [R, T] placed in `slots` [R] from cache
    position `start` [R] on, and the cache with their keys/values written.

    Decoding: T = 1, R = all slots (`whole=True`). Prefill chunk: `whole=False`, the chunk
    attends to its slots' positions < `kv_len` (the prompt so far, never the whole cache).
    """
    t = ids.shape[1]
    positions = start[:, None] + jnp.arange(t, dtype=start.dtype)[None, :]
    cos, sin = rope_cos_sin(positions, inverse_frequencies(model.config))
    x = jnp.take(model.embed[...], ids, axis=0).astype(model.dtype)
    new_k, new_v = [], []
    for i, layer in enumerate(_layers(model)):
        a, kc, vc = _attend(layer.attn, layer.input_norm(x), cos, sin, cache.keys[i],
                            cache.values[i], slots, positions, whole=whole, kv_len=kv_len)
        x = x + a
        x = x + layer.mlp(layer.post_attn_norm(x))
        new_k.append(kc)
        new_v.append(vc)
    return model.norm(x), SlotCache(tuple(new_k), tuple(new_v))
