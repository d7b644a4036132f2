"""Read, validate and write pairs datasets (DESIGN 6).

A pairs dataset is stored as a Hugging Face `datasets` Arrow directory (`save_to_disk`), a JSONL
file, or a directory of shards (JSONL / JSON / Parquet files and `save_to_disk` sub-directories,
read in name order). TRL's preference formats import directly: `prompt` may be text or a list of
chat messages, `chosen` / `rejected` text or a one-message assistant list, and the "implicit
prompt" form (no `prompt`; `chosen` / `rejected` are whole conversations sharing a prefix) works.

Every row is normalised to

    prompt                    list of {"role", "content"} messages (text becomes one user message)
    chosen, rejected          str (non-empty)
    rejected_prompt           list of messages x' (empty list when absent)
    constraints, corrupted    list (JSON values, usually typed constraints as dicts)
    method                    str ("unknown" when absent)
    meta                      dict (unknown input columns are kept under meta["extra"])
    chosen_weights, rejected_weights                   float32 array per response token, or None
    ref_chosen_token_logps, ref_rejected_token_logps   float32 array per response token, or None

Bad input raises `PairsFormatError` (a `musc_jax.errors.UserError`) naming the file, the row (for
JSONL: `file: line N`, 1-based as an editor counts; Arrow/Parquet/JSON-array rows: `file: row N`,
0-based) and the field. A row whose `chosen` equals its `rejected` under the same prompt is bad
when read for training (it teaches nothing; the builders drop such pairs). With
`on_error="skip"` bad rows are dropped and counted per reason ("field: code"); the counts are
returned in `PairsData.skipped` and logged.

In Arrow, `constraints`, `corrupted` and `meta` are stored as JSON strings (their shape varies from
row to row); in JSONL they are plain JSON values. Both spellings are accepted on reading.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from musc_jax.errors import MissingFileError, UserError

logger = logging.getLogger(__name__)

MESSAGE_FIELDS = ("prompt", "rejected_prompt")
RESPONSE_FIELDS = ("chosen", "rejected")
JSON_LIST_FIELDS = ("constraints", "corrupted")
WEIGHT_FIELDS = ("chosen_weights", "rejected_weights")
REF_LOGP_FIELDS = ("ref_chosen_token_logps", "ref_rejected_token_logps")
TOKEN_FIELDS = WEIGHT_FIELDS + REF_LOGP_FIELDS
FIELDS = ("prompt", "chosen", "rejected", "rejected_prompt", "constraints", "corrupted", "method",
          "meta") + TOKEN_FIELDS

JSONL_NAME = "pairs.jsonl"
_DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
# A log-prob can come out a hair above 0 in low precision; anything larger is a wrong field.
_MAX_LOGP = 1e-3


class PairsFormatError(UserError):
    """A bad row: names the file, the row (or 1-based JSONL line) and the field."""

    def __init__(self, file: str, row: int | None, field: str | None, code: str, reason: str,
                 row_label: str = "row"):
        self.file, self.row, self.field, self.code, self.reason = file, row, field, code, reason
        where = [str(file)]
        if row is not None:
            where.append(f"{row_label} {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(": ".join(where + [reason]))

    @property
    def skip_key(self) -> str:
        """The reason under which a skipped row is counted, e.g. "chosen: empty"."""
        return f"{self.field or 'row'}: {self.code}"


class _Bad(Exception):
    """Internal: a field-level problem, turned into PairsFormatError with the row's location."""

    def __init__(self, field: str | None, code: str, reason: str):
        super().__init__(reason)
        self.field, self.code, self.reason = field, code, reason


@dataclasses.dataclass
class PairsData:
    """Normalised rows plus where each came from and what was skipped."""

    rows: list[dict]
    locations: list[str]              # "file: line 3" (1-based) / "file: row 3", parallel to rows
    skipped: dict[str, int]           # reason ("field: code") -> number of rows skipped
    num_read: int                     # rows read, valid or not

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __iter__(self):
        return iter(self.rows)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


# ----------------------------------------------------------------------------------------------
# Field normalisation


