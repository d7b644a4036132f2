"""Scoring a constraint decomposer against IFEval labels.

`score_rule_decompose(rows)` measures id precision/recall and kwargs accuracy of a decomposer
(by default `rule_decompose` without the microworld types) on IFEval-format rows; used by the
tests and by scripts/decompose_report.py.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from musc_jax.data.constraints import Constraint
from musc_jax.data.decompose_rules import rule_decompose

# Arguments the IFEval checkers read case-sensitively; every other string is compared as the
# checkers read it (case-insensitively), and word lists as sets.
_CASE_SENSITIVE = {"section_spliter", "language", "postscript_marker"}


def _norm_value(key: str, v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return sorted({str(x).strip().lower() for x in v})
    if isinstance(v, str):
        v = re.sub(r"\s+", " ", v.strip())
        return v if key in _CASE_SENSITIVE else v.lower()
    return v


def kwargs_match(pred: Mapping[str, Any], label: Mapping[str, Any]) -> bool:
    """Whether `pred` has every non-None argument of `label` with the same value."""
    return all(_norm_value(k, pred.get(k)) == _norm_value(k, v)
               for k, v in label.items() if v is not None)


@dataclass
class TypeScore:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    kw_ok: int = 0

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def kwargs_accuracy(self) -> float:
        return self.kw_ok / self.tp if self.tp else 1.0


@dataclass
class DecomposeScore:
    per_type: dict[str, TypeScore]
    missed: list[tuple[Any, str, str]]  # (key, id, prompt)
    spurious: list[tuple[Any, str, str]]
    wrong_kwargs: list[tuple[Any, str, dict, dict]]  # (key, id, predicted, label)

    def _sum(self, name: str) -> int:
        return sum(getattr(s, name) for s in self.per_type.values())

    @property
    def precision(self) -> float:
        tp, fp = self._sum("tp"), self._sum("fp")
        return tp / (tp + fp) if tp + fp else 1.0

    @property
    def recall(self) -> float:
        tp, fn = self._sum("tp"), self._sum("fn")
        return tp / (tp + fn) if tp + fn else 1.0

    @property
    def kwargs_accuracy(self) -> float:
        tp = self._sum("tp")
        return self._sum("kw_ok") / tp if tp else 1.0


def score_rule_decompose(rows: Iterable[Mapping[str, Any]],
                         decompose: Callable[[str], list[Constraint]] | None = None
                         ) -> DecomposeScore:
    """Score a decomposer on IFEval-format rows (prompt, instruction_id_list, kwargs).

    Ids are matched as multisets per prompt (a label may hold the same id twice); within an id,
    predicted and labelled instances are paired to maximise argument agreement."""
    decompose = decompose or (lambda s: rule_decompose(s, microworld=False))
    per: dict[str, TypeScore] = defaultdict(TypeScore)
    missed, spurious, wrong = [], [], []
    for row in rows:
        pred = decompose(row["prompt"])
        by_pred: dict[str, list[dict]] = defaultdict(list)
        by_label: dict[str, list[dict]] = defaultdict(list)
        for c in pred:
            by_pred[c.id].append(dict(c.kwargs))
        for tid, kw in zip(row["instruction_id_list"], row["kwargs"]):
            by_label[tid].append(dict(kw or {}))
        for tid in set(by_pred) | set(by_label):
            p, lab = by_pred.get(tid, []), by_label.get(tid, [])
            k = min(len(p), len(lab))
            s = per[tid]
            s.tp += k
            s.fp += len(p) - k
            s.fn += len(lab) - k
            missed += [(row.get("key"), tid, row["prompt"])] * (len(lab) - k)
            spurious += [(row.get("key"), tid, row["prompt"])] * (len(p) - k)
            if k:
                best, best_pairs = -1, []
                small, large = (p, lab) if len(p) <= len(lab) else (lab, p)
                for perm in itertools.permutations(range(len(large)), len(small)):
                    pairs = [(small[i], large[j]) for i, j in enumerate(perm)]
                    pairs = [(a, b) if small is p else (b, a) for a, b in pairs]
                    ok = sum(kwargs_match(a, b) for a, b in pairs)
                    if ok > best:
                        best, best_pairs = ok, pairs
                s.kw_ok += best
                wrong += [(row.get("key"), tid, a, b) for a, b in best_pairs
                          if not kwargs_match(a, b)]
    return DecomposeScore(dict(per), missed, spurious, wrong)


def id_counts(constraints: Iterable[Constraint]) -> Counter:
    return Counter(c.id for c in constraints)


__all__ = ["DecomposeScore", "TypeScore", "id_counts", "kwargs_match", "score_rule_decompose"]
