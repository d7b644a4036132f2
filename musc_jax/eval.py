"""Constraint-following evaluation, IFEval-style: python -m musc_jax.eval --config configs/<x>.py

Items are instructions with typed constraints (`EvalItem`), read from JSONL in our format
(`{"prompt", "constraints": [{"id", "kwargs"}], "level"}`) or in IFEval's
(`{"key", "prompt", "instruction_id_list", "kwargs"}`). The model answers each item once
(greedy by default) and every verifiable constraint is checked by `constraints.verify`:

* prompt-level accuracy: share of items whose verifiable constraints all pass;
* instruction-level accuracy: share of verifiable constraints that pass;
* each in a strict and a loose variant (loose = IFEval's: the check passes on the response or on
  one of its variants without the first/last line or markdown asterisks);
* the same by level (FollowBench levels: the number of constraints, as the item file gives it)
  and per constraint type.

Constraints that cannot be verified (free text) are left out of every ratio and counted; an item
with no verifiable constraint is left out of the prompt-level ratios and counted. A ratio with an
empty denominator is None (null in JSON), never a made-up 0 or 1. Ratios are in [0, 1].

`score_responses` is pure (no model); `evaluate` generates and then scores; `print_table` shows
a result. The CLI accepts any config with the keys listed in `REQUIRED_KEYS`; `eval_config()`
gives the defaults of an `eval` section a config can attach (`c.eval = eval_config()`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence, TextIO

import numpy as np
from ml_collections import ConfigDict

from musc_jax.data.constraints import Constraint, get_type, validate, verify
from musc_jax.errors import MissingFileError, UserError

log = logging.getLogger("musc_jax.eval")

Messages = list[dict[str, str]]

METRIC_KEYS = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose",
               "instruction_level_loose")


# --------------------------------------------------------------------------------------------
# Items and loading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalItem:
    """One instruction to answer: a text prompt or chat messages, with its constraints."""

    prompt: str | Messages
    constraints: list[Constraint]
    level: int | None = None
    key: Hashable = None

    def conversation(self) -> Messages:
        """The prompt as chat messages (a text prompt becomes one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]


class EvalDataError(UserError):
    """A malformed eval item; the message names the file, line and field."""


# The type of each constraint argument (IFEval's argument names), checked when items load so a
# wrong value fails there, naming file, line and field, not in the verifier after generation.
ARG_TYPES: Mapping[str, str] = {
    **dict.fromkeys(("num_sentences", "num_words", "num_paragraphs", "nth_paragraph",
                     "num_placeholders", "num_bullets", "num_highlights", "num_sections",
                     "frequency", "let_frequency", "capital_frequency"), "int"),
    **dict.fromkeys(("keywords", "forbidden_words"), "list of strings"),
    **dict.fromkeys(("keyword", "relation", "letter", "let_relation", "language", "first_word",
                     "postscript_marker", "section_spliter", "prompt_to_repeat", "end_phrase",
                     "capital_relation"), "string"),
}


def _has_type(value: Any, kind: str) -> bool:
    if kind == "int":  # JSON writers may give 3.0 for 3
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind == "list of strings":
        return isinstance(value, list) and bool(value) and all(isinstance(w, str) and w for w in value)
    return isinstance(value, str)


def check_constraint(c: Constraint) -> Constraint:
    """`constraints.validate` after checking each kwarg's name and type against the type's
    arguments (ARG_TYPES); raises ValueError naming the argument."""
    ctype = get_type(c.id)
    for name, value in c.kwargs.items():
        if name not in ctype.arg_names:
            raise ValueError(f"constraint {c.id!r}: unknown argument {name!r}; expected "
                             f"{list(ctype.arg_names) or 'none'}")
        kind = ARG_TYPES.get(name)
        if kind and not _has_type(value, kind):
            raise ValueError(f"constraint {c.id!r}: kwargs.{name} must be a {kind}, got {value!r}")
    return validate(c)


