"""Seed instructions: what the pair builders start from, and where they come from.

Sources (`load_seeds`):

* a registered source (`register_seed_source`): a function `(num_seeds, seed, **options) ->
  list[Seed]` that generates seeds, e.g. a synthetic world's instructions (each carrying its task,
  typed constraints and the composer seed of its text, `meta["compose_seed"]`). A world
  registers its source when its package is imported; this module names none.
* `jsonl`: one JSON object per line with the prompt under `prompt_field`; IFEval's
  `instruction_id_list` + `kwargs` (None-valued kwargs dropped) or our `constraints` list (typed
  constraint dicts, or a user's constraint sentences: typed where the rule decomposer reads one
  type, else free text, `instructions.constraint_from_text`) become the seed's constraints;
  optional `task` and `response` (a known good answer, kept in `meta["response"]`); `key` /
  `id` / `level` go to meta.
* `hf`: a Hugging Face dataset at a local path (`save_to_disk` directory via `load_from_disk`,
  otherwise `load_dataset` of the directory or data file), rows read like the JSONL ones.

A malformed row raises `SeedFormatError` naming the file, the line (1-based) or row (0-based)
and the field; with `on_error="skip"` it is dropped and counted per reason (logged), never
silently.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from musc_jax.data.constraints import Constraint, validate
from musc_jax.errors import MissingFileError, UserError

log = logging.getLogger(__name__)

FILE_SOURCES = ("jsonl", "hf")
SOURCES = FILE_SOURCES  # kept for callers; registered sources are in SEED_SOURCES
# Generated seed sources by name: fn(num_seeds, seed, **options) -> list[Seed].
SEED_SOURCES: dict[str, Callable[..., list["Seed"]]] = {}


def register_seed_source(name: str, fn: Callable[..., list["Seed"]]) -> None:
    """Make `load_seeds(name, ...)` call `fn(num_seeds, seed, **options)`."""
    if name in FILE_SOURCES:
        raise ValueError(f"seed source {name!r} is built in; register another name")
    SEED_SOURCES[name] = fn


def seed_sources() -> tuple[str, ...]:
    """Every source `load_seeds` accepts now (the file sources and the registered ones)."""
    return FILE_SOURCES + tuple(SEED_SOURCES)
ON_ERROR = ("error", "skip")


@dataclasses.dataclass
class Seed:
    """One seed instruction.

    prompt: the instruction text (x). task / constraints: its decomposition when known (the
    microworld and IFEval-style data carry typed constraints; otherwise a decomposer fills them
    in). meta: provenance (source file and line, level, ...), copied into the pairs' `meta`.
    """

    prompt: str
    task: str | None = None
    constraints: list[Constraint] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


class SeedFormatError(UserError):
    """A malformed seed row; the message names the file, line/row and field."""

    def __init__(self, where: str, field: str | None, reason: str, code: str = "value"):
        self.where, self.field, self.reason, self.code = where, field, reason, code
        super().__init__(f"{where}: " + (f"field {field!r}: " if field else "") + reason)

    @property
    def skip_key(self) -> str:
        return f"{self.field or 'row'}: {self.code}"


@dataclasses.dataclass
class SeedSet:
    """Seeds plus the malformed rows skipped (reason -> count) and the rows read."""

    seeds: list[Seed]
    skipped: dict[str, int]
    num_read: int

    def __len__(self) -> int:
        return len(self.seeds)


# ----------------------------------------------------------------------------------- one record

def _prompt_text(value: Any, where: str, field: str) -> str:
    if isinstance(value, list):  # chat messages: a single user turn is an instruction
        users = [m for m in value if isinstance(m, Mapping) and m.get("role") == "user"]
        if len(value) != 1 or len(users) != 1 or not isinstance(users[0].get("content"), str):
            raise SeedFormatError(where, field, "expected text or one user message, got a "
                                  f"conversation of {len(value)} messages", "type")
        value = users[0]["content"]
    if value is None:
        raise SeedFormatError(where, field, "missing", "missing")
    if not isinstance(value, str):
        raise SeedFormatError(where, field, f"expected text, got {type(value).__name__}", "type")
    if not value.strip():
        raise SeedFormatError(where, field, "empty", "empty")
    return value


def _typed(c: Constraint, where: str, field: str) -> Constraint:
    try:
        return validate(c)
    except ValueError as e:
        raise SeedFormatError(where, field, str(e)) from None


def _constraints(d: Mapping[str, Any], where: str) -> list[Constraint] | None:
    if d.get("instruction_id_list") is not None:  # IFEval format
        ids, kwargs = d["instruction_id_list"], d.get("kwargs")
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):
            raise SeedFormatError(where, "instruction_id_list", "must be a list of strings", "type")
        if kwargs is None:
            kwargs = [{} for _ in ids]
        if not isinstance(kwargs, (list, tuple)) or len(kwargs) != len(ids):
            raise SeedFormatError(where, "kwargs", f"must be a list with one object per "
                                  f"instruction ({len(ids)})", "type")
        out = []
        for i, (cid, kw) in enumerate(zip(ids, kwargs)):
            if kw is not None and not isinstance(kw, Mapping):
                raise SeedFormatError(where, f"kwargs[{i}]", f"must be an object, got "
                                      f"{type(kw).__name__}", "type")
            c = Constraint(cid, {k: v for k, v in (kw or {}).items() if v is not None})
            out.append(_typed(c, where, f"instruction_id_list[{i}]"))
        return out
    if d.get("constraints") is not None:          # our format: typed constraint dicts
        raw = d["constraints"]
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as e:
                raise SeedFormatError(where, "constraints", f"invalid JSON: {e}", "json") from None
        if not isinstance(raw, (list, tuple)):
            raise SeedFormatError(where, "constraints", f"must be a list, got {type(raw).__name__}",
                                  "type")
        out = []
        for i, cd in enumerate(raw):
            if isinstance(cd, str):   # a user's own wording: typed when the rules read it
                from musc_jax.data.instructions import constraint_from_text
                if not cd.strip():
                    raise SeedFormatError(where, f"constraints[{i}]", "empty constraint text",
                                          "empty")
                out.append(constraint_from_text(cd))
                continue
            if not isinstance(cd, Mapping) or "id" not in cd:
                raise SeedFormatError(where, f"constraints[{i}]", "must be an object with an 'id' "
                                      "or a constraint sentence", "type")
            if cd.get("kwargs") is not None and not isinstance(cd["kwargs"], Mapping):
                raise SeedFormatError(where, f"constraints[{i}].kwargs", "must be an object", "type")
            out.append(_typed(Constraint.from_dict(cd), where, f"constraints[{i}]"))
        return out
    return None


def seed_from_record(d: Any, where: str, prompt_field: str = "prompt",
                     source_meta: Mapping[str, Any] | None = None) -> Seed:
    """One seed from a JSON-like record; raises `SeedFormatError` naming `where` and the field."""
    if not isinstance(d, Mapping):
        raise SeedFormatError(where, None, f"expected a JSON object, got {type(d).__name__}", "type")
    prompt = _prompt_text(d.get(prompt_field), where, prompt_field)
    constraints = _constraints(d, where)
    task = d.get("task")
    if task is not None and (not isinstance(task, str) or not task.strip()):
        raise SeedFormatError(where, "task", "must be non-empty text", "type")
    meta: dict[str, Any] = dict(source_meta or {})
    for k in ("key", "id", "level"):
        if d.get(k) is not None:
            meta[k] = d[k]
    if d.get("response") is not None:
        if not isinstance(d["response"], str) or not d["response"].strip():
            raise SeedFormatError(where, "response", "must be non-empty text", "type")
        meta["response"] = d["response"]
    return Seed(prompt=prompt, task=task, constraints=constraints, meta=meta)


def _collect(records, prompt_field: str, on_error: str, path: str) -> SeedSet:
    if on_error not in ON_ERROR:
        raise UserError(f"config data.on_error={on_error!r}: choose one of "
                        f"{', '.join(map(repr, ON_ERROR))}")
    seeds, skipped, n = [], collections.Counter(), 0
    for where, meta, rec in records:
        n += 1
        try:
            if isinstance(rec, SeedFormatError):
                raise rec
            seeds.append(seed_from_record(rec, where, prompt_field, meta))
        except SeedFormatError as e:
            if on_error == "error":
                raise
            if not skipped[e.skip_key]:
                log.warning("skipping malformed seed (first of its kind): %s", e)
            skipped[e.skip_key] += 1
    if skipped:
        log.warning("%s: skipped %d of %d seed rows: %s", path, sum(skipped.values()), n,
                    dict(sorted(skipped.items())))
    return SeedSet(seeds, dict(skipped), n)


# ------------------------------------------------------------------------------------- sources

def read_jsonl_seeds(path: str | os.PathLike, prompt_field: str = "prompt",
                     on_error: str = "error") -> SeedSet:
    """Seeds from a JSONL file (blank lines skipped; errors name file:line and field)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: seeds file not found (data.path); give an existing JSONL "
                               "file")

    def records():
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}: line {line_no}"
                meta = {"source": str(path), "line": line_no}
                try:
                    yield where, meta, json.loads(line)
                except json.JSONDecodeError as e:
                    yield where, meta, SeedFormatError(where, None, f"invalid JSON: {e}", "json")

    return _collect(records(), prompt_field, on_error, str(path))


