"""The trainer's data: read and tokenise the dataset, precompute the reference, feed the mesh.

`build_training_data(config, ...)` returns a `TrainingData` whose `next_train_batch()` gives a
batch already placed on the mesh (rows over ("data", "fsdp"); with gradient accumulation a
leading microbatch axis), and whose loader position is saved in checkpoints.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from musc_jax.data import pairs_io
from musc_jax.distributed import all_processes
from musc_jax.data.batching import (BatchingConfig, PairLoader, Tokenized, collate_pairs, logits_window,
                                    tokenize_pairs, tokenize_sft)
from musc_jax.errors import UserError
from musc_jax.scoring import response_token_logps

log = logging.getLogger(__name__)

# Keys the loader adds for bookkeeping that the step does not read.
_HOST_ONLY_KEYS = ("index", "has_alt", "logits_window")
REF_FIELDS = {"chosen": "ref_chosen_token_logps", "rejected": "ref_rejected_token_logps"}


@dataclass
class TrainingData:
    train_loader: PairLoader
    eval_tokenized: Tokenized | None
    total_steps: int
    mesh: Mesh
    grad_accum: int
    eval_batch_size: int

    @property
    def batch_sharding(self) -> NamedSharding:
        """A training batch's arrays: [accum, B, T] with grad_accum > 1, else [B, T]."""
        return _sharding(self.mesh, 2, self.grad_accum > 1)

    @property
    def eval_batch_sharding(self) -> NamedSharding:
        """An eval batch's arrays: [B, T] (grad_accum applies to training only)."""
        return _sharding(self.mesh, 2, False)

    def _place(self, batch: dict[str, np.ndarray], accum: int) -> dict[str, jax.Array]:
        out = {}
        for k, v in batch.items():
            if k in _HOST_ONLY_KEYS:
                continue
            if accum > 1:
                v = v.reshape(accum, v.shape[0] // accum, *v.shape[1:])
            global_shape = list(v.shape)
            axis = 1 if accum > 1 else 0
            global_shape[axis] *= jax.process_count()
            out[k] = jax.make_array_from_process_local_data(
                _sharding(self.mesh, v.ndim, accum > 1), v, tuple(global_shape))
        return out

    def next_train(self) -> tuple[dict[str, jax.Array], int | None]:
        """The next training batch (placed on the mesh) and its LM-head window (None = all
        positions; static for the step, the same on every process)."""
        host = next(self.train_loader)
        window = int(host.get("logits_window", 0)) or None
        return self._place(host, self.grad_accum), window

    def next_train_batch(self) -> dict[str, jax.Array]:
        return self.next_train()[0]

    def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        if self.eval_tokenized is None:
            return iter(())
        loader = PairLoader(self.eval_tokenized, self.eval_batch_size, shuffle=False,
                            process_index=jax.process_index(), process_count=jax.process_count(),
                            bucket=self.train_loader.bucket, max_length=self.train_loader.max_length,
                            max_buckets=self.train_loader.max_buckets,
                            num_epochs=1)
        return (self._place(b, 1) for b in loader)


def _sharding(mesh: Mesh, ndim: int, microbatched: bool) -> NamedSharding:
    rows = ("data", "fsdp")
    spec = (None, rows) if microbatched else (rows,)
    return NamedSharding(mesh, P(*spec, *([None] * (ndim - len(spec)))))


def batching_config(c: ConfigDict, alt: bool) -> BatchingConfig:
    return BatchingConfig(max_length=c.data.max_length, max_prompt_length=c.data.max_prompt_length,
                          truncation=c.data.truncation, alt_sequences=alt, bucket=c.data.bucket)


def read_and_tokenize(path: str, c: ConfigDict, tokenizer, alt: bool) -> Tokenized:
    """Rows of `path` validated (errors name file/row/field, or skips are counted) and tokenised."""
    on_error = "raise" if c.data.on_error == "error" else "skip"
    if c.objective == "sft":
        rows = pairs_io.read_sft(path, on_error=on_error)
        tok = tokenize_sft(rows, tokenizer, batching_config(c, False))
    else:
        rows = pairs_io.read_pairs(path, on_error=on_error)
        tok = tokenize_pairs(rows, tokenizer, batching_config(c, alt))
        # Which model wrote the stored reference log-probs (the pair builder's meta.model_hash):
        # precompute_reference uses them only when that is the trainer's reference model.
        tok.ref_model_hashes = {str((r.get("meta") or {}).get("model_hash") or "")
                                for r in rows.rows if r.get(REF_FIELDS["chosen"]) is not None}
    if rows.skipped or tok.skipped:
        log.warning("%s: %d rows read, %d malformed skipped %s, %d too long skipped", path,
                    rows.num_read, rows.num_skipped, dict(rows.skipped), sum(tok.skipped.values()))
    if not tok.examples:
        raise UserError(f"{path}: no usable rows ({rows.num_read} read)")
    return tok


def _check_fields(tok: Tokenized, c: ConfigDict, path: str) -> None:
    if c.objective != "preference":
        return
    fields = set(tok.examples[0].token_fields)
    if c.loss.a_tok and c.weights.source == "dataset":
        missing = {"chosen_weights", "rejected_weights"} - fields
        if missing:
            raise UserError(f"{path}: weights.source='dataset' with loss.a_tok={c.loss.a_tok}, but "
                            f"the rows have no {sorted(missing)}; build pairs with token weights "
                            "(musc_jax.pairs) or set weights.source='dynamic' or 'uniform'")


# ---- reference log-probs, computed once --------------------------------------------------------

def _cache_key(c: ConfigDict, tok: Tokenized) -> str:
    h = hashlib.sha256()
    model_dir = Path(c.model.path)
    h.update((model_dir / "config.json").read_bytes())
    for f in sorted(model_dir.glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(c.model.param_dtype.encode())
    h.update((c.model.compute_dtype or c.model.param_dtype).encode())
    for ex in tok.examples:
        for arr in (ex.prompt_ids, ex.chosen_ids, ex.rejected_ids):
            h.update(np.asarray(arr, np.int32).tobytes())
            h.update(b"|")
    return h.hexdigest()[:24]


def precompute_reference(graphdef, params, tok: Tokenized, c: ConfigDict, mesh: Mesh,
                         batch_size: int) -> None:
    """Attach per-response-token reference log-probs to every example (cached on disk).

    Runs the frozen initial policy once over the dataset in a fixed order; the cache key covers
    the model files, dtypes and every token id, so a stale cache is never reused.
    """
    if all(set(REF_FIELDS.values()) <= set(ex.token_fields) for ex in tok.examples):
        from musc_jax.data.builders.run import model_fingerprint
        mine = model_fingerprint(c.model.path) if Path(c.model.path).is_dir() else ""
        stored = getattr(tok, "ref_model_hashes", set())
        if mine and stored == {mine}:
            log.info("reference log-probs come with the dataset (model hash %s)", mine)
            return
        # Another (or an unknown) model wrote them: a DPO margin against the wrong reference
        # would be silently wrong, so recompute them with this run's reference.
        log.warning("the dataset's reference log-probs came from model hash(es) %s, not this "
                    "run's reference %s (%s): recomputing them", sorted(stored) or ["unknown"],
                    c.model.path, mine or "no hash")
        for ex in tok.examples:
            for f in REF_FIELDS.values():
                ex.token_fields.pop(f, None)
    cache_dir = Path(c.reference.cache_dir or Path(c.workdir) / "ref_cache")
    cache = cache_dir / f"ref_{_cache_key(c, tok)}.npz"
    # One decision for all processes (the scoring below is collective): load only if every
    # process can read the cache, else all recompute it (storage that is not shared, a restart
    # that left the cache on one host's disk) and process 0 writes it again.
    seen = all_processes(cache.exists())
    if any(seen) and not all(seen):
        log.warning("reference cache %s is visible to processes %s only: recomputing it on all",
                    cache, [i for i, s in enumerate(seen) if s])
    if all(seen):
        data = np.load(cache)
        for j, (side, field) in enumerate(REF_FIELDS.items()):
            flat, offsets = data[side], data["offsets"][j]
            for i, ex in enumerate(tok.examples):
                ex.token_fields[field] = flat[offsets[i]:offsets[i + 1]]
        log.info("reference log-probs loaded from %s", cache)
        return

    sharding = _sharding(mesh, 2, False)

    @functools.partial(jax.jit, static_argnames="window")
    def score(params, ids, mask, resp, window):
        return response_token_logps(nnx.merge(graphdef, params), ids, mask, resp, window=window)

    n = len(tok.examples)
    pad_rows = (-n) % batch_size
    order = list(range(n)) + [n - 1] * pad_rows  # pad the last batch with repeats of a row
    values = {side: [None] * n for side in REF_FIELDS}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        batch = collate_pairs([tok.examples[i] for i in idx], bucket=c.data.bucket,
                              max_length=c.data.max_length, pad_id=tok.pad_id,
                              max_buckets=c.data.max_buckets)
        window = logits_window([len(tok.examples[i].prompt_ids) for i in idx],
                               batch["chosen_ids"].shape[1], c.data.logits_windows)
        for side in REF_FIELDS:
            arrs = [jax.device_put(batch[f"{side}_{k}"], sharding) for k in ("ids", "mask", "response_mask")]
            lp = np.asarray(_gather(score(params, *arrs, window=window)))
            for row, i in enumerate(idx):
                ex = tok.examples[i]
                start = len(ex.prompt_ids)
                length = len(ex.chosen_ids if side == "chosen" else ex.rejected_ids)
                values[side][i] = lp[row, start:start + length].astype(np.float32)
    for side, field in REF_FIELDS.items():
        for ex, v in zip(tok.examples, values[side]):
            ex.token_fields[field] = v
    if jax.process_index() == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        offsets = np.zeros((2, n + 1), np.int64)
        for j, side in enumerate(REF_FIELDS):
            offsets[j, 1:] = np.cumsum([len(v) for v in values[side]])
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, offsets=offsets, **{side: np.concatenate(values[side]) for side in REF_FIELDS})
        tmp.replace(cache)
        log.info("reference log-probs for %d pairs cached at %s", n, cache)


def _gather(x: jax.Array) -> np.ndarray:
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


# ---- assembly ------------------------------------------------------------------------------------

def build_training_data(c: ConfigDict, tokenizer, mesh: Mesh, graphdef, params, step_cfg,
                        ) -> TrainingData:
    rows_axis = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = c.train.batch_size // c.optim.grad_accum
    if micro % rows_axis:
        raise UserError(f"train.batch_size={c.train.batch_size} / optim.grad_accum="
                        f"{c.optim.grad_accum} = {micro} rows per microbatch is not divisible by "
                        f"mesh data x fsdp = {rows_axis}")
    alt = c.objective == "preference" and c.weights.source == "dynamic" and c.loss.a_tok > 0
    train = read_and_tokenize(c.data.train, c, tokenizer, alt)
    _check_fields(train, c, c.data.train)
    evals = read_and_tokenize(c.data.eval, c, tokenizer, alt) if c.data.eval else None
    if step_cfg.reference == "precompute":
        for tok in filter(None, (train, evals)):
            precompute_reference(graphdef, params, tok, c, mesh, c.train.batch_size)
    elif c.objective == "preference":
        # Stored reference values would be dead weight in every batch: leave them on the host.
        for tok in filter(None, (train, evals)):
            for ex in tok.examples:
                for f in REF_FIELDS.values():
                    ex.token_fields.pop(f, None)
    if c.objective == "preference" and not (c.loss.a_tok and c.weights.source == "dataset"):
        for tok in filter(None, (train, evals)):
            for ex in tok.examples:
                ex.token_fields.pop("chosen_weights", None)
                ex.token_fields.pop("rejected_weights", None)

    if len(train.examples) < c.train.batch_size:
        raise UserError(f"{c.data.train}: {len(train.examples)} usable rows cannot fill one batch of "
                        f"train.batch_size={c.train.batch_size}; lower train.batch_size or add rows")
    loader = PairLoader(train, c.train.batch_size, seed=c.seed, shuffle=c.train.shuffle,
                        process_index=jax.process_index(), process_count=jax.process_count(),
                        bucket=c.data.bucket, max_length=c.data.max_length,
                        sort_window=c.data.sort_window, max_buckets=c.data.max_buckets,
                        logits_windows=c.data.logits_windows)
    total = c.train.epochs * len(loader)
    if c.train.max_steps > 0:
        total = min(total, c.train.max_steps) if c.train.epochs > 0 else c.train.max_steps
    if total <= 0:
        raise UserError(f"{c.data.train}: {len(train.examples)} examples give no full batch of "
                        f"{c.train.batch_size}; lower train.batch_size")
    eval_bs = c.train.batch_size
    if evals is not None:
        n_eval = len(evals.examples)
        eval_bs = min(c.train.batch_size, n_eval - n_eval % rows_axis) or rows_axis
        left = n_eval % eval_bs
        if left:
            log.warning("%s: the last %d of %d eval rows do not fill a batch of %d and are not "
                        "evaluated", c.data.eval, left, n_eval, eval_bs)
    return TrainingData(train_loader=loader, eval_tokenized=evals,
                        total_steps=total, mesh=mesh, grad_accum=c.optim.grad_accum,
                        eval_batch_size=eval_bs)