def _check_messages(prompt: Any) -> str | None:
    """Why `prompt` is not a valid text or chat prompt, or None if it is."""
    if isinstance(prompt, str):
        return None if prompt.strip() else "is empty"
    if not isinstance(prompt, list) or not prompt:
        return f"must be a non-empty string or list of messages, got {type(prompt).__name__}"
    for i, m in enumerate(prompt):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(
                m.get("content"), str):
            return f"message {i} must be an object with string 'role' and 'content'"
    return None


def _parse_line(d: Any, where: str, line_no: int) -> EvalItem:
    def fail(fld: str, msg: str) -> EvalDataError:
        return EvalDataError(f"{where}: field {fld!r}: {msg}")

    if not isinstance(d, dict):
        raise EvalDataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    if "prompt" not in d:
        raise fail("prompt", "missing")
    why = _check_messages(d["prompt"])
    if why:
        raise fail("prompt", why)

    constraints: list[Constraint] = []
    if "instruction_id_list" in d:  # IFEval format
        ids, kwargs = d["instruction_id_list"], d.get("kwargs")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise fail("instruction_id_list", "must be a list of strings")
        if kwargs is None:
            kwargs = [{} for _ in ids]
        if not isinstance(kwargs, list) or len(kwargs) != len(ids):
            raise fail("kwargs", f"must be a list with one object per instruction "
                                 f"({len(ids)}), got {kwargs!r:.80}")
        for i, (cid, kw) in enumerate(zip(ids, kwargs)):
            if kw is not None and not isinstance(kw, dict):
                raise fail(f"kwargs[{i}]", f"must be an object, got {type(kw).__name__}")
            c = Constraint(cid, {k: v for k, v in (kw or {}).items() if v is not None})
            try:
                check_constraint(c)
            except ValueError as e:
                raise fail(f"instruction_id_list[{i}]", str(e)) from None
            constraints.append(c)
        level = d.get("level")
    else:  # our format
        if "constraints" not in d:
            raise fail("constraints", "missing (or give IFEval's 'instruction_id_list')")
        raw = d["constraints"]
        if not isinstance(raw, list):
            raise fail("constraints", f"must be a list, got {type(raw).__name__}")
        for i, cd in enumerate(raw):
            if not isinstance(cd, dict):
                raise fail(f"constraints[{i}]", f"must be an object, got {type(cd).__name__}")
            if cd.get("kwargs") is not None and not isinstance(cd["kwargs"], dict):
                raise fail(f"constraints[{i}].kwargs", "must be an object")
            try:
                c = check_constraint(Constraint.from_dict(cd))
            except ValueError as e:
                raise fail(f"constraints[{i}]", str(e)) from None
            constraints.append(c)
        level = d.get("level")
    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise fail("level", f"must be an integer or null, got {level!r}")
    key = d.get("key", d.get("id", line_no))
    return EvalItem(prompt=d["prompt"], constraints=constraints, level=level, key=key)


def load_eval_items(path: str | os.PathLike) -> list[EvalItem]:
    """Read eval items from JSONL (our format or IFEval's; blank lines are skipped).

    A line without a `key` gets its 1-based line number as key. IFEval kwargs with None values
    are dropped (IFEval stores every argument of every checker, unused ones as null).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: eval items file not found")
    items = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from None
            items.append(_parse_line(d, where, line_no))
    return items


def save_eval_items(items: Sequence[EvalItem], path: str | os.PathLike) -> Path:
    """Write items as JSONL in our format (round-trips through `load_eval_items`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"key": it.key, "prompt": it.prompt, "level": it.level,
                                "constraints": [c.to_dict() for c in it.constraints]},
                               ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass
class _Tally:
    """Counts behind the four accuracies of one group of items."""

    items: int = 0
    scored_items: int = 0          # items with >= 1 verifiable constraint
    prompt_strict: int = 0
    prompt_loose: int = 0
    constraints: int = 0
    verifiable: int = 0
    inst_strict: int = 0
    inst_loose: int = 0

    def add(self, strict: Sequence[bool | None], loose: Sequence[bool | None]) -> None:
        self.items += 1
        self.constraints += len(strict)
        s = [v for v in strict if v is not None]
        lo = [v for v in loose if v is not None]
        self.verifiable += len(s)
        self.inst_strict += sum(s)
        self.inst_loose += sum(lo)
        if s:
            self.scored_items += 1
            self.prompt_strict += all(s)
            self.prompt_loose += all(lo)

    def metrics(self) -> dict[str, Any]:
        return {
            "prompt_level_strict": _ratio(self.prompt_strict, self.scored_items),
            "instruction_level_strict": _ratio(self.inst_strict, self.verifiable),
            "prompt_level_loose": _ratio(self.prompt_loose, self.scored_items),
            "instruction_level_loose": _ratio(self.inst_loose, self.verifiable),
            "num_items": self.items,
            "num_scored_items": self.scored_items,
            "num_constraints": self.constraints,
            "num_verifiable": self.verifiable,
            "num_unverifiable": self.constraints - self.verifiable,
        }


@dataclass
class ItemRecord:
    """One item's response and per-constraint verdicts (None = not verifiable)."""

    key: Hashable
    level: int | None
    prompt: str | Messages
    response: str
    constraints: list[Constraint]
    strict: list[bool | None]
    loose: list[bool | None]

    def passed(self, loose: bool = False) -> bool | None:
        """All verifiable constraints pass; None when the item has no verifiable constraint."""
        v = [x for x in (self.loose if loose else self.strict) if x is not None]
        return all(v) if v else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "level": self.level, "prompt": self.prompt,
            "response": self.response,
            "constraints": [dict(c.to_dict(), strict=s, loose=lo)
                            for c, s, lo in zip(self.constraints, self.strict, self.loose)],
            "strict": self.passed(False), "loose": self.passed(True),
        }


@dataclass
class EvalResult:
    """Overall, by-level and by-type accuracies, with the per-item records they come from."""

    overall: dict[str, Any]
    by_level: dict[int, dict[str, Any]]
    by_type: dict[str, dict[str, Any]]
    records: list[ItemRecord] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.overall[key]

    @property
    def average(self) -> float | None:
        """Mean of the four overall accuracies (the "IFEval average" papers report)."""
        vals = [self.overall[k] for k in METRIC_KEYS]
        return None if any(v is None for v in vals) else float(np.mean(vals))

    def to_dict(self, per_item: bool = False) -> dict[str, Any]:
        """Plain dict: the overall metrics and counts at the top, then by_level and by_type.

        `by_level` has int keys (JSON turns them into strings). With `per_item`, `items` holds
        each item's response and per-constraint verdicts.
        """
        d: dict[str, Any] = dict(self.overall)
        d["average"] = self.average
        d["by_level"] = {lv: dict(m) for lv, m in self.by_level.items()}
        d["by_type"] = {t: dict(m) for t, m in self.by_type.items()}
        if per_item:
            d["items"] = [r.to_dict() for r in self.records]
        return d


def score_responses(items: Sequence[EvalItem], responses: Sequence[str]) -> EvalResult:
    """Score one response per item (no model involved)."""
    if len(items) != len(responses):
        raise ValueError(f"got {len(responses)} responses for {len(items)} items")
    total = _Tally()
    levels: dict[int, _Tally] = {}
    types: dict[str, list[int]] = {}   # id -> [count, strict passes, loose passes]
    unverifiable_types: dict[str, int] = {}
    records = []
    for it, resp in zip(items, responses):
        if not isinstance(resp, str):
            raise TypeError(f"item {it.key!r}: response must be a string, got {type(resp).__name__}")
        strict = [verify(resp, c, loose=False) for c in it.constraints]
        loose = [verify(resp, c, loose=True) for c in it.constraints]
        total.add(strict, loose)
        if it.level is not None:
            levels.setdefault(it.level, _Tally()).add(strict, loose)
        for c, s, lo in zip(it.constraints, strict, loose):
            if s is None:
                unverifiable_types[c.id] = unverifiable_types.get(c.id, 0) + 1
                continue
            t = types.setdefault(c.id, [0, 0, 0])
            t[0] += 1
            t[1] += s
            t[2] += lo
        records.append(ItemRecord(it.key, it.level, it.prompt, resp, list(it.constraints),
                                  strict, loose))
    by_type = {tid: {"strict": n_s / n, "loose": n_l / n, "count": n}
               for tid, (n, n_s, n_l) in sorted(types.items())}
    overall = total.metrics()
    overall["unverifiable_types"] = dict(sorted(unverifiable_types.items()))
    return EvalResult(overall=overall,
                      by_level={lv: levels[lv].metrics() for lv in sorted(levels)},
                      by_type=by_type, records=records)