def _load_hf(path: Path, split: str | None):
    import datasets
    if path.is_dir() and any((path / n).is_file() for n in ("state.json", "dataset_info.json",
                                                            "dataset_dict.json")):
        ds = datasets.load_from_disk(str(path))
    elif path.is_file():
        suffix = path.name.split(".")[-1]
        builder = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv",
                   "arrow": "arrow"}.get(suffix)
        if builder is None:
            raise UserError(f"{path}: cannot tell the dataset format from the suffix {suffix!r}; "
                            "use .jsonl, .json, .parquet, .csv, .arrow or a save_to_disk directory")
        ds = datasets.load_dataset(builder, data_files=str(path))
    elif path.is_dir():
        ds = datasets.load_dataset(str(path))
    else:
        raise MissingFileError(f"{path}: no such dataset file or directory (data.path)")
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise UserError(f"{path}: a dataset with splits {list(ds)}; set data.split to "
                                "one of them")
            split = next(iter(ds))
        if split not in ds:
            raise UserError(f"{path}: no split {split!r} (data.split); choose one of {list(ds)}")
        ds = ds[split]
    return ds


def read_hf_seeds(path: str | os.PathLike, prompt_field: str = "prompt", split: str | None = None,
                  on_error: str = "error") -> SeedSet:
    """Seeds from a local Hugging Face dataset (errors name the path, 0-based row and field)."""
    path = Path(path)
    ds = _load_hf(path, split or None)
    if prompt_field not in ds.column_names:
        raise SeedFormatError(str(path), prompt_field, f"no such column (columns: "
                              f"{ds.column_names})", "missing")

    def records():
        for i, rec in enumerate(ds):
            yield f"{path}: row {i}", {"source": str(path), "row": i}, rec

    return _collect(records(), prompt_field, on_error, str(path))


