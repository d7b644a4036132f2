"""Teacher-forced scoring: per-token log-probs and the MuSC contrast statistics (DESIGN 5.2).

Convention for every [B, T] output: index t holds a value about token ids[t], computed from the
distribution at position t-1 (the one that predicts it); index 0 is 0. Callers multiply by a
response mask (1 on response tokens, 0 on prompt and padding).

Pure functions work on arrays (`token_logps`, `contrast_statistic`, `contrast_stats_from_logits`,
`contrast_weights`); `response_token_logps` and `compute_contrast_stats` take the model and are
traceable (usable inside a train step); `score` and `contrast_stats` are their jitted wrappers,
compiled once per (model graph, shapes). The model-level functions project hidden states to the
vocabulary in time chunks, so at most one [B, chunk, V] log-softmax per conditioning is alive
(without a mesh, logits under SMALL_LOGITS_BYTES are projected in one piece instead). The LM
head is gathered once, before the chunk loop; on a mesh the loop runs per device (shard_map) so
its gradient is reduced once, and logits stay vocabulary-sharded when tensor > 1.

A model whose parameters live on a mesh (e.g. a policy loaded for pair building) scores its
batches data-parallel inside `split_rows(model)`: rows are split over the mesh's replicas
(`data` x `fsdp`) instead of every replica computing the whole batch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from musc_jax.models.llama import project_logits

KINDS = ("kl", "bikl", "prob_diff")
DEFAULT_CHUNK = 128
# Without a mesh, float32 logits up to this size are projected in one piece and kept for the
# backward pass (no chunk loop, no recomputation of the LM head): faster on CPU, where the
# benchmark-sized step holds 134 MB of them.
SMALL_LOGITS_BYTES = 256 * 2**20
W_MAX = 2.0


# ----------------------------------------------------------------------------- pure functions

def token_logps(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """[B, T] log p(ids[t] | ids[<t]) from logits[t-1] (float32); index 0 is 0."""
    logits = logits.astype(jnp.float32)
    prev = logits[:, :-1]
    target = jnp.take_along_axis(prev, ids[:, 1:, None].astype(jnp.int32), axis=-1)[..., 0]
    lp = target - jax.nn.logsumexp(prev, axis=-1)
    return jnp.concatenate([jnp.zeros_like(lp[:, :1]), lp], axis=1)


def contrast_statistic(logp: jax.Array, logq: jax.Array, targets: jax.Array, kind: str) -> jax.Array:
    """Per-position statistic from log-softmaxes logp = log P_t, logq = log Q_t ([..., V]).

    kl: KL(Q||P); bikl: KL(Q||P) + KL(P||Q); prob_diff: |log P_t(y_t) - log Q_t(y_t)|.
    """
    if kind == "kl":
        return jnp.sum(jnp.exp(logq) * (logq - logp), axis=-1)
    if kind == "bikl":
        return jnp.sum((jnp.exp(logq) - jnp.exp(logp)) * (logq - logp), axis=-1)
    if kind == "prob_diff":
        t = targets[..., None].astype(jnp.int32)
        return jnp.abs(jnp.take_along_axis(logp, t, -1) - jnp.take_along_axis(logq, t, -1))[..., 0]
    raise ValueError(f"unknown contrast statistic {kind!r}; known: {', '.join(KINDS)}")


def _alignment(response_mask_x: jax.Array, response_mask_alt: jax.Array):
    """For x positions 1..Tx-1: the alt position predicting the same response token, and validity.

    The k-th response token of x is matched with the k-th response token of alt. Returns
    (alt_pred [B, Tx-1] the alt position whose distribution predicts it, valid [B, Tx-1]).
    """
    rx = response_mask_x.astype(bool)
    ra = response_mask_alt.astype(bool)
    ta = ra.shape[1]
    rank = jnp.cumsum(rx, axis=1) - 1                                    # [B, Tx]
    count_alt = ra.sum(axis=1, keepdims=True)
    ar = jnp.arange(ta)
    order = jnp.argsort(jnp.where(ra, ar, ta + ar), axis=1)               # response slots first
    alt_pos = jnp.take_along_axis(order, jnp.clip(rank, 0, ta - 1), axis=1)
    valid = rx & (rank < count_alt) & (alt_pos >= 1)
    valid = valid.at[:, 0].set(False)
    return jnp.maximum(alt_pos - 1, 0)[:, 1:], valid[:, 1:]


def contrast_stats_from_logits(logits_x: jax.Array, logits_alt: jax.Array, ids_x: jax.Array,
                               response_mask_x: jax.Array, response_mask_alt: jax.Array,
                               kind: str) -> jax.Array:
    """Contrast statistic [B, Tx] from full logits under x ([B,Tx,V]) and x' ([B,Ta,V])."""
    alt_pred, valid = _alignment(response_mask_x, response_mask_alt)
    lp = jax.nn.log_softmax(logits_x[:, :-1].astype(jnp.float32), axis=-1)
    la = jnp.take_along_axis(logits_alt, alt_pred[..., None], axis=1).astype(jnp.float32)
    lq = jax.nn.log_softmax(la, axis=-1)
    s = contrast_statistic(lp, lq, ids_x[:, 1:], kind) * valid
    return jnp.concatenate([jnp.zeros_like(s[:, :1]), s], axis=1)