# --------------------------------------------------------------------------------------------
# Generation + scoring
# --------------------------------------------------------------------------------------------


def _batch_seed(seed: int, start: int) -> int:
    """A distinct sampling seed per batch (generate's row keys restart at 0 in every batch)."""
    return int(np.random.SeedSequence([int(seed), int(start)]).generate_state(1)[0] & 0x7FFFFFFF)


def generate_responses(model, tokenizer, items: Sequence[EvalItem], max_new_tokens: int = 256,
                       temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                       batch_size: int = 16, seed: int = 0, mesh=None) -> list[str]:
    """One response per item, in item order, generated `batch_size` prompts at a time.

    Items are batched in order of prompt length (less padding, fewer shape buckets); the seed of
    each batch is derived from `seed` and the batch's position, so a run is reproducible. On
    several processes each generates the batches it owns (`musc_jax.multiprocess.owned`, with
    `mesh` over its own devices) and every process gets all responses: the same responses as
    one process, whatever the process count.
    """
    from musc_jax.generate import generate_text
    from musc_jax.multiprocess import allgather_json, owned

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    convs = [it.conversation() for it in items]
    order = sorted(range(len(convs)), key=lambda i: sum(len(m["content"]) for m in convs[i]))
    mine: list[tuple[int, str]] = []
    starts = range(0, len(order), batch_size)
    for b in owned(len(starts)):
        start = starts[b]
        idx = order[start:start + batch_size]
        texts = generate_text(model, tokenizer, [convs[i] for i in idx], max_new_tokens,
                              temperature=temperature, top_p=top_p, top_k=top_k,
                              seed=_batch_seed(seed, start), num_samples=1, mesh=mesh)
        mine.extend(zip(idx, texts))
        log.info("generated %d/%d responses", min(start + batch_size, len(order)), len(order))
    out: list[str | None] = [None] * len(convs)
    for part in allgather_json(mine):
        for i, t in part:
            out[i] = t
    return out  # type: ignore[return-value]


def evaluate(model, tokenizer, items: Sequence[EvalItem], max_new_tokens: int = 256,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             batch_size: int = 16, seed: int = 0, mesh=None) -> EvalResult:
    """Generate one response per item (greedy by default) and score them."""
    if not items:
        raise ValueError("no eval items")
    responses = generate_responses(model, tokenizer, items, max_new_tokens=max_new_tokens,
                                   temperature=temperature, top_p=top_p, top_k=top_k,
                                   batch_size=batch_size, seed=seed, mesh=mesh)
    return score_responses(items, responses)


# --------------------------------------------------------------------------------------------
# Table
# --------------------------------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def format_table(result: EvalResult) -> str:
    """A readable table: overall, by level, by constraint type (percentages)."""
    o = result.overall
    lines = [f"eval: {o['num_items']} items ({o['num_scored_items']} with verifiable constraints), "
             f"{o['num_constraints']} constraints ({o['num_verifiable']} verifiable, "
             f"{o['num_unverifiable']} not verifiable)"]
    head = f"{'':<24}{'prompt/strict':>14}{'instr/strict':>14}{'prompt/loose':>14}{'instr/loose':>14}"
    lines.append(head)
    lines.append("-" * len(head))

    def row(name: str, m: Mapping[str, Any]) -> str:
        return f"{name:<24}" + "".join(f"{_pct(m[k]):>14}" for k in METRIC_KEYS)

    lines.append(row("overall", o))
    if result.average is not None:
        lines.append(f"{'average of the four':<24}{_pct(result.average):>14}")
    for lv, m in result.by_level.items():
        lines.append(row(f"level {lv} (n={m['num_items']})", m))
    if result.by_type:
        width = max(24, max(len(t) for t in result.by_type) + 2)
        lines.append("")
        lines.append(f"{'constraint type':<{width}}{'n':>6}{'strict':>9}{'loose':>9}")
        lines.append("-" * (width + 24))
        for t, m in result.by_type.items():
            lines.append(f"{t:<{width}}{m['count']:>6}{_pct(m['strict']):>9}{_pct(m['loose']):>9}")
    return "\n".join(lines)


