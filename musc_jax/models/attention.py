"""Causal self-attention kernels behind one signature, chosen by `model.attention`.

* `einsum`: the reference. Grouped-query scores by einsum, float32 softmax, any mask; also the
  path of incremental decoding (keys in a cache).
* `xla`: plain XLA ops. When the keys are this call's tokens (training, prefill) the queries are
  processed in blocks, each block sees only the keys its causal (and sliding-window) mask can
  reach, so fully masked blocks cost nothing, and the query heads of a KV head are stacked into
  one matmul; otherwise `jax.nn.dot_product_attention(implementation="xla")`.
* `cudnn`: `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention on NVIDIA
  GPUs), with padding given as a key mask.
* `splash`: the Pallas splash-attention kernel on TPU (causal / local mask, padding through
  segment ids), inside `shard_map` over the mesh when there is one.
* `auto`: cudnn on GPU, splash on TPU, xla elsewhere.

Shapes: q [B, T, H, D], k/v [B, S, KV, D] (H a multiple of KV), key_mask [B, S] (true on real
tokens), q_slots [T] the key slot of each query (causality is slot order). Scores and softmax
are float32 on every path; the output has q's dtype.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

IMPLEMENTATIONS = ("auto", "xla", "cudnn", "splash", "einsum")
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# Query block of the xla path's causal block skipping (keys up to the block's end are used):
# the smallest block, and the most blocks per call (`causal_block`).
CAUSAL_BLOCK = 64
MAX_CAUSAL_BLOCKS = 16


def resolve(impl: str, platform: str | None = None) -> str:
    """The concrete implementation for `impl` on `platform` (default: JAX's default backend)."""
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"model.attention={impl!r}: choose one of {', '.join(IMPLEMENTATIONS)}")
    if impl != "auto":
        return impl
    platform = platform or jax.default_backend()
    return {"gpu": "cudnn", "cuda": "cudnn", "tpu": "splash"}.get(platform, "xla")


def allowed_mask(key_mask: jax.Array, q_slots: jax.Array, window: int | None,
                 k_slots: jax.Array | None = None) -> jax.Array:
    """[B, T, S] bool: key slot s is real, not after the query's slot, and inside the window."""
    if k_slots is None:
        k_slots = jnp.arange(key_mask.shape[1])
    allowed = k_slots[None, :] <= q_slots[:, None]
    if window is not None:
        allowed &= (q_slots[:, None] - k_slots[None, :]) < window
    return allowed[None] & key_mask[:, None, :].astype(bool)


def einsum_attention(q, k, v, key_mask, q_slots, *, window, scale, k_slots=None):
    """The reference: explicit grouped-query scores, float32 masked softmax."""
    b, t, h, d = q.shape
    kvh = k.shape[2]
    allowed = allowed_mask(key_mask, q_slots, window, k_slots)
    qg = q.reshape(b, t, kvh, h // kvh, d)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v.astype(q.dtype))
    return out.reshape(b, t, h, d)


def _dpa(q, k, v, allowed, scale, implementation):
    return jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype),
                                        mask=allowed[:, None], scale=scale,
                                        implementation=implementation)