def contrast_weights(stats: jax.Array, response_mask: jax.Array, w_max: float = W_MAX) -> jax.Array:
    """MuSC token weights w_t = clip(s_t / mean_over_response(s), 0, w_max); 0 off the response.

    A row whose statistics are all zero (x and x' predict alike) gets weight 1 on every response
    token (plain DPO) instead of 0/0.
    """
    m = response_mask.astype(jnp.float32)
    s = stats.astype(jnp.float32) * m
    mean = s.sum(-1, keepdims=True) / jnp.maximum(m.sum(-1, keepdims=True), 1.0)
    w = jnp.where(mean > 0, jnp.clip(s / jnp.where(mean > 0, mean, 1.0), 0.0, w_max), 1.0)
    return w * m


# ----------------------------------------------------------------------------- model-level

def _time_chunks(fn: Callable, chunk: int, *arrays: jax.Array) -> jax.Array:
    """Apply fn to [B, c, ...] time chunks of arrays ([B, T, ...]) and concatenate -> [B, T]."""
    t = arrays[0].shape[1]
    c = max(1, min(chunk, t))
    n = -(-t // c)
    padded = []
    for a in arrays:
        pad = [(0, 0)] * a.ndim
        pad[1] = (0, n * c - t)
        a = jnp.pad(a, pad)
        a = a.reshape(a.shape[0], n, c, *a.shape[2:])
        padded.append(jnp.moveaxis(a, 1, 0))
    out = jax.lax.map(lambda xs: fn(*xs), tuple(padded))                  # [n, B, c]
    return jnp.moveaxis(out, 0, 1).reshape(out.shape[1], n * c)[:, :t]


def _mesh_of(model):
    sharding = getattr(model, "activation_sharding", None)
    return None if sharding is None else sharding.mesh


def _head_weight(model) -> jax.Array:
    """The LM head [E, V] in the compute dtype, gathered over FSDP once, before the chunk loop.

    Inside the loop XLA would otherwise all-gather the FSDP-sharded weight (and reduce-scatter
    its gradient) once per chunk. Its vocabulary axis stays sharded over `tensor`. (The
    teacher-forced log-probs gather inside their shard_map instead: `_chunked_target_logps`.)
    """
    w = model.lm_head_weight()
    mesh = _mesh_of(model)
    if mesh is None:
        return w
    return jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P(None, _vocab_axis(mesh, w))))


def _vocab_axis(mesh, w: jax.Array) -> str | None:
    """"tensor" when the head's vocabulary axis [E, V] is sharded over it, else None."""
    tensor = mesh.shape.get("tensor", 1)
    return "tensor" if tensor > 1 and w.shape[1] % tensor == 0 else None


def _chunk_logits(model, hc: jax.Array, w: jax.Array) -> jax.Array:
    """float32 logits [B, c, V] of a chunk of hidden states; vocabulary-sharded when tensor > 1."""
    logits = project_logits(hc, w)
    mesh = _mesh_of(model)
    if mesh is not None and _vocab_axis(mesh, w):
        logits = jax.lax.with_sharding_constraint(
            logits, NamedSharding(mesh, P(("data", "fsdp"), None, "tensor")))
    return logits


def _target_logps(hc: jax.Array, tc: jax.Array, w: jax.Array, vocab_axis: str | None) -> jax.Array:
    """log softmax(hc @ w)[tc] [b, c] for one chunk; with `vocab_axis` (inside shard_map) w holds
    this device's slice of the vocabulary and the softmax is completed across that axis."""
    logits = project_logits(hc, w)
    if vocab_axis is None:
        target = jnp.take_along_axis(logits, tc[..., None], axis=-1)[..., 0]
        return target - jax.nn.logsumexp(logits, axis=-1)
    v = logits.shape[-1]
    local = tc - jax.lax.axis_index(vocab_axis) * v
    here = (local >= 0) & (local < v)
    target = jnp.take_along_axis(logits, jnp.clip(local, 0, v - 1)[..., None], axis=-1)[..., 0]
    target = jax.lax.psum(jnp.where(here, target, 0.0), vocab_axis)
    m = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=-1)), vocab_axis)
    total = jax.lax.psum(jnp.sum(jnp.exp(logits - m[..., None]), axis=-1), vocab_axis)
    return target - (jnp.log(total) + m)


