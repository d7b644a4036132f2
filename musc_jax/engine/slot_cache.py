"""A KV cache of decode slots, and the DecoderLM forward pass that reads and writes it.

Layout: per layer, keys and values [slots, kv_heads, L, head_dim]. Each slot holds one row at
its own length: its tokens sit at cache positions 0..pos-1, and a token's rope position is its
cache position, so slots at different lengths need no shared index and no padding on the left.

Why this layout: decode attention reads `k [slot, kv, L, D]` and `v` in blocks along L with
the batch dims (slot, kv) leading, so XLA reads the cache where it lies. The [B, S, kv, D] cache
of `DecoderLM.hidden_states(cache=...)` puts S before kv, and XLA transposes (copies) both K and
V of every layer on every step to get there. Writes are scatters into the loop-carried buffers,
which XLA performs in place.

`L` is fixed for a whole engine call (long enough for its longest row), so slots refill and
pack without new shapes; a decode step reads the cache only up to the longest live row
(`_decode_attention`, a loop over blocks with a traced bound), so its cost follows the rows'
lengths, not L.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from musc_jax.engine import cpu_kernels
from musc_jax.models.attention import MASK_VALUE
from musc_jax.models.rope import inverse_frequencies, rope_cos_sin

# Decode attention reads the cache in blocks of this many positions, up to the longest live row.
DECODE_BLOCK = 64


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


class DecodeWeights(NamedTuple):
    """The decoder's matrices packed for `cpu_kernels.packed_matmul` (one tuple entry per
    layer): q|k|v side by side, o, gate|up side by side, down, and the LM head [E, V]."""

    qkv: tuple
    qkv_bias: tuple      # [H*D + 2*KV*D] per layer, or None (no attention bias)
    o: tuple
    gate_up: tuple
    down: tuple
    lm_head: jax.Array


def pack_decode_weights(model) -> DecodeWeights:
    """The model's decode-step matrices in the CPU kernel's panel layout (float32): computed
    outside the decode loop (once per model: `continuous.decode_weights`), so no step repacks a
    weight."""
    qkv, bias, o, gate_up, down = [], [], [], [], []
    for layer in _layers(model):
        a, m = layer.attn, layer.mlp
        e = a.q_proj.shape[0]
        flat = [w[...].reshape(e, -1) for w in (a.q_proj, a.k_proj, a.v_proj)]
        qkv.append(cpu_kernels.pack(jnp.concatenate(flat, axis=1)))
        bias.append(None if a.q_bias is None else jnp.concatenate(
            [b[...].reshape(-1) for b in (a.q_bias, a.k_bias, a.v_bias)]).astype(jnp.float32))
        o.append(cpu_kernels.pack(a.o_proj[...].reshape(-1, e)))
        gate_up.append(cpu_kernels.pack(jnp.concatenate([m.gate_proj[...], m.up_proj[...]], 1)))
        down.append(cpu_kernels.pack(m.down_proj[...]))
    return DecodeWeights(tuple(qkv), tuple(bias), tuple(o), tuple(gate_up), tuple(down),
                         cpu_kernels.pack(model.lm_head_weight()))


def packed_logits(h: jax.Array, weights: DecodeWeights, vocab: int) -> jax.Array:
    """float32 logits [R, V] of hidden states h [R, E] by the packed LM head."""
    return cpu_kernels.packed_matmul(h, weights.lm_head, vocab)


def _attend(attn, x, cos, sin, kc, vc, slots, positions, *, whole: bool, kv_len: int,
            kernel: bool, packed: tuple | None = None):
    """One attention block over the slot cache.

    x [R, T, E] the tokens of rows that live in `slots` [R] at cache `positions` [R, T]. Their
    keys/values are written into kc/vc (writes to a slot index >= the slot count, or a position
    >= L, are dropped: padding rows and idle slots). Then each query attends to its slot's keys
    at positions <= its own (and inside the sliding window). `whole`: the rows are all slots in
    order and T = 1 (decoding), so the cache is read in place, up to the longest live row;
    otherwise the rows' slots are gathered, positions < kv_len only (prefill chunks). `kernel`:
    decode attention by the CPU kernel (`cpu_kernels.decode_attention`), which reads each slot
    only up to its own position. `packed`: this layer's (qkv, qkv_bias, o) of `DecodeWeights`,
    projections by `cpu_kernels.packed_matmul`. Returns (out [R, T, E], kc, vc).
    """
    r, t, e = x.shape
    q, k, v = attn.qkv(x, cos, sin) if packed is None else _packed_qkv(attn, x, cos, sin,
                                                                        *packed[:2])
    kc = kc.at[slots[:, None], :, positions, :].set(k.astype(kc.dtype), mode="drop")
    vc = vc.at[slots[:, None], :, positions, :].set(v.astype(vc.dtype), mode="drop")
    h, d = q.shape[2], q.shape[3]
    if whole:
        attend = cpu_kernels.decode_attention if kernel else _decode_attention
        out = attend(q, kc, vc, positions, scale=attn.scale, window=attn.window)
    else:
        out = _prefill_attention(q, kc, vc, slots, positions, kv_len, scale=attn.scale,
                                 window=attn.window)
    if packed is not None:
        return (cpu_kernels.packed_matmul(out.reshape(r * t, h * d), packed[2], e)
                .reshape(r, t, e), kc, vc)
    o = attn.o_proj[...].astype(attn.dtype)
    return (out.reshape(r * t, h * d) @ o.reshape(h * d, -1)).reshape(r, t, -1), kc, vc


def _packed_qkv(attn, x, cos, sin, w_qkv: jax.Array, bias: jax.Array | None):
    """`Attention.qkv` of x [R, T, E] by the packed kernel: q|k|v in one matmul."""
    r, t, e = x.shape
    h, kvh, d = attn.q_proj.shape[1], attn.k_proj.shape[1], attn.k_proj.shape[2]
    y = cpu_kernels.packed_matmul(x.reshape(r * t, e), w_qkv, (h + 2 * kvh) * d)
    y = y if bias is None else y + bias
    q, k, v = (y[:, a * d:b * d].reshape(r, t, -1, d)
               for a, b in ((0, h), (h, h + kvh), (h + kvh, h + 2 * kvh)))
    return (*attn.position(q, k, cos, sin), v)


def _packed_mlp(x: jax.Array, w_gate_up: jax.Array, w_down: jax.Array, mlp: int) -> jax.Array:
    """The MLP (`llama.MLP`) of x [R, T, E] by the packed kernels: gate|up in one matmul."""
    r, t, e = x.shape
    gu = cpu_kernels.packed_matmul(x.reshape(r * t, e), w_gate_up, 2 * mlp)
    act = jax.nn.silu(gu[:, :mlp]) * gu[:, mlp:]
    return cpu_kernels.packed_matmul(act, w_down, e).reshape(r, t, e)


def _prefill_attention(q, kc, vc, slots, positions, kv_len: int, *, scale, window):
    """q [R, T, H, D] of a prompt chunk over its slots' cache positions < kv_len (the prompt so
    far): grouped-query scores, float32 masked softmax. Returns [R, T, H, D]."""
    rows = jnp.clip(slots, 0, kc.shape[0] - 1)
    keys, values = kc[rows, :, :kv_len], vc[rows, :, :kv_len]
    r, t, h, d = q.shape
    kvh, s = keys.shape[1], keys.shape[2]
    qg = q.reshape(r, t, kvh, h // kvh, d)
    scores = jnp.einsum("rtkgd,rksd->rkgts", qg, keys.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    k_pos = jnp.arange(s)
    allowed = k_pos[None, None, :] <= positions[:, :, None]                  # [R, T, S]
    if window is not None:
        allowed &= (positions[:, :, None] - k_pos[None, None, :]) < window
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    return jnp.einsum("rkgts,rksd->rtkgd", probs, values.astype(q.dtype)).reshape(r, t, h, d)


def _decode_attention(q, kc, vc, positions, *, scale, window):
    """Decode attention of q [R, 1, H, D] over the slot cache kc/vc [R, kv, L, D], reading only
    the blocks of DECODE_BLOCK positions up to the longest live row (rows at position >= L are
    idle slots and do not count). Online softmax in float32 across blocks: the cost of a step
    follows the rows' current lengths, not the cache's length L, so one L serves a whole call.

    Scores and outputs are multiply-reduce over [R, kv, g, B, D]: XLA:CPU emits the batched
    (slot, kv) P.V dot with g rows as a naive loop, slower than the reduce (decode_profile.md).
    """
    r, _, h, d = q.shape
    kvh, length = kc.shape[1], kc.shape[2]
    block = min(DECODE_BLOCK, length)
    pos = positions[:, 0]                                                  # [R]
    hi = jnp.max(jnp.where(pos < length, pos, 0)) + 1
    lo = 0 if window is None else jnp.maximum(jnp.min(pos) - window + 1, 0) // block
    qg = (q[:, 0].reshape(r, kvh, h // kvh, d).astype(jnp.float32) * scale)[:, :, :, None, :]

    def body(j, carry):
        m, total, acc = carry
        start = jnp.minimum(j * block, length - block)   # a last block may overlap the one before
        kb = jax.lax.dynamic_slice_in_dim(kc, start, block, 2).astype(jnp.float32)[:, :, None]
        vb = jax.lax.dynamic_slice_in_dim(vc, start, block, 2).astype(jnp.float32)[:, :, None]
        k_pos = start + jnp.arange(block)
        allowed = (k_pos[None, :] <= pos[:, None]) & (k_pos[None, :] >= j * block)   # [R, B]
        if window is not None:
            allowed &= (pos[:, None] - k_pos[None, :]) < window
        s = jnp.where(allowed[:, None, None], jnp.sum(qg * kb, -1), MASK_VALUE)   # [R, kv, g, B]
        new_m = jnp.maximum(m, jnp.max(s, -1))
        p = jnp.exp(s - new_m[..., None])
        a = jnp.exp(m - new_m)
        return new_m, total * a + jnp.sum(p, -1), acc * a[..., None] + jnp.sum(p[..., None] * vb, 3)

    g = h // kvh
    init = (jnp.full((r, kvh, g), MASK_VALUE, jnp.float32), jnp.zeros((r, kvh, g), jnp.float32),
            jnp.zeros((r, kvh, g, d), jnp.float32))
    _, total, acc = jax.lax.fori_loop(lo, (hi + block - 1) // block, body, init)
    return (acc / total[..., None]).astype(q.dtype).reshape(r, 1, h * d)


def slot_forward(model, ids: jax.Array, slots: jax.Array, start: jax.Array, cache: SlotCache, *,
                 whole: bool, kv_len: int = 0,
                 decode_kernel: bool = False,
                 packed: DecodeWeights | None = None) -> tuple[jax.Array, SlotCache]:
    """Final normed hidden states [R, T, E] of `ids` [R, T] placed in `slots` [R] from cache
    position `start` [R] on, and the cache with their keys/values written.

    Decoding: T = 1, R = all slots (`whole=True`). Prefill chunk: `whole=False`, the chunk
    attends to its slots' positions < `kv_len` (the prompt so far, never the whole cache).
    `decode_kernel`: decode attention by the CPU kernel (only where
        `cpu_kernels.decode_kernels_available`, and without a mesh). `packed`: the matrices of
    `pack_decode_weights`, every projection by the CPU matmul kernel (decoding only).
    """
    t = ids.shape[1]
    positions = start[:, None] + jnp.arange(t, dtype=start.dtype)[None, :]
    cos, sin = rope_cos_sin(positions, inverse_frequencies(model.config))
    x = jnp.take(model.embed[...], ids, axis=0).astype(model.dtype)
    new_k, new_v = [], []
    for i, layer in enumerate(_layers(model)):
        a, kc, vc = _attend(layer.attn, layer.input_norm(x), cos, sin, cache.keys[i],
                            cache.values[i], slots, positions, whole=whole, kv_len=kv_len,
                            kernel=decode_kernel,
                            packed=None if packed is None else
                            (packed.qkv[i], packed.qkv_bias[i], packed.o[i]))
        x = x + a
        if packed is None:
            x = x + layer.mlp(layer.post_attn_norm(x))
        else:
            x = x + _packed_mlp(layer.post_attn_norm(x), packed.gate_up[i], packed.down[i],
                                model.config.intermediate_size)
        new_k.append(kc)
        new_v.append(vc)
    return model.norm(x), SlotCache(tuple(new_k), tuple(new_v))
