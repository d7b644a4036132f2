"""Static token weights for pairs rows, stored per response token (DESIGN 5.2, 6).

Providers (`WeightConfig.kind`):

* `kl`, `bikl`, `prob_diff` (MuSC): each response y in {y+, y-} is teacher-forced by the
  reference model under the chosen prompt x (P_t) and under the rejected prompt x' (Q_t);
  `musc_jax.scoring.contrast_stats` gives s_t per response token and
  `musc_jax.scoring.contrast_weights` turns it into w_t = clip(s_t / mean(s), 0, w_max).
  A row without x' (`rejected_prompt` empty) has no contrast: it gets w = 1 (counted).
* `diff`: tokens inside the edit spans of a token-level alignment of chosen vs rejected
  (`difflib.SequenceMatcher` on token ids) get `w_hi`, tokens the two responses share get `w_lo`.
* `uniform`: w = 1 (plain DPO).

Optionally (`ref_logps=True`) the reference per-token log-probs of both responses under x
(`ref_chosen_token_logps`, `ref_rejected_token_logps`) are stored too (`scoring.score`).

Every stored list holds one value per response token as `batching.ChatEncoder.response_ids`
gives them (end-of-turn token included); the first response token has its value (it is predicted
from the last prompt position). Tokenisation is the project's (`batching.tokenize_pair` with
truncation "error"): a row too long for `max_length` cannot carry weights and is dropped and
counted. Model batches have a fixed row count (the last one is padded with repeats) and lengths
bucketed to multiples of `bucket`, so a run compiles a handful of times.

`weight_mass_by_constraint(rows)` attributes each pair's weight mass to the constraint types it
was corrupted on (for logging which constraints the token-level signal concentrates on).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import difflib
import json
import logging
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from musc_jax.config import config_from
from musc_jax.data.batching import (BatchingConfig, BatchingError, ChatEncoder, PairExample,
                                    TemplateBoundaryError, TooLongError, collate_pairs,
                                    tokenize_pair)

log = logging.getLogger(__name__)

MODEL_KINDS = ("kl", "bikl", "prob_diff")
KINDS = MODEL_KINDS + ("diff", "uniform")
SIDES = ("chosen", "rejected")
WEIGHT_FIELD = {"chosen": "chosen_weights", "rejected": "rejected_weights"}
REF_FIELD = {"chosen": "ref_chosen_token_logps", "rejected": "ref_rejected_token_logps"}
UNCORRUPTED = "<none>"


@dataclasses.dataclass(frozen=True)
class WeightConfig:
    """How to weight response tokens.

    kind: one of KINDS. w_max: cap of the MuSC weights. w_hi / w_lo: `diff` weights inside /
    outside the edit spans. ref_logps: also store reference per-token log-probs (needs a model).
    batch_size: rows per model batch. chunk: time chunk of the vocabulary projection.
    max_length / max_prompt_length / bucket: tokenisation limits and length bucket (as the
    trainer's data section; a longer row is dropped and counted).
    """

    kind: str = "kl"
    w_max: float = 2.0
    w_hi: float = 2.0
    w_lo: float = 0.5
    ref_logps: bool = False
    batch_size: int = 8
    chunk: int = 128
    max_length: int = 1024
    max_prompt_length: int = 512
    bucket: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"weights.kind={self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.w_max <= 0 or self.w_hi < 0 or self.w_lo < 0:
            raise ValueError(f"weights need w_max > 0 and w_hi, w_lo >= 0, got w_max={self.w_max}, "
                             f"w_hi={self.w_hi}, w_lo={self.w_lo}")
        if self.batch_size < 1:
            raise ValueError(f"weights.batch_size must be >= 1, got {self.batch_size}")

    @property
    def needs_model(self) -> bool:
        return self.kind in MODEL_KINDS or self.ref_logps


# ---------------------------------------------------------------------------------- diff weights

def edit_masks(a: Sequence[int], b: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the tokens of `a` and of `b` that lie inside edit spans of their alignment.

    The alignment is `difflib.SequenceMatcher` on the token ids (no junk heuristic): tokens in
    "equal" blocks are shared (False), tokens in "replace" / "delete" (of a) and "replace" /
    "insert" (of b) blocks are edited (True).
    """
    a, b = [int(t) for t in a], [int(t) for t in b]
    ma, mb = np.zeros(len(a), bool), np.zeros(len(b), bool)
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            ma[i1:i2] = True
            mb[j1:j2] = True
    return ma, mb


def diff_weights(chosen_ids: Sequence[int], rejected_ids: Sequence[int], w_hi: float = 2.0,
                 w_lo: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """`diff` weights (float32) of the chosen and rejected response tokens."""
    ma, mb = edit_masks(chosen_ids, rejected_ids)
    return (np.where(ma, w_hi, w_lo).astype(np.float32),
            np.where(mb, w_hi, w_lo).astype(np.float32))


# --------------------------------------------------------------------------------- model weights

def batch_token_weights(model, batch: Mapping[str, np.ndarray], kind: str, w_max: float = 2.0,
                        chunk: int = 128) -> dict[str, np.ndarray]:
    """MuSC weights [B, T] for a collated batch with alt sequences (`collate_pairs` keys).

    Returns {"chosen_weights", "rejected_weights"} (float32, 0 on prompt and padding) plus
    {"chosen_stats", "rejected_stats"}, the raw contrast statistics.
    """
    from musc_jax.scoring import contrast_stats, contrast_weights

    out = {}
    for side in SIDES:
        resp = batch[f"{side}_response_mask"]
        s = contrast_stats(model, batch[f"{side}_ids"], batch[f"{side}_mask"],
                           batch[f"{side}_alt_ids"], batch[f"{side}_alt_mask"], resp,
                           batch[f"{side}_alt_response_mask"], kind=kind, chunk=chunk)
        out[f"{side}_stats"] = np.asarray(s, np.float32)
        out[WEIGHT_FIELD[side]] = np.asarray(contrast_weights(s, resp, w_max), np.float32)
    return out


def batch_ref_logps(model, batch: Mapping[str, np.ndarray], chunk: int = 128) -> dict[str, np.ndarray]:
    """Reference per-token log-probs [B, T] of both responses under x (0 off the response)."""
    from musc_jax.scoring import score

    return {REF_FIELD[side]: np.asarray(score(model, batch[f"{side}_ids"], batch[f"{side}_mask"],
                                              batch[f"{side}_response_mask"], chunk=chunk), np.float32)
            for side in SIDES}


def _response_values(arr: np.ndarray, row: int, ex: PairExample, side: str) -> np.ndarray:
    start = len(ex.prompt_ids)
    n = len(ex.chosen_ids if side == "chosen" else ex.rejected_ids)
    return arr[row, start:start + n]


def _model_batches(examples: list[PairExample], batch_size: int):
    """Index batches of a fixed size, rows sorted by length (less padding, few bucket shapes)."""
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        yield idx, idx + [idx[-1]] * (batch_size - len(idx))


@dataclasses.dataclass
class WeightStats:
    """What happened while weighting: rows in/out and why some were dropped or fell back."""

    rows: int = 0
    weighted: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    no_rejected_prompt: int = 0     # model kinds: no x', uniform weights
    zero_contrast: int = 0          # model kinds: responses whose statistics were all 0 (w = 1)
    tokens: int = 0
    weight_sum: float = 0.0
    weight_max: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["weight_mean"] = self.weight_sum / self.tokens if self.tokens else None
        return d


@contextlib.contextmanager
def _scoring_batches(model, batch_size: int):
    """(place, rows per batch) for the reference model's batches: on a mesh each replica scores
    its own rows (`scoring.split_rows`), so the batch grows to a multiple of the replicas."""
    if model is None:
        yield (lambda batch: batch), batch_size
        return
    from musc_jax.scoring import param_mesh, replica_rows, split_rows

    n = replica_rows(param_mesh(model))
    with split_rows(model) as place:
        yield place, -(-batch_size // n) * n


def compute_token_weights(rows: Sequence[Mapping], tokenizer, cfg: WeightConfig | Mapping,
                          model=None) -> tuple[list[dict], WeightStats]:
    """Rows with `chosen_weights` / `rejected_weights` (and optionally reference log-probs) added.

    `tokenizer` is the model's HF tokenizer (its chat template tokenises the rows); `model` the
    reference model (needed for kl / bikl / prob_diff and for ref_logps). Returns the kept rows
    (a copy of each input row plus the new fields, as lists of floats) and counts; rows that
    cannot be tokenised within the limits are dropped and counted, never raised.
    """
    cfg = config_from(WeightConfig, cfg, "weights")   # an instance passes through
    if cfg.needs_model and model is None:
        raise ValueError(f"weights.kind={cfg.kind!r} (ref_logps={cfg.ref_logps}) needs the reference "
                         "model")
    stats = WeightStats(rows=len(rows))
    dropped: collections.Counter = collections.Counter()
    encoder = ChatEncoder(tokenizer, BatchingConfig(
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, truncation="error",
        alt_sequences=cfg.kind in MODEL_KINDS, bucket=cfg.bucket))
    kept: list[int] = []
    examples: list[PairExample] = []
    for i, row in enumerate(rows):
        where = f"row {i}"
        try:
            ex = tokenize_pair(row, encoder, where)
        except TemplateBoundaryError:
            raise
        except TooLongError:
            dropped["too_long"] += 1
            continue
        except BatchingError as e:  # e.g. a response that tokenises differently after x'
            if not dropped["untokenizable"]:
                log.warning("dropping a row that cannot be tokenised (first of its kind): %s", e)
            dropped["untokenizable"] += 1
            continue
        kept.append(i)
        examples.append(ex)
    values: list[dict[str, np.ndarray]] = [{} for _ in examples]
    with _scoring_batches(model, cfg.batch_size) as (place, batch_size):
        if cfg.kind == "uniform":
            for ex, v in zip(examples, values):
                v["chosen_weights"] = np.ones(len(ex.chosen_ids), np.float32)
                v["rejected_weights"] = np.ones(len(ex.rejected_ids), np.float32)
        elif cfg.kind == "diff":
            for ex, v in zip(examples, values):
                v["chosen_weights"], v["rejected_weights"] = diff_weights(
                    ex.chosen_ids, ex.rejected_ids, cfg.w_hi, cfg.w_lo)
        else:
            with_alt = [j for j, ex in enumerate(examples) if ex.has_alt]
            for j, ex in enumerate(examples):
                if not ex.has_alt:
                    stats.no_rejected_prompt += 1
                    values[j]["chosen_weights"] = np.ones(len(ex.chosen_ids), np.float32)
                    values[j]["rejected_weights"] = np.ones(len(ex.rejected_ids), np.float32)
            sub = [examples[j] for j in with_alt]
            for idx, padded in _model_batches(sub, batch_size):
                batch = place(collate_pairs([sub[k] for k in padded], bucket=cfg.bucket,
                                            max_length=cfg.max_length, pad_id=encoder.pad_id))
                out = batch_token_weights(model, batch, cfg.kind, cfg.w_max, cfg.chunk)
                for row, k in enumerate(idx):
                    ex, v = sub[k], values[with_alt[k]]
                    for side in SIDES:
                        v[WEIGHT_FIELD[side]] = _response_values(out[WEIGHT_FIELD[side]], row,
                                                                 ex, side)
                        if not _response_values(out[f"{side}_stats"], row, ex, side).any():
                            stats.zero_contrast += 1

        if cfg.ref_logps:
            # Reference log-probs need only x: drop the alt sequences (smaller batches).
            plain = [dataclasses.replace(ex, alt_prompt_ids=None, has_alt=False) for ex in examples]
            for idx, padded in _model_batches(plain, batch_size):
                batch = place(collate_pairs([plain[k] for k in padded], bucket=cfg.bucket,
                                            max_length=cfg.max_length, pad_id=encoder.pad_id))
                out = batch_ref_logps(model, batch, cfg.chunk)
                for row, k in enumerate(idx):
                    for side in SIDES:
                        values[k][REF_FIELD[side]] = _response_values(out[REF_FIELD[side]], row,
                                                                      plain[k], side)

    result = []
    for i, v in zip(kept, values):
        new = dict(rows[i])
        for f, arr in v.items():
            new[f] = np.asarray(arr, np.float32).tolist()
        for side in SIDES:
            w = np.asarray(v[WEIGHT_FIELD[side]], np.float64)
            stats.tokens += len(w)
            stats.weight_sum += float(w.sum())
            stats.weight_max = max(stats.weight_max, float(w.max(initial=0.0)))
        result.append(new)
    stats.weighted = len(result)
    stats.dropped = dict(dropped)
    if dropped:
        log.warning("token weights: dropped %d of %d rows %s", sum(dropped.values()), len(rows),
                    dict(dropped))
    return result, stats


# ------------------------------------------------------------------------------ mass attribution

def _corrupted_ids(row: Mapping) -> list[str]:
    recs = row.get("corrupted") or []
    if isinstance(recs, str):
        recs = json.loads(recs) if recs.strip() else []
    ids = []
    for r in recs:
        orig = r.get("original") if isinstance(r, Mapping) else None
        if isinstance(orig, Mapping) and "id" in orig:
            ids.append(str(orig["id"]))
        elif isinstance(r, Mapping) and "id" in r:        # a bare constraint dict
            ids.append(str(r["id"]))
    return ids


def weight_mass_by_constraint(rows: Iterable[Mapping]) -> dict[str, float]:
    """Share of the total token-weight mass per corrupted constraint type.

    Each pair's mass (sum of its chosen and rejected weights) is split equally among the
    constraint ids of its `corrupted` records (the original constraint of each MuSC corruption,
    the added / tightened constraint of an ECD step); pairs without records count under
    "<none>". The shares sum to 1 (empty dict when there is no weight at all).
    """
    return mass_shares(weight_mass_counts(rows))


def mass_shares(mass: Mapping[str, float]) -> dict[str, float]:
    """Masses -> shares summing to 1, largest first (empty when the total is 0)."""
    total = sum(mass.values())
    if total <= 0:
        return {}
    return {k: v / total for k, v in sorted(mass.items(), key=lambda kv: -kv[1])}


def weight_mass_counts(rows: Iterable[Mapping]) -> dict[str, float]:
    """The unnormalised masses behind `weight_mass_by_constraint` (summable over shards)."""
    mass: collections.Counter = collections.Counter()
    for row in rows:
        m = sum(float(np.sum(row.get(f) if row.get(f) is not None else 0.0))
                for f in WEIGHT_FIELD.values())
        ids = _corrupted_ids(row) or [UNCORRUPTED]
        for cid in ids:
            mass[cid] += m / len(ids)
    return dict(mass)


__all__ = ["KINDS", "MODEL_KINDS", "WeightConfig", "WeightStats", "batch_ref_logps",
           "batch_token_weights", "compute_token_weights", "diff_weights", "edit_masks",
           "mass_shares", "weight_mass_by_constraint", "weight_mass_counts"]