def _messages(value: Any, field: str, allow_empty: bool) -> list[dict]:
    if value is None or (isinstance(value, (str, list, tuple)) and len(value) == 0):
        if allow_empty:
            return []
        raise _Bad(field, "missing" if value is None else "empty",
                   "missing" if value is None else "empty")
    if isinstance(value, str):
        if not value.strip():
            if allow_empty:
                return []
            raise _Bad(field, "empty", "empty (whitespace only)")
        return [{"role": "user", "content": value}]
    if not isinstance(value, (list, tuple)):
        raise _Bad(field, "type", f"expected text or a list of chat messages, got {type(value).__name__}")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, Mapping):
            raise _Bad(field, "type", f"message {j}: expected a dict with 'role' and 'content', "
                                      f"got {type(m).__name__}")
        extra = [k for k, v in m.items() if k not in ("role", "content") and v is not None]
        if extra:
            raise _Bad(field, "type", f"message {j}: unsupported key(s) {extra} (only 'role' and 'content')")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise _Bad(field, "type", f"message {j}: 'role' must be a non-empty string, got {role!r}")
        if not isinstance(content, str):
            raise _Bad(field, "type", f"message {j}: 'content' must be a string, "
                                      f"got {type(content).__name__}")
        out.append({"role": role, "content": content})
    if out[-1]["role"] == "assistant":
        raise _Bad(field, "value", "the last prompt message is an assistant message; a prompt must "
                                   "end with a user (or system) turn")
    return out


