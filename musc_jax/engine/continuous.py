"""Continuous batching: a fixed set of decode slots, refilled the moment a row ends.

The host drives three jitted programs over one device state (`Slots`, donated on every call so
the cache is updated in place):

* `prefill`: a group of new rows (one per free slot) runs its prompt through the model in chunks
  of at most `prefill_chunk` tokens, each chunk attending only to the prompt so far; the last
  chunk samples the row's first token and makes the slot live. A large group of widely spread
  prompt lengths is split into calls of similar lengths (`buckets.prefill_groups`), so less
  padding is computed.
* `decode`: a `lax.while_loop` of decode steps over all slots. It stops as soon as a row ends
  while prompts are waiting (so no step ever decodes a finished row: its slot is refilled
  first), or when half the slots are idle and no prompt waits.
* `resize`: once no prompt waits, packs the live rows into fewer slots (so the tail does not
  decode idle slots either). A gather of the cache per resize, never per step.

The cache length L is fixed for the whole call (the length bucket of the longest prompt plus
its budget) and a decode step reads the cache only up to its longest live row, so the shapes
depend on (slots, L) and the prefill group bucket only: refilling slots compiles nothing new,
and packing compiles one decode program per slot bucket, once per process (`TRACE_COUNTS`).
On one CPU device in float32 the decode step runs on custom kernels (`cpu_kernels`): attention
that reads each slot's cache only up to its own length, and matmuls over weights packed once per
model (`decode_weights`).
Sampling: row r draws token i from fold_in(fold_in(key(seed), r), i), exactly as the static
engine, whatever slot it runs in.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import weakref
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from musc_jax.engine import cpu_kernels
from musc_jax.engine.buckets import bucket_batch, bucket_length, prefill_bucket, prefill_groups
from musc_jax.engine.counters import TRACE_COUNTS
from musc_jax.engine.sampling import SamplingMode, is_stop, sample
from musc_jax.engine.slot_cache import (DecodeWeights, SlotCache, init_slot_cache,
                                        pack_decode_weights, packed_logits, slot_forward)

MIN_CACHE_BUCKET = 64
PREFILL_CHUNK = 512
DEFAULT_MAX_SLOTS = 64
class Slots(NamedTuple):
    """Device state of the slots ([N] per slot; out [N, M] the tokens of the slot's row)."""

    cache: SlotCache
    pos: jax.Array       # int32: tokens in the cache (the next write position)
    tok: jax.Array       # int32: last sampled token (the next input)
    count: jax.Array     # int32: tokens generated for the slot's row
    budget: jax.Array    # int32: the row's max_new_tokens
    active: jax.Array    # bool: the slot holds a row that has not ended
    keys: jax.Array      # uint32 [N, 2]: the row's PRNG key data
    out: jax.Array       # int32 [N, M]


@dataclasses.dataclass(frozen=True)
class _Static:
    mode: SamplingMode
    max_new: int         # M: the output buffer's width
    decode_kernel: bool = False   # decode step by the CPU kernels (cpu_kernels)


@dataclasses.dataclass
class EngineStats:
    """Work accounting of one call, in slot-steps (one slot through one decode step).

    useful: steps that produced a token of a live row; finished: steps spent decoding a row
    after it ended (0 by construction); idle: steps of slots holding no row (the tail, when
    fewer rows than slots remain and packing into a smaller slot bucket is not possible).
    """

    useful: int = 0
    finished: int = 0
    idle: int = 0
    segments: int = 0
    prefill_calls: int = 0
    resizes: int = 0

    @property
    def finished_fraction(self) -> float:
        total = self.useful + self.finished + self.idle
        return self.finished / total if total else 0.0

    @property
    def idle_fraction(self) -> float:
        total = self.useful + self.finished + self.idle
        return self.idle / total if total else 0.0


# ----------------------------------------------------------------------------- device programs

def _constrain(state: Slots, shardings) -> Slots:
    return state if shardings is None else jax.lax.with_sharding_constraint(state, shardings)


def _prefill(graphdef, params, state: Slots, ids, slots, lengths, rows, budgets, h_last, seed,
             stop_ids, pad, temperature, top_k, top_p, *, start: int, last: bool, st: _Static,
             shardings):
    """One prompt chunk ids [R, C] (right-padded; starts at cache position `start`) for rows in
    `slots` [R] (padding rows: slot >= N). h_last [R, E] carries each row's hidden state at its
    last prompt token across chunks; the last chunk samples token 0 and makes the slots live."""
    TRACE_COUNTS["engine_prefill"] += 1
    model = nnx.merge(graphdef, params)
    r, c = ids.shape
    h, cache = slot_forward(model, ids, slots, jnp.full((r,), start, jnp.int32), state.cache,
                            whole=False, kv_len=start + c)
    idx = lengths - 1 - start
    here = (idx >= 0) & (idx < c)
    h_here = jnp.take_along_axis(h, jnp.clip(idx, 0, c - 1)[:, None, None], axis=1)[:, 0]
    h_last = jnp.where(here[:, None], h_here, h_last)
    state = state._replace(cache=cache)
    if last:
        base = jax.random.key(seed)
        keys = jax.vmap(lambda row: jax.random.fold_in(base, row))(rows)
        tok = sample(model.logits(h_last), keys, 0, temperature, top_k, top_p, st.mode)
        keys = jax.random.key_data(keys)
        live = ~is_stop(tok, stop_ids) & (budgets > 1)
        out = jnp.full((r, st.max_new), pad, jnp.int32).at[:, 0].set(tok)
        put = lambda a, v: a.at[slots].set(v, mode="drop")  # noqa: E731
        state = state._replace(
            pos=put(state.pos, lengths), tok=put(state.tok, jnp.where(live, tok, 0)),
            count=put(state.count, jnp.ones_like(lengths)), budget=put(state.budget, budgets),
            active=put(state.active, live), keys=put(state.keys, keys), out=put(state.out, out))
    return _constrain(state, shardings), h_last


def _decode(graphdef, params, packed: DecodeWeights | None, state: Slots, stop_ids, pad,
            temperature, top_k, top_p, limit, stop_at, *, st: _Static, shardings):
    """Decode steps over all slots until `limit` steps, or until no more than `stop_at` slots
    are live (the host then refills or packs them). `packed`: the weights for the CPU kernels
    (with `st.decode_kernel`), else None. Returns (state, steps, live-slot steps)."""
    TRACE_COUNTS["engine_decode"] += 1
    model = nnx.merge(graphdef, params)
    n, length = state.pos.shape[0], state.cache.keys[0].shape[2]
    all_slots = jnp.arange(n, dtype=jnp.int32)

    def cond(carry):
        s, i, _ = carry
        return (i < limit) & (jnp.sum(s.active.astype(jnp.int32)) > stop_at)

    def body(carry):
        s, i, useful = carry
        # idle slots write at position L: dropped, their cache stays untouched
        wpos = jnp.where(s.active, s.pos, length)
        h, cache = slot_forward(model, s.tok[:, None], all_slots, wpos, s.cache, whole=True,
                                decode_kernel=st.decode_kernel, packed=packed)
        logits = (model.logits(h[:, 0]) if packed is None
                  else packed_logits(h[:, 0], packed, model.config.vocab_size))
        nxt = sample(logits, jax.random.wrap_key_data(s.keys), s.count, temperature, top_k,
                     top_p, st.mode)
        col = jnp.where(s.active, s.count, st.max_new)               # idle: dropped
        out = s.out.at[all_slots, col].set(nxt, mode="drop")
        step = s.active.astype(jnp.int32)
        count = s.count + step
        ended = s.active & (is_stop(nxt, stop_ids) | (count >= s.budget))
        active = s.active & ~ended
        s = s._replace(cache=cache, pos=s.pos + step, tok=jnp.where(active, nxt, 0), count=count,
                       active=active, out=out)
        return _constrain(s, shardings), i + 1, useful + jnp.sum(step)

    state, steps, useful = jax.lax.while_loop(cond, body, (state, jnp.int32(0), jnp.int32(0)))
    return state, steps, useful


def _resize(state: Slots, order, *, shardings):
    """The state with slots taken in `order` [N'] (cache included)."""
    TRACE_COUNTS["engine_resize"] += 1
    return _constrain(jax.tree.map(lambda a: a[order], state), shardings)


_JIT: dict[Any, Any] = {}


def _jitted(kind: str, *key, make):
    fn = _JIT.get((kind, *key))
    if fn is None:
        fn = _JIT[(kind, *key)] = make()
    return fn


# ----------------------------------------------------------------------------- host scheduler

def _state_shardings(mesh: Mesh | None, slots: int, model) -> Slots | None:
    """Slots over the mesh's batch axes, kv heads over tensor; None without a mesh."""
    if mesh is None:
        return None
    from musc_jax.sharding import logical_to_spec
    c = model.config
    kv = NamedSharding(mesh, logical_to_spec(("batch", "kv_heads", "length", "head_dim"),
                                             (slots, c.num_kv_heads, 1, c.head_dim), mesh))
    one = NamedSharding(mesh, logical_to_spec(("batch",), (slots,), mesh))
    two = NamedSharding(mesh, logical_to_spec(("batch", None), (slots, 1), mesh))
    layers = (kv,) * c.num_layers
    return Slots(SlotCache(layers, layers), one, one, one, one, one, two, two)


def _slot_count(rows: int, max_slots: int, multiple: int) -> int:
    """Power-of-two slots (times the mesh batch): rounded up when that leaves at most a quarter
    idle, else down (the rows beyond wait for a slot), and at most max_slots (rounded up)."""
    up = bucket_batch(min(rows, max_slots), multiple)
    down = bucket_batch(max(up // 2, 1), multiple)
    return up if 4 * min(rows, max_slots) >= 3 * up or down == up else down


def _empty_state(model, slots: int, length: int, max_new: int, shardings) -> Slots:
    def zeros():  # distinct buffers: the state is donated, and a buffer is donated once
        return jnp.zeros((slots,), jnp.int32)

    state = Slots(cache=init_slot_cache(model.config, slots, length, model.dtype), pos=zeros(),
                  tok=zeros(), count=zeros(), budget=zeros(), active=jnp.zeros((slots,), bool),
                  keys=jax.random.key_data(jax.random.split(jax.random.key(0), slots)),
                  out=jnp.zeros((slots, max_new), jnp.int32))
    return state if shardings is None else jax.device_put(state, shardings)


def _fetch(*arrays) -> list[np.ndarray]:
    """Host copies; arrays spanning other processes' devices are all-gathered first."""
    out = []
    for a in arrays:
        if getattr(a, "is_fully_addressable", True):
            out.append(np.asarray(a))
        else:
            from jax.experimental import multihost_utils
            out.append(np.asarray(multihost_utils.process_allgather(a, tiled=True)))
    return out


def generate_continuous(model, rows: Sequence[Sequence[int]], budgets: Sequence[int], *,
                        seed: int, stop_ids: np.ndarray, pad: int, temperature: float,
                        top_k: int, top_p: float, mode: SamplingMode, mesh: Mesh | None = None,
                        max_slots: int = DEFAULT_MAX_SLOTS, prefill_chunk: int = PREFILL_CHUNK,
                        stats: EngineStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """tokens [len(rows), max(budgets)] (pad after the end) and lengths [len(rows)]."""
    stats = stats if stats is not None else EngineStats()
    multiple = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
    n = _slot_count(len(rows), max_slots, multiple)
    max_new = int(max(budgets))
    st = _Static(mode, max_new, decode_kernel=use_decode_kernel(model, mesh))
    graphdef, params = nnx.split(model)
    e = model.config.hidden_size
    scalars = (np.asarray(stop_ids, np.int32), np.int32(pad), np.float32(temperature),
               np.int32(top_k), np.float32(top_p))
    packed = decode_weights(graphdef, params) if st.decode_kernel else None

    def length_bucket(need: int) -> int:
        return bucket_length(need, minimum=MIN_CACHE_BUCKET)

    # one cache length for the call: the longest row (prompt + budget) fits, so L never changes
    length = length_bucket(max(len(p) + int(b) for p, b in zip(rows, budgets)))
    shardings = _state_shardings(mesh, n, model)
    state = _empty_state(model, n, length, max_new, shardings)
    tokens = np.full((len(rows), max_new), pad, np.int32)
    lengths = np.zeros((len(rows),), np.int32)
    slot_row = np.full((n,), -1)             # host view: which row each slot holds
    pos = np.zeros((n,), np.int64)
    queue = collections.deque(range(len(rows)))

    def resize(order: np.ndarray):
        nonlocal state, n, shardings, slot_row, pos
        new_n = len(order)
        new_shardings = _state_shardings(mesh, new_n, model)
        fn = _jitted("resize", n, length, new_n, mesh, make=lambda: jax.jit(
            functools.partial(_resize, shardings=new_shardings)))
        state = fn(state, np.asarray(order, np.int32))
        n, shardings = new_n, new_shardings
        slot_row, pos = slot_row[order], pos[order]
        stats.resizes += 1

    def collect():
        """Copy the rows that ended out of their slots; free the slots."""
        active, count, out, p = _fetch(state.active, state.count, state.out, state.pos)
        pos[:] = p
        for s in np.flatnonzero((slot_row >= 0) & ~active):
            tokens[slot_row[s]] = out[s]
            lengths[slot_row[s]] = count[s]
            slot_row[s] = -1

    def prefill(group: np.ndarray, where: np.ndarray):
        """Prompts of `group` (row indices) into slots `where`, in chunks."""
        nonlocal state
        total = prefill_bucket(max(len(rows[g]) for g in group))
        chunk = min(total, prefill_chunk)
        total = -(-total // chunk) * chunk
        r = bucket_batch(len(group))
        slots = np.full((r,), n, np.int32)               # padding rows: slot n, writes dropped
        slots[: len(group)] = where
        ids = np.zeros((r, total), np.int32)
        lens = np.ones((r,), np.int32)
        row_ids = np.zeros((r,), np.int32)
        bud = np.ones((r,), np.int32)
        for j, g in enumerate(group):
            ids[j, : len(rows[g])] = rows[g]
            lens[j], row_ids[j], bud[j] = len(rows[g]), g, budgets[g]
        h_last = jnp.zeros((r, e), model.dtype)
        for start in range(0, total, chunk):
            last = start + chunk == total
            fn = _jitted("prefill", graphdef, st, n, length, r, chunk, start, last, mesh,
                         make=lambda start=start, last=last: jax.jit(functools.partial(
                             _prefill, graphdef, start=start, last=last, st=st,
                             shardings=shardings), donate_argnums=1))
            state, h_last = fn(params, state, ids[:, start:start + chunk], slots, lens,
                               row_ids, bud, h_last, np.uint32(seed % 2**32), *scalars)
            stats.prefill_calls += 1

    while queue or (slot_row >= 0).any():
        free = np.flatnonzero(slot_row < 0)
        if queue and len(free):
            group = np.array([queue.popleft() for _ in range(min(len(free), len(queue)))])
            taken = free[: len(group)]
            # rows of similar prompt lengths prefill together: less padding to compute
            for part in prefill_groups([len(rows[g]) for g in group]):
                prefill(group[part], taken[part])
            slot_row[taken] = group
            collect()
            continue                                     # rows may have ended at token 0
        live = slot_row >= 0
        if not queue and 0 < live.sum() <= n // 2 and n > multiple:
            # pack the live rows into the smallest slot bucket (the rest of `order` is idle)
            small = bucket_batch(int(live.sum()), multiple)
            order = np.concatenate([np.flatnonzero(live), np.flatnonzero(~live)])[:small]
            resize(order)
            continue
        limit = length - int(pos[slot_row >= 0].max())
        fn = _jitted("decode", graphdef, st, n, length, mesh, make=lambda: jax.jit(
            functools.partial(_decode, graphdef, st=st, shardings=shardings), donate_argnums=2))
        # stop when a row ends while prompts wait (refill), or when half the slots are idle
        # and the live rows fit a smaller slot bucket (pack)
        n_live = int(live.sum())
        stop_at = n_live - 1 if queue else (n // 2 if n > multiple else 0)
        state, steps, useful = fn(params, packed, state, *scalars, np.int32(limit),
                                  np.int32(stop_at))
        steps, useful = (int(x) for x in _fetch(steps, useful))
        stats.segments += 1
        stats.useful += useful
        stats.idle += steps * n - useful
        collect()
    return tokens, lengths


# graphdef -> (weak references to the parameter arrays, their packed weights): a model that
# generates again with the same arrays (pair building, evaluation) packs once
_PACKED: dict[Any, tuple[list, DecodeWeights]] = {}


def _pack_program(graphdef):
    """`pack_decode_weights` jitted, one program per model structure."""
    return _jitted("pack", graphdef, make=lambda: jax.jit(
        lambda p: pack_decode_weights(nnx.merge(graphdef, p))))


def decode_weights(graphdef, params) -> DecodeWeights:
    """`pack_decode_weights` of the model, reused while the parameters are the same arrays."""
    leaves = jax.tree.leaves(params)
    cached = _PACKED.get(graphdef)
    if cached is not None and len(cached[0]) == len(leaves) and all(
            ref() is leaf for ref, leaf in zip(cached[0], leaves)):
        return cached[1]
    _PACKED.pop(graphdef, None)                 # free the old copy before packing a new one
    packed = _pack_program(graphdef)(params)
    refs = [weakref.ref(leaf) for leaf in leaves]
    _PACKED[graphdef] = (refs, packed)
    # the packed copy lives no longer than the parameters it was packed from
    weakref.finalize(leaves[0], _forget_packed, graphdef, refs)
    return packed


def _forget_packed(graphdef, refs) -> None:
    if graphdef in _PACKED and _PACKED[graphdef][0] is refs:
        del _PACKED[graphdef]


def use_decode_kernel(model, mesh: Mesh | None) -> bool:
    """The decode step by the CPU kernels: on CPU, float32, one device (no mesh: XLA cannot
    partition a custom call, so on a mesh it would gather the whole cache to every device)."""
    return mesh is None and cpu_kernels.decode_kernels_available(model.dtype)


def decode_program_text(model, slots: int, length: int, max_new: int,
                        mode: SamplingMode, decode_kernel: bool = False) -> str:
    """The optimized HLO of the decode segment for `slots` x `length` (to inspect its copies);
    `decode_kernel`: with the CPU kernels."""
    graphdef, params = nnx.split(model)
    state = jax.eval_shape(lambda: _empty_state(model, slots, length, max_new, None))
    fn = jax.jit(functools.partial(_decode, graphdef,
                                   st=_Static(mode, max_new, decode_kernel=decode_kernel),
                                   shardings=None), donate_argnums=2)
    scalars = (np.zeros((4,), np.int32), np.int32(0), np.float32(1), np.int32(0), np.float32(1),
               np.int32(1), np.int32(0))
    packed = jax.eval_shape(_pack_program(graphdef), params) if decode_kernel else None
    return fn.lower(params, packed, state, *scalars).compile().as_text()