def causal_block(t: int) -> int:
    """Query block of the xla path for sequence length t: 64 (fewest masked scores computed), or
    larger so that a long sequence has at most MAX_CAUSAL_BLOCKS blocks (each is unrolled)."""
    return max(CAUSAL_BLOCK, -(-t // MAX_CAUSAL_BLOCKS))


def _grouped_block(q, k, v, allowed, scale):
    """Attention of one query block with the G query heads of each KV head stacked along the
    query axis: one [G*Tb, D] x [D, S] matmul per (row, KV head), no per-group broadcast of K/V.

    q [B, KV, G, Tb, D], k/v [B, KV, S, D], allowed [B, Tb, S] -> [B, KV, G, Tb, D].
    """
    b, kvh, g, tb, d = q.shape
    s = jnp.einsum("bkqd,bksd->bkqs", q.reshape(b, kvh, g * tb, d), k.astype(q.dtype),
                   preferred_element_type=jnp.float32) * scale
    allowed = jnp.broadcast_to(allowed[:, None, None], (b, 1, g, tb, allowed.shape[-1]))
    s = jnp.where(allowed.reshape(b, 1, g * tb, -1), s, MASK_VALUE)
    probs = jax.nn.softmax(s, axis=-1).astype(q.dtype)
    return jnp.einsum("bkqs,bksd->bkqd", probs, v.astype(q.dtype)).reshape(b, kvh, g, tb, d)


def xla_attention(q, k, v, key_mask, q_slots, *, window, scale, self_keys: bool,
                  block: int | None = None):
    """Attention as plain XLA ops. With `self_keys` (keys = this call's tokens, q_slots =
    arange(T)) the queries are processed in blocks (`causal_block`) and each block only attends
    to the key range its mask can reach, so fully masked blocks cost nothing. The heads are laid
    out [B, KV, G, T, D] once per call (one transpose of q, k, v in, one of the output back):
    XLA:CPU otherwise copies and transposes per block and per group (2x slower here)."""
    b, t, h, d = q.shape
    kvh = k.shape[2]
    if not self_keys:
        return _dpa(q, k, v, allowed_mask(key_mask, q_slots, window), scale, "xla")
    block = block or causal_block(t)
    qh = q.reshape(b, t, kvh, h // kvh, d).transpose(0, 2, 3, 1, 4)       # [B, KV, G, T, D]
    kh, vh = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)             # [B, KV, S, D]
    outs = []
    for start in range(0, t, block):
        stop = min(start + block, t)
        lo = 0 if window is None else max(0, start - window + 1)
        allowed = allowed_mask(key_mask[:, lo:stop], q_slots[start:stop], window,
                               jnp.arange(lo, stop))
        outs.append(_grouped_block(qh[:, :, :, start:stop], kh[:, :, lo:stop], vh[:, :, lo:stop],
                                   allowed, scale))
    out = jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def cudnn_attention(q, k, v, key_mask, q_slots, *, window, scale, self_keys: bool):
    """cuDNN flash attention (GPU); padding and causality as one boolean mask."""
    return _dpa(q, k, v, allowed_mask(key_mask, q_slots, window), scale, "cudnn")


def _splash_block(t: int) -> int:
    for b in (512, 256, 128):
        if t % b == 0:
            return b
    raise ValueError(f"model.attention='splash' needs the sequence length to be a multiple of "
                     f"128, got {t}: set data.bucket to a multiple of 128 (or model.attention='xla')")


@functools.lru_cache(maxsize=32)
def _splash_kernel(t: int, heads: int, window: int | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    if window is None:
        mask = sm.CausalMask((t, t))
    else:
        mask = sm.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
    blk = _splash_block(t)
    sizes = sk.BlockSizes(block_q=blk, block_kv=blk, block_kv_compute=blk, block_q_dkv=blk,
                          block_kv_dkv=blk, block_kv_dkv_compute=blk, block_q_dq=blk,
                          block_kv_dq=blk)
    return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=sizes, head_shards=1,
                              q_seq_shards=1, interpret=interpret)


def splash_attention(q, k, v, key_mask, q_slots, *, window, scale, self_keys: bool,
                     mesh=None, interpret: bool = False):
    """Pallas splash attention (TPU). Padding: real tokens are segment 1, padding segment 0, so a
    real query never sees a padding key (and a padding query sees only padding: finite)."""
    if not self_keys:
        raise ValueError("splash attention covers training and prefill (keys = the call's tokens); "
                         "decoding with a cache uses the einsum path")
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, h, d = q.shape
    seg = key_mask.astype(jnp.int32)

    def run(q, k, v, seg):
        kernel = _splash_kernel(t, q.shape[2], window, interpret)
        qh = jnp.swapaxes(q * jnp.asarray(scale, q.dtype), 1, 2)          # [B, H, T, D]
        kh, vh = jnp.swapaxes(k, 1, 2).astype(q.dtype), jnp.swapaxes(v, 1, 2).astype(q.dtype)
        out = jax.vmap(kernel)(qh, kh, vh, segment_ids=sk.SegmentIds(q=seg, kv=seg))
        return jnp.swapaxes(out, 1, 2)

    if mesh is None:
        return run(q, k, v, seg)
    from jax.sharding import PartitionSpec as P

    batch = tuple(a for a in ("data", "fsdp") if a in mesh.shape)
    tensor = mesh.shape.get("tensor", 1)
    heads = "tensor" if tensor > 1 and h % tensor == 0 and k.shape[2] % tensor == 0 else None
    spec = P(batch, None, heads, None)
    return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, P(batch, None)),
                         out_specs=spec, check_vma=False)(q, k, v, seg)


def attend(q, k, v, key_mask, q_slots, *, window: int | None, scale: float, impl: str,
           self_keys: bool, mesh=None) -> jax.Array:
    """Attention output [B, T, H, D] with the implementation `impl` (resolved, not "auto").

    `self_keys`: the keys are exactly this call's tokens (S == T, q_slots == arange(T)), as in
    training and prefill; kernels that need it (splash) fall back to nothing else, so decoding
    with a cache always takes the einsum path.
    """
    if impl == "einsum" or not self_keys:
        return einsum_attention(q, k, v, key_mask, q_slots, window=window, scale=scale)
    if impl == "xla":
        return xla_attention(q, k, v, key_mask, q_slots, window=window, scale=scale, self_keys=True)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, key_mask, q_slots, window=window, scale=scale,
                               self_keys=True)
    if impl == "splash":
        return splash_attention(q, k, v, key_mask, q_slots, window=window, scale=scale,
                                self_keys=True, mesh=mesh)
    raise ValueError(f"attention implementation {impl!r} is not resolved; "
                     f"known: {', '.join(IMPLEMENTATIONS)}")