def _response(value: Any, field: str) -> str:
    if value is None:
        raise _Bad(field, "missing", "missing")
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise _Bad(field, "type", f"expected text or a list with one assistant message, "
                                      f"got a list of {len(value)}")
        m = value[0]
        if (not isinstance(m, Mapping) or m.get("role") != "assistant"
                or not isinstance(m.get("content"), str)):
            raise _Bad(field, "type", "expected a list with one "
                                      "{'role': 'assistant', 'content': str} message")
        value = m["content"]
    if not isinstance(value, str):
        raise _Bad(field, "type", f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise _Bad(field, "empty", "empty response")
    return value


def _json_value(value: Any, field: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError as e:
            raise _Bad(field, "json", f"invalid JSON string: {e}") from None
    return value


def _json_list(value: Any, field: str) -> list:
    value = _json_value(value, field)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise _Bad(field, "type", f"expected a list, got {type(value).__name__}")
    return list(value)


def _meta(value: Any) -> dict:
    value = _json_value(value, "meta")
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _Bad("meta", "type", f"expected a dict, got {type(value).__name__}")
    return dict(value)


def _token_floats(value: Any, field: str) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)):
        raise _Bad(field, "type", f"expected a list of floats, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise _Bad(field, "type", f"expected a list of floats: {e}") from None
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise _Bad(field, "type", f"expected a flat list of floats, got shape {arr.shape} dtype {arr.dtype}")
    if arr.size == 0:
        raise _Bad(field, "empty", "empty list (it must hold one value per response token)")
    arr = arr.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise _Bad(field, "value", f"non-finite value {arr[bad[0]]} at token {bad[0]}")
    if field in WEIGHT_FIELDS and (arr < 0).any():
        i = int(np.argmax(arr < 0))
        raise _Bad(field, "value", f"negative weight {arr[i]} at token {i}")
    if field in REF_LOGP_FIELDS and (arr > _MAX_LOGP).any():
        i = int(np.argmax(arr > _MAX_LOGP))
        raise _Bad(field, "value", f"log-prob {arr[i]} > 0 at token {i}")
    return arr


def _normalize(raw: Any) -> dict:
    if not isinstance(raw, Mapping):
        raise _Bad(None, "type", f"expected a JSON object (dict) per row, got {type(raw).__name__}")
    chosen, rejected, prompt = raw.get("chosen"), raw.get("rejected"), raw.get("prompt")
    if prompt is None and "prompt" not in raw:
        # TRL's implicit-prompt format: chosen/rejected are whole conversations with a shared prefix.
        if (isinstance(chosen, (list, tuple)) and isinstance(rejected, (list, tuple))
                and len(chosen) >= 2 and len(rejected) >= 2 and list(chosen[:-1]) == list(rejected[:-1])):
            prompt, chosen, rejected = list(chosen[:-1]), [chosen[-1]], [rejected[-1]]
        else:
            raise _Bad("prompt", "missing", "missing (and chosen/rejected are not conversations "
                                            "sharing a prompt prefix)")
    row = {
        "prompt": _messages(prompt, "prompt", allow_empty=False),
        "chosen": _response(chosen, "chosen"),
        "rejected": _response(rejected, "rejected"),
        "rejected_prompt": _messages(raw.get("rejected_prompt"), "rejected_prompt", allow_empty=True),
        "constraints": _json_list(raw.get("constraints"), "constraints"),
        "corrupted": _json_list(raw.get("corrupted"), "corrupted"),
    }
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise _Bad("method", "type", f"expected a string, got {type(method).__name__}")
    row["method"] = method or "unknown"
    meta = _meta(raw.get("meta"))
    extra = {k: v for k, v in raw.items() if k not in FIELDS}
    if extra:
        meta = {**meta, "extra": {**meta.get("extra", {}), **extra}}
    row["meta"] = meta
    for f in TOKEN_FIELDS:
        row[f] = _token_floats(raw.get(f), f)
    return row


def normalize_pair(raw: Mapping, *, file: str = "<rows>", row: int | None = None,
                   row_label: str = "row") -> dict:
    """Validate one raw row and return it normalised; raises `PairsFormatError`."""
    try:
        return _normalize(raw)
    except _Bad as e:
        raise PairsFormatError(str(file), row, e.field, e.code, e.reason, row_label) from None


def refused_for_training(row: Mapping) -> bool:
    """Whether `read_pairs` refuses the normalised `row` for training: chosen equals rejected
    under the same prompt (no `rejected_prompt`, or the same one). `write_pairs` drops (and
    counts) exactly these rows, so a written pairs file never holds a row the trainer refuses."""
    return row["chosen"] == row["rejected"] and row["rejected_prompt"] in ([], row["prompt"])


def _normalize_distinct(raw: Any) -> dict:
    """`_normalize` plus the check a training set needs (`refused_for_training`)."""
    row = _normalize(raw)
    if refused_for_training(row):
        raise _Bad("rejected", "identical", "equals 'chosen' under the same prompt (the pair "
                   "teaches nothing); drop the row, or set data.on_error='skip' to skip and count "
                   "such rows")
    return row


def _normalize_sft(raw: Any) -> dict:
    if not isinstance(raw, Mapping):
        raise _Bad(None, "type", f"expected a JSON object (dict) per row, got {type(raw).__name__}")
    if "prompt" not in raw and "messages" in raw:
        # TRL's conversational language-modeling format: the last message is the response.
        msgs = raw["messages"]
        if not isinstance(msgs, (list, tuple)) or len(msgs) < 2:
            raise _Bad("messages", "type", "expected a list of at least 2 chat messages")
        return {"prompt": _messages(list(msgs[:-1]), "messages", allow_empty=False),
                "response": _response([msgs[-1]], "messages")}
    field = "completion" if "response" not in raw and "completion" in raw else "response"
    return {"prompt": _messages(raw.get("prompt"), "prompt", allow_empty=False),
            "response": _response(raw.get(field), field)}


def normalize_sft_row(raw: Mapping, *, file: str = "<rows>", row: int | None = None,
                      row_label: str = "row") -> dict:
    """Validate an SFT row -> {"prompt": messages, "response": str}.

    Accepts `prompt` + `response`, TRL's prompt-completion spelling `prompt` + `completion` (text or
    a one-message assistant list), or TRL's conversational `messages` (the last message, an
    assistant turn, is the response); raises `PairsFormatError` naming the file, row and field.
    """
    try:
        return _normalize_sft(raw)
    except _Bad as e:
        raise PairsFormatError(str(file), row, e.field, e.code, e.reason, row_label) from None


# ----------------------------------------------------------------------------------------------
# Reading


def _is_arrow_dir(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file()
                                 for n in ("state.json", "dataset_info.json", "dataset_dict.json"))


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_DATA_SUFFIXES)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _iter_json_file(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(row_label, index, raw row or _Bad) for a JSONL file, or a .json file (array or JSON lines)."""
    with _open_text(path) as f:
        head = f.read(4096)
        f.seek(0)
        if path.name.endswith((".json", ".json.gz")) and head.lstrip().startswith("["):
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise PairsFormatError(str(path), None, None, "json", f"invalid JSON: {e}") from None
            for i, raw in enumerate(rows):
                yield "row", i, raw
            return
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue        # blank lines are not rows (but still count as lines)
            try:
                yield "line", i, json.loads(line)
            except json.JSONDecodeError as e:
                yield "line", i, _Bad(None, "json", f"invalid JSON: {e}")


def _iter_dataset_rows(ds) -> Iterator[tuple[str, int, Any]]:
    i = 0
    for batch in ds.iter(batch_size=1024):
        cols = list(batch)
        n = len(batch[cols[0]]) if cols else 0
        for j in range(n):
            yield "row", i, {c: batch[c][j] for c in cols}
            i += 1


def _load_arrow_dir(path: Path, split: str | None):
    import datasets
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise UserError(f"{path}: a DatasetDict with splits {list(ds)}; pass split=...")
            split = next(iter(ds))
        if split not in ds:
            raise UserError(f"{path}: no split {split!r} (splits: {list(ds)})")
        ds = ds[split]
    return ds


def _iter_parquet(path: Path) -> Iterator[tuple[str, int, Any]]:
    import pyarrow.parquet as pq
    i = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for raw in batch.to_pylist():
            yield "row", i, raw
            i += 1


def _sources(path: Path, split: str | None) -> list[tuple[str, Iterator]]:
    if _is_arrow_dir(path):
        return [(str(path), _iter_dataset_rows(_load_arrow_dir(path, split)))]
    if path.is_file():
        if path.name.endswith(".parquet"):
            return [(str(path), _iter_parquet(path))]
        return [(str(path), _iter_json_file(path))]
    if path.is_dir():
        out = []
        for child in sorted(path.iterdir()):
            if _is_arrow_dir(child) or _is_data_file(child):
                out.extend(_sources(child, split))
        if not out:
            raise MissingFileError(f"{path}: no pairs data (no save_to_disk directory, no "
                                   f"{'/'.join(_DATA_SUFFIXES)} shard)")
        return out
    raise MissingFileError(f"{path}: no such file or directory")


def _read(path: str | os.PathLike, on_error: str, split: str | None, normalize) -> PairsData:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path)
    rows, locations = [], []
    skipped: collections.Counter = collections.Counter()
    num_read = 0
    for file, it in _sources(path, split):
        for label, i, raw in it:
            num_read += 1
            try:
                if isinstance(raw, _Bad):
                    raise raw
                rows.append(normalize(raw))
                locations.append(f"{file}: {label} {i}")
            except _Bad as e:
                err = PairsFormatError(file, i, e.field, e.code, e.reason, label)
                if on_error == "raise":
                    raise err from None
                if skipped[err.skip_key] == 0:
                    logger.warning("skipping bad row (first of its kind): %s", err)
                skipped[err.skip_key] += 1
    if skipped:
        logger.warning("%s: skipped %d of %d rows: %s", path, sum(skipped.values()), num_read,
                       dict(sorted(skipped.items())))
    return PairsData(rows=rows, locations=locations, skipped=dict(skipped), num_read=num_read)


def read_pairs(path: str | os.PathLike, on_error: str = "raise", split: str | None = None) -> PairsData:
    """Read and validate a pairs dataset (Arrow dir, JSONL/JSON/Parquet file, or shard directory).

    on_error: "raise" (first bad row raises `PairsFormatError`) or "skip" (bad rows are counted
    per reason in the result's `skipped` and a warning is logged). `split` picks a split of a
    saved DatasetDict (needed only when it has several). Identical chosen/rejected under one
    prompt is a bad row here (reading is for training); `write_pairs` never stores one.
    """
    return _read(path, on_error, split, _normalize_distinct)


def read_sft(path: str | os.PathLike, on_error: str = "raise", split: str | None = None) -> PairsData:
    """Read and validate an SFT dataset (same sources and errors as `read_pairs`).

    Rows become {"prompt": messages, "response": str}; see `normalize_sft_row` for the formats.
    """
    return _read(path, on_error, split, _normalize_sft)


# ----------------------------------------------------------------------------------------------
# Writing


def _features():
    import datasets
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    floats = datasets.List(datasets.Value("float32"))
    return datasets.Features({
        "prompt": datasets.List(message), "chosen": datasets.Value("string"),
        "rejected": datasets.Value("string"), "rejected_prompt": datasets.List(message),
        "constraints": datasets.Value("string"), "corrupted": datasets.Value("string"),
        "method": datasets.Value("string"), "meta": datasets.Value("string"),
        **{f: floats for f in TOKEN_FIELDS},
    })


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def _dumps(value, where: str, field: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    except (TypeError, ValueError) as e:
        raise PairsFormatError(where, None, field, "type", f"not JSON serialisable: {e}") from None


def _to_record(row: dict, where: str, as_json_strings: bool) -> dict:
    rec = {f: row[f] for f in ("prompt", "chosen", "rejected", "rejected_prompt", "method")}
    for f in JSON_LIST_FIELDS + ("meta",):
        s = _dumps(row[f], where, f)
        rec[f] = s if as_json_strings else json.loads(s)
    for f in TOKEN_FIELDS:
        rec[f] = None if row[f] is None else np.asarray(row[f], np.float32).tolist()
    return rec


def _quiet_save(ds, path: Path) -> None:
    """`save_to_disk` without its progress bar (the global setting is restored)."""
    import datasets
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        # An empty table would be saved as zero shards, which load_from_disk cannot read back.
        ds.save_to_disk(str(path), num_shards=1 if len(ds) == 0 else None)
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def to_dataset(rows: Iterable[Mapping]):
    """Validate rows and return them as a `datasets.Dataset` with the pairs schema (as in Arrow)."""
    import datasets
    records = [_to_record(normalize_pair(r, row=i), f"<rows>: row {i}", True) for i, r in enumerate(rows)]
    return datasets.Dataset.from_list(records, features=_features())


def _trainable(rows: list[Mapping], where: str, stats: dict | None) -> list[tuple[int, dict]]:
    """(index, normalised row) for each row the trainer accepts; the others are logged and
    counted in `stats["dropped_untrainable"]` (the key is always set when `stats` is given)."""
    normalised = [normalize_pair(r, row=i) for i, r in enumerate(rows)]
    kept = [(i, r) for i, r in enumerate(normalised) if not refused_for_training(r)]
    dropped = len(normalised) - len(kept)
    if dropped:
        logger.warning("%s: dropped %d of %d pairs whose chosen equals rejected under the same "
                       "prompt (the trainer refuses them)", where, dropped, len(normalised))
    if stats is not None:
        stats["dropped_untrainable"] = stats.get("dropped_untrainable", 0) + dropped
    return kept


def trainable_rows(rows: Iterable[Mapping], where: str = "<rows>",
                   stats: dict | None = None) -> list[Mapping]:
    """The rows (validated, returned as given) without those the trainer refuses
    (`refused_for_training`); how many were dropped is logged and added to
    `stats["dropped_untrainable"]` when `stats` is given."""
    rows = list(rows)
    return [rows[i] for i, _ in _trainable(rows, where, stats)]


def write_pairs(rows: Iterable[Mapping], out_dir: str | os.PathLike, *, overwrite: bool = False,
                jsonl: bool = True, stats: dict | None = None) -> Path:
    """Validate rows and write them to `out_dir` as Arrow (`save_to_disk`) plus a `pairs.jsonl` copy.

    Rows the trainer would refuse (chosen equals rejected under the same prompt) are not written:
    they are counted in `stats["dropped_untrainable"]` (see `trainable_rows`) and logged. The
    directory appears atomically (written next to it, then renamed); an existing `out_dir` is an
    error unless `overwrite`. Returns `out_dir`; `read_pairs(out_dir)` reads the Arrow data.
    """
    import datasets
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists (pass overwrite=True to replace it)")
    kept = _trainable(list(rows), str(out_dir), stats)
    records = [_to_record(r, f"<rows>: row {i}", True) for i, r in kept]
    features = _features()
    # from_list([]) infers an empty schema that contradicts `features`; from_dict keeps it.
    ds = (datasets.Dataset.from_list(records, features=features) if records
          else datasets.Dataset.from_dict({k: [] for k in features}, features=features))
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        _quiet_save(ds, tmp)
        if jsonl:
            with open(tmp / JSONL_NAME, "w", encoding="utf-8") as f:
                for i, r in kept:
                    f.write(json.dumps(_to_record(r, f"<rows>: row {i}", False), ensure_ascii=False) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def write_pairs_jsonl(rows: Iterable[Mapping], path: str | os.PathLike,
                      stats: dict | None = None) -> Path:
    """Validate rows and write them as one JSONL file (plain JSON values, one row a line); rows
    the trainer would refuse are dropped and counted as in `write_pairs`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = _trainable(list(rows), str(path), stats)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, r in kept:
            rec = _to_record(r, f"<rows>: row {i}", False)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def rows_equal(a: Mapping, b: Mapping) -> bool:
    """Whether two normalised rows hold the same data (token arrays compared exactly)."""
    for f in FIELDS:
        x, y = a[f], b[f]
        if f in TOKEN_FIELDS:
            if (x is None) != (y is None) or (x is not None and not np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True


__all__ = ["FIELDS", "PairsData", "PairsFormatError", "normalize_pair", "normalize_sft_row", "read_pairs",
           "read_sft", "refused_for_training", "rows_equal", "to_dataset", "trainable_rows", "write_pairs",
           "write_pairs_jsonl"]