def _chunked_target_logps(model, h, targets, chunk: int) -> jax.Array:
    """[B, T'] target log-probs of hidden states h [B, T', E], projected `chunk` steps at a time.

    On a mesh the chunk loop runs inside shard_map: each device all-gathers its FSDP shard of
    the LM head once, before the loop, so the head's gradient is summed locally over chunks and
    then reduce-scattered back to the FSDP shards once (the transpose of that all-gather), not
    all-reduced to a full copy on every device (GSPMD reduced the full [E, V] gradient in every
    chunk). With tensor > 1 the logits stay sharded over the vocabulary.
    """
    mesh = _mesh_of(model)
    batch = ("data", "fsdp")
    rows = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    if mesh is None or h.shape[0] % rows:
        w = _head_weight(model)
        if h.shape[0] * h.shape[1] * w.shape[1] * 4 <= SMALL_LOGITS_BYTES:
            # Small enough to keep: one projection, nothing recomputed in the backward pass.
            return _target_logps(h, targets, w, None)
        return _time_chunks(jax.checkpoint(lambda hc, tc: _target_logps(hc, tc, w, None)),
                            chunk, h, targets)
    w = model.lm_head_weight()
    vocab_axis = _vocab_axis(mesh, w)
    fsdp = mesh.shape["fsdp"]
    embed_axis = "fsdp" if fsdp > 1 and w.shape[0] % fsdp == 0 else None

    def local(h, t, w):
        if embed_axis:
            w = jax.lax.all_gather(w, embed_axis, axis=0, tiled=True)
        # Recomputed in the backward pass: no [b, chunk, V] logits are kept per chunk.
        one = jax.checkpoint(lambda hc, tc: _target_logps(hc, tc, w, vocab_axis))
        return _time_chunks(one, chunk, h, t)

    return jax.shard_map(local, mesh=mesh,
                         in_specs=(P(batch, None, None), P(batch, None), P(embed_axis, vocab_axis)),
                         out_specs=P(batch, None), check_vma=False)(h, targets, w)


def response_token_logps(model, ids, attention_mask, response_mask, chunk: int = DEFAULT_CHUNK,
                         window: int | None = None):
    """Teacher-forced log p(ids[t] | ids[<t]) [B, T] (float32), zero off the response. Traceable.

    `window` (static): project only the last `window` hidden states to the vocabulary (the
    tokens ids[T - window:]); the caller guarantees that no response token lies before them
    (`musc_jax.data.batching.logits_window`). Prompt positions then cost no LM-head FLOPs; the
    values are those of the full projection. None = every position.
    """
    ids = jnp.asarray(ids, jnp.int32)
    h, _ = model.hidden_states(ids, jnp.asarray(attention_mask))
    t = ids.shape[1]
    skip = 0 if window is None or window >= t - 1 else t - 1 - window
    lp = _chunked_target_logps(model, h[:, skip:-1], ids[:, skip + 1:], chunk)
    lp = jnp.pad(lp, ((0, 0), (skip + 1, 0)))
    return lp * jnp.asarray(response_mask).astype(lp.dtype)


def compute_contrast_stats(model, ids_x, mask_x, ids_alt, mask_alt, response_mask_x,
                           response_mask_alt, kind: str, chunk: int = DEFAULT_CHUNK):
    """Contrast statistic [B, Tx] between the response under x and under x'. Traceable.

    The same response follows prompt x in ids_x and prompt x' in ids_alt (at other offsets);
    the k-th response token of each are matched. Output index t is the statistic for the response
    token at position t of ids_x (its distributions come from the positions before it), 0 elsewhere.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown contrast statistic {kind!r}; known: {', '.join(KINDS)}")
    ids_x = jnp.asarray(ids_x, jnp.int32)
    hx, _ = model.hidden_states(ids_x, jnp.asarray(mask_x))
    ha, _ = model.hidden_states(jnp.asarray(ids_alt, jnp.int32), jnp.asarray(mask_alt))
    alt_pred, valid = _alignment(jnp.asarray(response_mask_x), jnp.asarray(response_mask_alt))
    ha = jnp.take_along_axis(ha, alt_pred[..., None], axis=1)            # [B, Tx-1, E]
    w = _head_weight(model)

    def one(hxc, hac, tc):
        lp = jax.nn.log_softmax(_chunk_logits(model, hxc, w), axis=-1)
        lq = jax.nn.log_softmax(_chunk_logits(model, hac, w), axis=-1)
        return contrast_statistic(lp, lq, tc, kind)

    s = _time_chunks(one, chunk, hx[:, :-1], ha, ids_x[:, 1:]) * valid
    return jnp.concatenate([jnp.zeros_like(s[:, :1]), s], axis=1)


def param_mesh(model):
    """The mesh the model's parameters are placed on (NamedSharding), or None."""
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding):
            return sharding.mesh
        return None
    return None