def print_table(result: EvalResult, file: TextIO | None = None) -> None:
    print(format_table(result), file=file or sys.stdout, flush=True)


# --------------------------------------------------------------------------------------------
# Config and CLI
# --------------------------------------------------------------------------------------------


REQUIRED_KEYS = ("model.path", "eval.data", "eval.out", "eval.max_new_tokens",
                 "eval.batch_size", "eval.temperature")


def eval_config() -> ConfigDict:
    """Defaults of the `eval` section (attach with `c.eval = eval_config()`)."""
    return ConfigDict(dict(
        data="",             # items JSONL (our format or IFEval's)
        out="",              # output JSON path
        max_new_tokens=256,
        batch_size=16,
        temperature=0.0,     # 0 = greedy
        top_p=1.0,
        top_k=0,
        seed=0,
        per_item=True,       # write each item's response and verdicts into the output JSON
        dtype="auto",        # generation dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU
    ))


def _get(config, dotted: str, default: Any = ...):
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            if default is ...:
                raise KeyError(dotted) from None
            return default
    return node


def check_eval_config(config) -> None:
    """Raise a ValueError naming every required key that is missing or empty."""
    missing = []
    for k in REQUIRED_KEYS:
        try:
            _get(config, k)
        except KeyError:
            missing.append(k)
    if missing:
        raise UserError(f"eval config is missing key(s) {missing}; an eval config needs "
                        f"{list(REQUIRED_KEYS)} (attach defaults with "
                        "`c.eval = musc_jax.eval.eval_config()`)")
    empty = [k for k in ("model.path", "eval.data", "eval.out") if not _get(config, k)]
    if empty:
        raise UserError(f"eval config key(s) {empty} are empty; set them, e.g. "
                        f"--config.{empty[0]}=...")


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def run_eval(config) -> EvalResult:
    """Load the model and items the config names, evaluate, write `eval.out`, print the table.

    The model goes on each process's own devices (`mesh.tensor` devices per replica, replicas
    over the rest; `data.policy.policy_mesh`) in `eval.dtype`; on several processes each
    generates its share of the items and process 0 writes the result.
    """
    check_eval_config(config)
    import jax

    from musc_jax.data.policy import load_policy_model

    items = load_eval_items(config.eval.data)
    if not items:
        raise UserError(f"{config.eval.data}: no eval items")
    model, tokenizer, mesh = load_policy_model(
        config.model.path, _get(config, "eval.dtype", "auto"), int(_get(config, "mesh.tensor", 1)),
        _get(config, "model.tokenizer", ""))
    settings = dict(
        max_new_tokens=int(config.eval.max_new_tokens),
        temperature=float(config.eval.temperature),
        top_p=float(_get(config, "eval.top_p", 1.0)),
        top_k=int(_get(config, "eval.top_k", 0)),
        batch_size=int(config.eval.batch_size),
        seed=int(_get(config, "eval.seed", _get(config, "seed", 0))),
    )
    result = evaluate(model, tokenizer, items, mesh=mesh, **settings)
    if jax.process_index() == 0:
        out = result.to_dict(per_item=bool(_get(config, "eval.per_item", True)))
        out["settings"] = dict(settings, model=str(config.model.path), data=str(config.eval.data))
        _write_json(out, Path(config.eval.out))
        print_table(result)
        log.info("wrote %s", config.eval.out)
    return result


def _main() -> None:
    from musc_jax.cli import define_config_flag, main_with_config
    holder = define_config_flag()
    main_with_config(holder, run_eval)


if __name__ == "__main__":
    _main()