def load_seeds(source: str, path: str = "", *, prompt_field: str = "prompt", split: str = "",
               on_error: str = "error", num_seeds: int = 0, seed: int = 0,
               **options: Any) -> SeedSet:
    """Seeds from `source` ("jsonl", "hf" or a registered source); `num_seeds` > 0 keeps the
    first n (a registered source needs it: it is the number of seeds to generate). `options`
    (e.g. `levels`, `world_seed`) go to a registered source."""
    if source not in seed_sources():
        raise UserError(f"config data.source={source!r}: choose one of "
                        f"{', '.join(seed_sources())} (a generated source is registered by "
                        "importing its package)")
    if source in SEED_SOURCES:
        if num_seeds <= 0:
            raise UserError(f"config data.num_seeds={num_seeds}: the {source} seed source "
                            "generates seeds, so it needs data.num_seeds > 0")
        seeds = SEED_SOURCES[source](num_seeds, seed, **options)
        return SeedSet(seeds, {}, len(seeds))
    if not path:
        raise UserError(f"config data.path is empty: seed source {source!r} reads a file; set "
                        "data.path")
    if source == "jsonl":
        out = read_jsonl_seeds(path, prompt_field, on_error)
    else:
        out = read_hf_seeds(path, prompt_field, split or None, on_error)
    if num_seeds > 0:
        out.seeds = out.seeds[:num_seeds]
    return out


__all__ = ["FILE_SOURCES", "ON_ERROR", "SEED_SOURCES", "SOURCES", "Seed", "SeedFormatError",
           "SeedSet", "load_seeds", "read_hf_seeds", "read_jsonl_seeds", "register_seed_source",
           "seed_from_record", "seed_sources"]