def replica_rows(mesh) -> int:
    """How many replicas split a batch's rows on `mesh` (data x fsdp; 1 without a mesh)."""
    return 1 if mesh is None else mesh.shape.get("data", 1) * mesh.shape.get("fsdp", 1)


@contextlib.contextmanager
def split_rows(model) -> Iterator[Callable[[Mapping[str, np.ndarray]], dict[str, jax.Array]]]:
    """Score data-parallel on the mesh of the model's parameters, if it has one.

    Inside the block the model's activations are constrained to rows split over ("data", "fsdp")
    (restored on exit: a policy's generation keeps its own layout), and the yielded `place(batch)`
    puts a batch of numpy arrays ([B, ...], B a multiple of `replica_rows`) row-split on the mesh.
    Without it each replica computes the whole batch: the same values, N times the work.
    Without a mesh `place` is `jnp.asarray` and nothing changes.
    """
    mesh = param_mesh(model)
    if mesh is None or replica_rows(mesh) == 1 or model.activation_sharding is not None:
        # No mesh, one replica, or already split (a trainer's model): nothing to do.
        yield lambda batch: {k: jnp.asarray(v) for k, v in batch.items()}
        return
    rows = NamedSharding(mesh, P(("data", "fsdp")))

    def place(batch):
        out = {}
        for k, v in batch.items():
            if v.shape[0] % replica_rows(mesh):
                raise ValueError(f"batch[{k!r}] has {v.shape[0]} rows: a multiple of the mesh's "
                                 f"{replica_rows(mesh)} replicas is needed to split them")
            out[k] = jax.device_put(v, rows)
        return out

    model.activation_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    try:
        yield place
    finally:
        model.activation_sharding = None


_JIT_CACHE: dict[Any, Callable] = {}


def _jitted(name: str, impl: Callable, model, **static):
    graphdef, state = nnx.split(model)
    key = (name, graphdef, tuple(sorted(static.items())))
    fn = _JIT_CACHE.get(key)
    if fn is None:
        def run(state, *args):
            return impl(nnx.merge(graphdef, state), *args, **static)
        fn = _JIT_CACHE[key] = jax.jit(run)
    return fn, state


def score(model, ids, attention_mask, response_mask, chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """Jitted `response_token_logps`: [B, T] per-token log-probs, zero off the response."""
    fn, state = _jitted("score", response_token_logps, model, chunk=chunk)
    return fn(state, jnp.asarray(ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
              jnp.asarray(response_mask, jnp.float32))


def _check_same_response(ids_x, rx, ids_alt, ra) -> None:
    ids_x, rx, ids_alt, ra = (np.asarray(a) for a in (ids_x, rx, ids_alt, ra))
    for i in range(ids_x.shape[0]):
        yx, ya = ids_x[i][rx[i].astype(bool)], ids_alt[i][ra[i].astype(bool)]
        if yx.shape != ya.shape or not np.array_equal(yx, ya):
            raise ValueError(f"row {i}: the response tokens under x ({len(yx)} tokens) and under x' "
                             f"({len(ya)} tokens) differ; contrast statistics need the same response")


def contrast_stats(model, ids_x, mask_x, ids_alt, mask_alt, response_mask_x, response_mask_alt,
                   kind: str = "kl", chunk: int = DEFAULT_CHUNK) -> jax.Array:
    """Jitted `compute_contrast_stats`; checks that both sequences hold the same response."""
    if kind not in KINDS:
        raise ValueError(f"unknown contrast statistic {kind!r}; known: {', '.join(KINDS)}")
    if not any(isinstance(a, jax.core.Tracer) for a in (ids_x, ids_alt, response_mask_x,
                                                         response_mask_alt)):
        _check_same_response(ids_x, response_mask_x, ids_alt, response_mask_alt)
    fn, state = _jitted("contrast", compute_contrast_stats, model, kind=kind, chunk=chunk)
    return fn(state, jnp.asarray(ids_x, jnp.int32), jnp.asarray(mask_x, jnp.int32),
              jnp.asarray(ids_alt, jnp.int32), jnp.asarray(mask_alt, jnp.int32),
              jnp.asarray(response_mask_x, jnp.int32), jnp.asarray(response_mask_alt, jnp.int32))
