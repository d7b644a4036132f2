"""Token sampling shared by the engines: filters on float32 logits and the per-row sampler.

The filters are pure functions of logits [..., V] (`apply_temperature`, `top_k_filter`,
`top_p_filter`; removed tokens get -inf). `sample` draws one token per row with Gumbel-max from
the row's own key folded with the row's step, so a row's sample depends only on the seed, the
row's index and its step, never on the batch or slot it runs in.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from musc_jax.engine import cpu_kernels

_NEG_INF = -jnp.inf



def apply_temperature(logits: jax.Array, temperature) -> jax.Array:
    """logits / temperature (temperature > 0; use greedy decoding for temperature 0)."""
    return logits / jnp.asarray(temperature, logits.dtype)


def _sortable(x: jax.Array) -> jax.Array:
    """uint32 keys with the order of float32 `x` (-inf smallest, +inf largest)."""
    i = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.int32)
    i = i ^ ((i >> 31) & jnp.int32(0x7FFFFFFF))     # flip the magnitude bits of negatives
    return jax.lax.bitcast_convert_type(i, jnp.uint32) ^ jnp.uint32(0x80000000)


def _largest_threshold(keys: jax.Array, target, weights: jax.Array | None = None,
                       kernel: bool = False) -> jax.Array:
    """Per row of keys [..., V] the largest uint32 t with sum(weights[keys >= t]) >= target
    (weights None: the count of keys >= t), 0 when none reaches it. Returns [..., 1].

    The answer is always one of the row's keys, so `keys >= t` is an exact top-set, found
    without a sort: by bisection (32 exact steps over the row), or with `kernel` (2-D keys, CPU)
    by `cpu_kernels.largest_threshold` (a three-pass radix select; the sums in float64, so a
    top-p cut within float32 rounding of p may differ).
    """
    if kernel:
        return cpu_kernels.largest_threshold(keys, target, weights)
    if weights is None:
        def ok(keep):
            return jnp.sum(keep, -1, keepdims=True, dtype=jnp.int32) >= target
    else:
        def ok(keep):
            return jnp.sum(jnp.where(keep, weights, 0.0), -1, keepdims=True) >= target
    lo = jnp.zeros(keys.shape[:-1] + (1,), jnp.uint32)          # ok(lo) holds
    hi = jnp.max(keys, axis=-1, keepdims=True)                   # answer <= max key

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo + 1) // 2                            # upper mid, no overflow
        good = ok(keys >= mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid - 1)

    lo, _ = jax.lax.fori_loop(0, 32, body, (lo, hi))
    return lo


def top_k_filter(logits: jax.Array, k, *, kernel: bool = False) -> jax.Array:
    """Keep the k largest logits of each row (ties with the k-th are kept); the rest -> -inf.

    k <= 0 or k >= V keeps everything. `k` may be a traced integer. Exact, without a sort.
    `kernel`: the cut by the CPU kernel (logits [B, V] on one CPU device).
    """
    k = jnp.asarray(k, jnp.int32)
    keys = _sortable(logits)
    t = _largest_threshold(keys, k, kernel=kernel)
    keep = (keys >= t) | (k <= 0)
    return jnp.where(keep, logits, _NEG_INF)


def top_p_filter(logits: jax.Array, p, *, kernel: bool = False) -> jax.Array:
    """Nucleus filter: keep the smallest set of top tokens whose probability sums to >= p.

    Equivalently, a token is kept when the mass of the tokens ranked above it is < p, so the top
    token is always kept; tokens tied with the last kept one are kept too. p >= 1 keeps all.
    `p` may be a traced float. Works on logits already filtered (-inf entries have mass 0).
    The threshold is found on the logits' bit patterns (exact, no sort; `_largest_threshold`).
    `kernel`: the cut by the CPU kernel (logits [B, V] on one CPU device).
    """
    p = jnp.asarray(p, jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    keys = _sortable(logits)
    t = _largest_threshold(keys, p, probs, kernel=kernel)
    keep = (keys >= t) | (p >= 1.0)
    return jnp.where(keep, logits, _NEG_INF)


def filter_logits(logits: jax.Array, temperature=1.0, top_k=0, top_p=1.0, *,
                  use_top_k: bool = True, use_top_p: bool = True,
                  kernel: bool = False) -> jax.Array:
    """Temperature, then top-k, then top-p (on the top-k renormalised distribution)."""
    logits = apply_temperature(logits.astype(jnp.float32), temperature)
    if use_top_k:
        logits = top_k_filter(logits, top_k, kernel=kernel)
    if use_top_p:
        logits = top_p_filter(logits, top_p, kernel=kernel)
    return logits


def argmax(x: jax.Array) -> jax.Array:
    """argmax over the last axis (first index of the maximum) as two plain reductions.

    Same result as jnp.argmax for non-NaN input; XLA:CPU runs the fused (value, index) reduce
    of jnp.argmax several times slower than a max followed by a min.
    """
    m = jnp.max(x, axis=-1, keepdims=True)
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(x == m, iota, x.shape[-1]), axis=-1)


@dataclasses.dataclass(frozen=True)
class SamplingMode:
    """What is compiled in: greedy, or which filters run (their values are traced); `kernel`:
    the filters' cut and the Gumbel draw by the CPU kernels (`cpu_kernels.largest_threshold`,
    `cpu_kernels.gumbel_argmax`; one CPU device)."""

    greedy: bool
    use_top_k: bool
    use_top_p: bool
    kernel: bool = False


def sample(logits: jax.Array, keys: jax.Array, steps, temperature, top_k, top_p,
           mode: SamplingMode) -> jax.Array:
    """Next token [B] from float32 logits [B, V]; keys [B] (one per row); steps: int or [B]."""
    if mode.greedy:
        return argmax(logits)
    logits = filter_logits(logits, temperature, top_k, top_p, use_top_k=mode.use_top_k,
                           use_top_p=mode.use_top_p, kernel=mode.kernel)
    steps = jnp.broadcast_to(jnp.asarray(steps, jnp.uint32), keys.shape)
    step_keys = jax.vmap(jax.random.fold_in)(keys, steps)
    if mode.kernel and _kernel_draws_like_jax(step_keys):
        return cpu_kernels.gumbel_argmax(logits, jax.random.key_data(step_keys))
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, logits.shape[-1:], jnp.float32))(step_keys)
    return argmax(logits + gumbel)


def _kernel_draws_like_jax(keys: jax.Array) -> bool:
    """Whether `cpu_kernels.gumbel_argmax` draws the noise jax.random.gumbel would: threefry
    keys, partitionable counters, "low" dynamic range (jax's defaults)."""
    return (str(jax.random.key_impl(keys)) == "threefry2x32"
            and jax.config.jax_threefry_partitionable
            and not jax.config.jax_high_dynamic_range_gumbel)


def is_stop(tokens: jax.Array, stop_ids: jax.Array) -> jax.Array:
    """[B] bool: tokens [B] in stop_ids [E] (padded with -1, which matches no token)."""
    return jnp.any(tokens[:, None] == stop_ids[None, :], axis=-1)
