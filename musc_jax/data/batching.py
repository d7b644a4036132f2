"""Tokenise pairs with the model's chat template and batch them (DESIGN 6, 7).

Tokenisation (`ChatEncoder`): prompt ids = the chat template applied to the prompt with
`add_generation_prompt=True`; full ids = the template applied to prompt + [assistant response].
The prompt/response boundary is found in token space: the prompt ids must be a prefix of the full
ids (a template that breaks this is an error, never patched by cutting characters). Exactly one
BOS: a duplicated leading BOS is stripped; one is added where the tokenizer would add it. The
response ends with the template's end-of-turn token (tokens the template writes after it, such as a
newline, are dropped; where the template writes none the EOS token is appended).

Sequences per pair: "chosen" (x + y+), "rejected" (x + y-) and, with `alt_sequences`,
"chosen_alt" (x' + y+) and "rejected_alt" (x' + y-) for token-weight computation (DESIGN 5.2).

Batch layout (numpy, right-padded; T is a length bucket (`bucket_lengths`): a multiple of `bucket`,
at most `max_length` rounded up to one, from at most `max_buckets` geometrically spaced lengths):

    {s}_ids [B, T] int32, {s}_mask [B, T] int32, {s}_response_mask [B, T] float32
        for s in chosen, rejected (, chosen_alt, rejected_alt)
    chosen_weights, rejected_weights, ref_chosen_token_logps, ref_rejected_token_logps
        [B, T] float32, present when the rows carry them; 0 off the response
    has_alt [B] float32 (with alt sequences: 1 where the row has its own x'; else x' = x)
    index [B] int32 (position of the example in the tokenised list)

Index t of every per-token array refers to token ids[:, t] (predicted from the logits at t - 1):
response_mask is 1 exactly at the response tokens' positions, and stored per-token values sit
there too. The SFT layout (`collate_sft`) has `ids`, `mask`, `response_mask`, `index`.

Stored per-token fields hold one value per response token as `ChatEncoder.response_ids` gives them
(end-of-turn token included, before any truncation); a length mismatch (e.g. values computed with
another tokenizer) is an error naming the row and field. Producers should compute them from
`tokenize_pair` examples built with truncation "error" or "skip".
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from musc_jax.data import pairs_io
from musc_jax.errors import UserError

logger = logging.getLogger(__name__)

TRUNCATION_POLICIES = ("error", "skip", "truncate")
PAIR_SEQUENCES = ("chosen", "rejected")
ALT_SEQUENCES = ("chosen_alt", "rejected_alt")
# Stored per-token field -> the response it follows.
TOKEN_FIELD_RESPONSE = {"chosen_weights": "chosen", "rejected_weights": "rejected",
                        "ref_chosen_token_logps": "chosen", "ref_rejected_token_logps": "rejected"}


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Tokenisation, truncation and padding settings.

    max_length: longest sequence (prompt + response) in tokens.
    max_prompt_length: longest prompt in tokens (< max_length).
    truncation: "error" (a too-long example raises, naming the row and the lengths), "skip"
        (dropped and counted) or "truncate" (keep BOS + the last prompt tokens up to
        max_prompt_length, then cut the response to fit max_length).
    alt_sequences: also build chosen_alt / rejected_alt (x' + y) for token-weight computation.
    bucket: padded lengths are multiples of this (the largest: max_length rounded up to one).
    add_bos: None = as the tokenizer does (its template writes BOS or its plain encoding adds it).
    end_token: the end-of-turn token; None = found from the chat template (else EOS).
    sanitize_control_tokens: encode special-token strings inside messages as text.
    """

    max_length: int = 1024
    max_prompt_length: int = 512
    truncation: str = "error"
    alt_sequences: bool = False
    bucket: int = 64
    add_bos: bool | None = None
    end_token: str | None = None
    sanitize_control_tokens: bool = True

    def __post_init__(self):
        if self.truncation not in TRUNCATION_POLICIES:
            raise UserError(f"truncation={self.truncation!r}: choose one of "
                            f"{', '.join(map(repr, TRUNCATION_POLICIES))}")
        if not 0 < self.max_prompt_length < self.max_length:
            raise UserError(f"max_prompt_length={self.max_prompt_length}, max_length="
                            f"{self.max_length}: need 0 < max_prompt_length < max_length")
        if self.bucket < 1:
            raise UserError(f"bucket={self.bucket}: must be >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchingConfig:
        """Build from a mapping (e.g. an ml_collections ConfigDict); an unknown key is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        items = dict(d.items())
        unknown = sorted(set(items) - names)
        if unknown:
            raise UserError(f"unknown batching config key(s) {unknown}; known: {sorted(names)}")
        return cls(**items)


class BatchingError(UserError):
    """Bad tokenised data or tokenizer: names the row (and field), or the tokenizer, at fault."""


class TemplateBoundaryError(BatchingError):
    """The chat template's generation prompt is not a token prefix of the full conversation."""


class TooLongError(BatchingError):
    """An example exceeds max_length / max_prompt_length under truncation="error" (or "skip")."""


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _geometric(bucket: int, top: int, growth: float) -> list[int]:
    """bucket, g(bucket), g(g(bucket)), ... up to `top`, where g(b) is b * growth rounded up to
    a multiple of `bucket` (and at least b + bucket)."""
    out = [bucket]
    while out[-1] < top:
        out.append(min(max(out[-1] + bucket, _round_up(math.ceil(out[-1] * growth), bucket)), top))
    return out


@functools.lru_cache(maxsize=64)
def bucket_lengths(bucket: int, max_length: int, max_buckets: int = 0) -> tuple[int, ...]:
    """The padded lengths a run can use (each a shape the train step compiles for).

    Every length is a multiple of `bucket` (the block size attention kernels need); the largest
    is `max_length` rounded up to a multiple of `bucket`. max_buckets = 0: every multiple of
    `bucket` (max_length 4096, bucket 64: 64 shapes). max_buckets = k > 0: at most k lengths,
    spaced geometrically (each about `growth` times the last, rounded up to a multiple of
    `bucket`) with the smallest growth that keeps k or fewer, so short lengths stay fine-grained
    and a run compiles a handful of shapes; k = 1 pads every batch to the full length.
    """
    if bucket < 1 or max_length < 1 or max_buckets < 0:
        raise ValueError(f"need bucket >= 1, max_length >= 1, max_buckets >= 0; got {bucket}, "
                         f"{max_length}, {max_buckets}")
    top = _round_up(max_length, bucket)
    if max_buckets == 1:
        return (top,)
    every = tuple(range(bucket, top + 1, bucket))
    if max_buckets == 0 or len(every) <= max_buckets:
        return every
    # The count of lengths never grows with `growth`: bisect for the smallest growth that fits.
    lo, hi = 1.0, top / bucket
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if len(_geometric(bucket, top, mid)) <= max_buckets else (mid, hi)
    return tuple(_geometric(bucket, top, hi))


def bucket_length(n: int, bucket: int, max_length: int | None = None, max_buckets: int = 0) -> int:
    """The padded length of a batch whose longest sequence has `n` tokens: the smallest of
    `bucket_lengths(bucket, max_length, max_buckets)` that holds it (without `max_length`:
    `n` rounded up to a multiple of `bucket`). Longer than every length: the largest."""
    n = max(int(n), 1)
    if max_length is None:
        return _round_up(n, bucket)
    lengths = bucket_lengths(bucket, max_length, max_buckets)
    return lengths[min(bisect.bisect_left(lengths, n), len(lengths) - 1)]


def logits_window(prompt_lengths: Sequence[int], length: int, parts: int) -> int | None:
    """How many of the last hidden states the LM head must project for a batch padded to
    `length` whose responses start after prompts of `prompt_lengths` tokens; None = all of them.

    State t predicts token t + 1, so a response that starts at token p needs states p-1 .. and a
    batch needs its last `length - min(prompt_lengths)` states. The window is rounded up to the
    next of `ceil(k * length / parts)`, k = 1 .. parts - 1, so each padded length compiles at
    most `parts` windows (shapes); `parts` <= 1, or a window that would cover every state: None.
    """
    if parts <= 1 or not len(prompt_lengths):
        return None
    need = length - min(int(n) for n in prompt_lengths)
    for k in range(1, parts):
        w = -(-k * length // parts)
        if w >= need:
            return w if w < length - 1 else None
    return None


# ----------------------------------------------------------------------------------------------
# Chat-template encoding


def _tokenizer_prefix(tokenizer) -> str:
    """"<where the tokenizer was loaded from>: " for messages about the tokenizer itself."""
    name = getattr(tokenizer, "name_or_path", "")
    return f"{name}: " if name else ""


class ChatEncoder:
    """Token ids of prompts and responses under a tokenizer's chat template (see module doc)."""

    def __init__(self, tokenizer, config: BatchingConfig | None = None):
        self.tokenizer = tokenizer
        self.config = config = config or BatchingConfig()
        src = _tokenizer_prefix(tokenizer)
        if not getattr(tokenizer, "chat_template", None):
            raise BatchingError(f"{src}the tokenizer has no chat_template; pairs are tokenised "
                                "with the model's chat template: add one to tokenizer_config.json "
                                "(chat_template) or set model.tokenizer to a tokenizer that has one")
        self.bos_id = tokenizer.bos_token_id
        self._control_re = None
        self.pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None))
        probe = [{"role": "user", "content": "Hello"}]
        if config.add_bos is not None:
            self.add_bos = bool(config.add_bos) and self.bos_id is not None
        elif self.bos_id is None:
            self.add_bos = False
        else:
            rendered = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
            plain = tokenizer("Hello")["input_ids"]
            self.add_bos = rendered.startswith(tokenizer.bos_token) or plain[:1] == [self.bos_id]
        if self.add_bos and self.bos_id is None:
            raise BatchingError(f"{src}add_bos=True but the tokenizer has no BOS token; set "
                                "add_bos to None or False")
        with_gen = self._render(probe, True)
        if with_gen == self._render(probe, False):
            raise BatchingError(f"{src}the chat template ignores add_generation_prompt (no "
                                "assistant header is written), so the prompt/response boundary "
                                "cannot be found; fix the template to write the assistant header")
        self.end_id, self.template_writes_end = self._find_end(probe, with_gen)

    def _needs_sanitizing(self, messages: list[dict]) -> bool:
        """Whether some message text contains an added/special token's string (rare; slow path)."""
        if not self.config.sanitize_control_tokens:
            return False
        if self._control_re is None:
            strings = sorted({t.content for t in self.tokenizer.added_tokens_decoder.values()} |
                             set(self.tokenizer.all_special_tokens), key=len, reverse=True)
            self._control_re = re.compile("|".join(re.escape(t) for t in strings if t) or r"(?!x)x")
        return any(self._control_re.search(m["content"]) for m in messages)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False,
            sanitize_control_tokens=self._needs_sanitizing(messages))
        ids = [int(i) for i in ids]
        if self.bos_id is not None:
            k = 0
            while k < len(ids) and ids[k] == self.bos_id:
                k += 1
            if self.add_bos:
                ids = [self.bos_id] + ids[k:]
            elif k > 1:
                ids = ids[k - 1:]
        return ids

    def _find_end(self, probe, prompt_ids) -> tuple[int, bool]:
        full = self._render(probe + [{"role": "assistant", "content": "Fine"}], False)
        tail = full[len(prompt_ids):]
        if self.config.end_token is not None:
            end_id = self.tokenizer.convert_tokens_to_ids(self.config.end_token)
            if end_id is None or end_id == self.tokenizer.unk_token_id:
                raise BatchingError(f"{_tokenizer_prefix(self.tokenizer)}end_token "
                                    f"{self.config.end_token!r} is not in the vocabulary; name one "
                                    "of its tokens")
            return int(end_id), end_id in tail
        special = set(self.tokenizer.all_special_ids)
        for t in tail:
            if t in special:
                return int(t), True
        if self.tokenizer.eos_token_id is None:
            raise BatchingError(f"{_tokenizer_prefix(self.tokenizer)}the chat template "
                                "writes no end-of-turn token and the tokenizer has no EOS token; "
                                "set BatchingConfig.end_token")
        return int(self.tokenizer.eos_token_id), False

    def prompt_ids(self, prompt: list[dict]) -> np.ndarray:
        """Ids of the prompt with the generation prompt (assistant header), exactly one BOS."""
        return np.asarray(self._render(list(prompt), True), np.int32)

    def response_ids(self, prompt: list[dict], prompt_ids: np.ndarray, response: str,
                     where: str = "row ?", field: str = "response") -> np.ndarray:
        """Ids of `response` after `prompt`, ending with the end-of-turn token.

        Found in token space: the ids of prompt + [assistant response] must start with `prompt_ids`.
        """
        full = self._render(list(prompt) + [{"role": "assistant", "content": response}], False)
        n = len(prompt_ids)
        if full[:n] != prompt_ids.tolist():
            k = next((i for i, (a, b) in enumerate(zip(full, prompt_ids.tolist())) if a != b),
                     min(n, len(full)))
            dec = self.tokenizer.convert_ids_to_tokens
            raise TemplateBoundaryError(
                f"{where}: field {field!r}: the chat template's generation prompt is not a token prefix "
                f"of the conversation with the response (first difference at token {k}: prompt has "
                f"{dec(prompt_ids.tolist()[k:k + 3])}, conversation has {dec(full[k:k + 3])}); the "
                f"prompt/response boundary cannot be found in token space. Fix the chat template "
                f"(add_generation_prompt must render exactly the start of the assistant turn).")
        tail = full[n:]
        if self.template_writes_end:
            ends = [i for i, t in enumerate(tail) if t == self.end_id]
            if not ends:
                raise BatchingError(f"{where}: field {field!r}: the chat template wrote no end-of-turn "
                                    f"token {self.tokenizer.convert_ids_to_tokens(self.end_id)!r} "
                                    f"after the response")
            tail = tail[:ends[-1] + 1]
        else:
            tail = tail + [self.end_id]
        if len(tail) < 2:
            raise BatchingError(f"{where}: field {field!r}: the response encodes to no tokens")
        return np.asarray(tail, np.int32)


def end_of_turn_token_id(tokenizer) -> int:
    """The token that closes an assistant turn under the tokenizer's chat template (stop token)."""
    return ChatEncoder(tokenizer).end_id


# ----------------------------------------------------------------------------------------------
# Examples


@dataclasses.dataclass
class PairExample:
    """One tokenised pair; `token_fields` hold per-response-token values (weights, ref log-probs)."""

    where: str
    prompt_ids: np.ndarray
    chosen_ids: np.ndarray            # response tokens y+ (ending with the end-of-turn token)
    rejected_ids: np.ndarray          # response tokens y-
    alt_prompt_ids: np.ndarray | None = None
    has_alt: bool = False
    token_fields: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def sequences(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Sequence name -> (prompt ids, response ids)."""
        out = {"chosen": (self.prompt_ids, self.chosen_ids), "rejected": (self.prompt_ids, self.rejected_ids)}
        if self.alt_prompt_ids is not None:
            out["chosen_alt"] = (self.alt_prompt_ids, self.chosen_ids)
            out["rejected_alt"] = (self.alt_prompt_ids, self.rejected_ids)
        return out

    @property
    def length(self) -> int:
        return max(len(p) + len(r) for p, r in self.sequences().values())


@dataclasses.dataclass
class SftExample:
    """One tokenised (prompt, response) row for the SFT objective."""

    where: str
    prompt_ids: np.ndarray
    response_ids: np.ndarray

    def sequences(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {"": (self.prompt_ids, self.response_ids)}

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclasses.dataclass
class Tokenized:
    """Tokenised examples plus what was skipped / truncated (counts per reason)."""

    examples: list
    skipped: dict[str, int]
    stats: dict[str, int]
    pad_id: int

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]

    def __iter__(self):
        return iter(self.examples)


def _keep_last(ids: np.ndarray, n: int, bos_id: int | None) -> np.ndarray:
    """The last `n` tokens, keeping a leading BOS."""
    if len(ids) <= n:
        return ids
    if bos_id is not None and len(ids) and ids[0] == bos_id:
        return np.concatenate([ids[:1], ids[len(ids) - (n - 1):]])
    return ids[len(ids) - n:]


def _fit(prompts: dict[str, np.ndarray], responses: dict[str, np.ndarray], cfg: BatchingConfig,
         bos_id: int | None, where: str, stats: collections.Counter):
    """Apply the truncation policy; `prompts`/`responses` are name -> ids (all pairings used)."""
    too_long = []
    for pn, p in prompts.items():
        if len(p) > cfg.max_prompt_length:
            too_long.append(f"{pn} has {len(p)} tokens > max_prompt_length {cfg.max_prompt_length}")
        for rn, r in responses.items():
            if len(p) + len(r) > cfg.max_length:
                too_long.append(f"{pn} + {rn} = {len(p)} + {len(r)} = {len(p) + len(r)} tokens "
                                f"> max_length {cfg.max_length}")
    if not too_long:
        return prompts, responses
    if cfg.truncation != "truncate":
        raise TooLongError(f"{where}: too long ({'; '.join(too_long)}); truncation policy "
                           f"{cfg.truncation!r}")
    if any(len(p) > cfg.max_prompt_length for p in prompts.values()):
        stats["truncated_prompt"] += 1
        prompts = {k: _keep_last(p, cfg.max_prompt_length, bos_id) for k, p in prompts.items()}
    room = cfg.max_length - max(len(p) for p in prompts.values())
    if any(len(r) > room for r in responses.values()):
        stats["truncated_response"] += 1
        responses = {k: r[:room] for k, r in responses.items()}
    return prompts, responses


def tokenize_pair(row: Mapping, encoder: ChatEncoder, where: str = "row 0",
                  stats: collections.Counter | None = None) -> PairExample:
    """Tokenise one (normalised or raw) pairs row; raises BatchingError / TooLongError."""
    cfg = encoder.config
    stats = stats if stats is not None else collections.Counter()
    row = pairs_io.normalize_pair(row, file=where)
    x = encoder.prompt_ids(row["prompt"])
    responses = {f: encoder.response_ids(row["prompt"], x, row[f], where, f) for f in PAIR_SEQUENCES}
    prompts = {"prompt": x}
    has_alt = False
    if cfg.alt_sequences:
        has_alt = bool(row["rejected_prompt"])
        alt_msgs = row["rejected_prompt"] if has_alt else row["prompt"]
        xa = encoder.prompt_ids(alt_msgs)
        for f in PAIR_SEQUENCES:
            ya = encoder.response_ids(alt_msgs, xa, row[f], where, f)
            if not np.array_equal(ya, responses[f]):
                raise BatchingError(f"{where}: field {f!r}: the response tokenises differently after "
                                    f"rejected_prompt than after prompt, so per-token weights cannot "
                                    f"be aligned")
        prompts["rejected_prompt"] = xa
        if not has_alt:
            stats["no_rejected_prompt"] += 1
    token_fields = {}
    for f, resp in TOKEN_FIELD_RESPONSE.items():
        v = row.get(f)
        if v is None:
            continue
        if len(v) != len(responses[resp]):
            raise BatchingError(
                f"{where}: field {f!r} has {len(v)} values but the {resp} response has "
                f"{len(responses[resp])} tokens under this tokenizer and chat template (one value per "
                f"response token, end-of-turn token included); were they computed with another "
                f"tokenizer or template?")
        token_fields[f] = np.asarray(v, np.float32)
    prompts, responses = _fit(prompts, responses, cfg, encoder.bos_id, where, stats)
    token_fields = {f: v[:len(responses[TOKEN_FIELD_RESPONSE[f]])] for f, v in token_fields.items()}
    return PairExample(where=where, prompt_ids=prompts["prompt"], chosen_ids=responses["chosen"],
                       rejected_ids=responses["rejected"], alt_prompt_ids=prompts.get("rejected_prompt"),
                       has_alt=has_alt, token_fields=token_fields)


def _locations(rows, locations) -> list[str]:
    if locations is None:
        locations = getattr(rows, "locations", None)
    return list(locations) if locations is not None else [f"row {i}" for i in range(len(rows))]


def _tokenize_all(rows, locations, cfg: BatchingConfig, one: Callable, encoder: ChatEncoder) -> Tokenized:
    examples, skipped, stats = [], collections.Counter(), collections.Counter()
    for row, where in zip(rows, _locations(rows, locations), strict=True):
        try:
            examples.append(one(row, encoder, where, stats))
        except TooLongError as e:
            if cfg.truncation != "skip":
                raise
            if not skipped:
                logger.warning("skipping too-long example (first of its kind): %s", e)
            skipped["too_long"] += 1
    if skipped or stats:
        logger.warning("tokenised %d of %d rows (skipped: %s; noted: %s)", len(examples), len(rows),
                       dict(skipped) or "none", dict(stats))
    return Tokenized(examples=examples, skipped=dict(skipped), stats=dict(stats), pad_id=encoder.pad_id)


def _encoder(tokenizer, config: BatchingConfig | None) -> ChatEncoder:
    if isinstance(tokenizer, ChatEncoder):
        if config is not None and config != tokenizer.config:
            raise ValueError("pass either a ChatEncoder or a config, not an encoder with another config")
        return tokenizer
    return ChatEncoder(tokenizer, config)


def tokenize_pairs(rows: Sequence[Mapping] | pairs_io.PairsData, tokenizer,
                   config: BatchingConfig | None = None, locations: Sequence[str] | None = None) -> Tokenized:
    """Tokenise pairs rows (a `PairsData` names file and line in errors); skips are counted."""
    encoder = _encoder(tokenizer, config)
    return _tokenize_all(rows, locations, encoder.config, tokenize_pair, encoder)


def tokenize_sft_row(row: Mapping, encoder: ChatEncoder, where: str = "row 0",
                     stats: collections.Counter | None = None) -> SftExample:
    """Tokenise one SFT row ({"prompt", "response" | "completion"})."""
    stats = stats if stats is not None else collections.Counter()
    row = pairs_io.normalize_sft_row(row, file=where)
    x = encoder.prompt_ids(row["prompt"])
    y = encoder.response_ids(row["prompt"], x, row["response"], where, "response")
    prompts, responses = _fit({"prompt": x}, {"response": y}, encoder.config, encoder.bos_id, where, stats)
    return SftExample(where=where, prompt_ids=prompts["prompt"], response_ids=responses["response"])


def tokenize_sft(rows: Sequence[Mapping], tokenizer, config: BatchingConfig | None = None,
                 locations: Sequence[str] | None = None) -> Tokenized:
    """Tokenise SFT rows with the chat template; skips are counted."""
    encoder = _encoder(tokenizer, config)
    return _tokenize_all(rows, locations, encoder.config, tokenize_sft_row, encoder)


# ----------------------------------------------------------------------------------------------
# Collation


def _place(examples, length: int, pad_id: int, out: dict) -> None:
    """Write each example's sequences into `{name}_ids/_mask/_response_mask` (SFT: `ids`, ...)."""
    b = len(examples)
    seqs = [ex.sequences() for ex in examples]
    for name in seqs[0]:
        key = f"{name}_" if name else ""
        ids = np.full((b, length), pad_id, np.int32)
        mask = np.zeros((b, length), np.int32)
        resp = np.zeros((b, length), np.float32)
        for i, ex in enumerate(examples):
            p, r = seqs[i][name]
            n = len(p) + len(r)
            if n > length:
                raise BatchingError(f"{ex.where}: sequence {name or 'sft'} has {n} tokens > "
                                    f"batch length {length}")
            ids[i, :len(p)] = p
            ids[i, len(p):n] = r
            mask[i, :n] = 1
            resp[i, len(p):n] = 1.0
        out[f"{key}ids"], out[f"{key}mask"], out[f"{key}response_mask"] = ids, mask, resp


def collate_pairs(examples: Sequence[PairExample], length: int | None = None, *, bucket: int = 64,
                  max_length: int | None = None, pad_id: int = 0,
                  indices: Sequence[int] | None = None,
                  max_buckets: int = 0) -> dict[str, np.ndarray]:
    """Right-padded pair batch (keys in the module doc); T = `length` or the bucketed max length."""
    if not examples:
        raise BatchingError("cannot collate an empty batch")
    if length is None:
        length = bucket_length(max(ex.length for ex in examples), bucket, max_length, max_buckets)
    first = examples[0]
    for ex in examples[1:]:
        if (ex.alt_prompt_ids is None) != (first.alt_prompt_ids is None):
            raise BatchingError(f"{ex.where}: alt sequences present on some examples but not others "
                                f"(compare {first.where})")
        if set(ex.token_fields) != set(first.token_fields):
            diff = sorted(set(ex.token_fields) ^ set(first.token_fields))
            raise BatchingError(f"{ex.where}: field(s) {diff} present on some rows but not others "
                                f"(compare {first.where}); per-token fields must be on all rows or none")
    out: dict[str, np.ndarray] = {}
    _place(examples, length, pad_id, out)
    for f, resp in TOKEN_FIELD_RESPONSE.items():
        if f not in first.token_fields:
            continue
        arr = np.zeros((len(examples), length), np.float32)
        for i, ex in enumerate(examples):
            v = ex.token_fields[f]
            start = len(ex.prompt_ids)
            arr[i, start:start + len(v)] = v
        out[f] = arr
    if first.alt_prompt_ids is not None:
        out["has_alt"] = np.asarray([ex.has_alt for ex in examples], np.float32)
    out["index"] = np.asarray(indices if indices is not None else range(len(examples)), np.int32)
    return out


def collate_sft(examples: Sequence[SftExample], length: int | None = None, *, bucket: int = 64,
                max_length: int | None = None, pad_id: int = 0,
                indices: Sequence[int] | None = None,
                max_buckets: int = 0) -> dict[str, np.ndarray]:
    """Right-padded SFT batch: `ids`, `mask` [B, T] int32, `response_mask` [B, T] float32, `index`."""
    if not examples:
        raise BatchingError("cannot collate an empty batch")
    if length is None:
        length = bucket_length(max(ex.length for ex in examples), bucket, max_length, max_buckets)
    out: dict[str, np.ndarray] = {}
    _place(examples, length, pad_id, out)
    out["index"] = np.asarray(indices if indices is not None else range(len(examples)), np.int32)
    return out


def collate(examples, length=None, **kw) -> dict[str, np.ndarray]:
    """`collate_pairs` or `collate_sft`, by example type."""
    fn = collate_sft if isinstance(examples[0], SftExample) else collate_pairs
    return fn(examples, length, **kw)


# ----------------------------------------------------------------------------------------------
# Iteration


class PairLoader:
    """Deterministic, resumable batch iterator over tokenised examples (pairs or SFT).

    The order of epoch e is a pure function of (seed, e): a permutation of the examples (or the
    identity when shuffle=False), cut into global batches of `batch_size`. With `sort_window=k`,
    each run of k batches' worth of examples is sorted by length before cutting (less padding) and
    the batch order is then shuffled; still a pure function of (seed, e). Batches are padded to
    `bucket_length(longest, bucket, max_length, max_buckets)`. Every process builds the
    same global batches; with process_count > 1 each yields its own contiguous block of
    batch_size // process_count rows, padded to the length bucketed over the whole global batch
    (so all processes agree on shapes). `state()` / `restore()` resume exactly.

    Each batch also carries `logits_window` (host-side, 0-d int32): `logits_window(...)` of its
    global batch with `logits_windows` parts, 0 = every position (see the trainer).

    The loader is an infinite iterator over epochs unless `num_epochs` is given.
    """

    def __init__(self, examples: Sequence, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, process_index: int = 0, process_count: int = 1, *,
                 bucket: int | None = None, max_length: int | None = None, pad_id: int | None = None,
                 sort_window: int = 0, num_epochs: int | None = None, max_buckets: int = 0,
                 logits_windows: int = 1):
        if pad_id is None:
            pad_id = getattr(examples, "pad_id", 0)
        examples = examples.examples if isinstance(examples, Tokenized) else list(examples)
        n = len(examples)
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of "
                             f"process_count {process_count}")
        if max_buckets < 0:
            raise ValueError(f"max_buckets must be >= 0 (0 = every multiple of bucket), got {max_buckets}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        if n == 0 or (drop_last and n < batch_size):
            raise ValueError(f"{n} examples cannot fill a batch of {batch_size} (drop_last={drop_last})")
        if not drop_last and process_count > 1 and (n % batch_size) % process_count:
            raise ValueError(f"the last partial batch ({n % batch_size} rows) cannot be split over "
                             f"{process_count} processes; use drop_last=True")
        self.examples = examples
        self.lengths = np.asarray([ex.length for ex in examples], np.int64)
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, int(seed), shuffle, drop_last
        self.process_index, self.process_count = process_index, process_count
        self.bucket = bucket or 64
        self.max_buckets = int(max_buckets)
        self.max_length = max_length
        self.pad_id = pad_id
        self.sort_window = sort_window
        self.num_epochs = num_epochs
        self.logits_windows = int(logits_windows)
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.examples)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The global batches (example indices) of `epoch`, in order."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n, bs = len(self.examples), self.batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.sort_window > 0:
            w = self.sort_window * bs
            windows = [order[s:s + w] for s in range(0, n, w)]
            order = np.concatenate([o[np.argsort(-self.lengths[o], kind="stable")] for o in windows])
        batches = [order[s:s + bs] for s in range(0, n, bs)]
        if len(batches[-1]) < bs and self.drop_last:
            batches.pop()
        if self.sort_window > 0 and self.shuffle:
            full = [b for b in batches if len(b) == bs]
            batches = [full[i] for i in rng.permutation(len(full))] + batches[len(full):]
        self._cache = (epoch, batches)
        return batches

    def state(self) -> dict:
        """Where the next batch comes from: {"epoch", "position"} (plus seed/size for checks)."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": len(self.examples), "batch_size": self.batch_size}

    def restore(self, state: Mapping) -> None:
        """Continue from `state()` of an earlier run over the same examples and settings."""
        mine_all = {"seed": self.seed, "num_examples": len(self.examples), "batch_size": self.batch_size}
        for k, mine in mine_all.items():
            if k in state and int(state[k]) != mine:
                raise ValueError(f"loader state has {k}={state[k]} but this loader has {k}={mine}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"loader state position {position} out of range [0, {len(self)}]")
        self.epoch, self.position = epoch, position

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= len(self):           # a restored end-of-epoch state
            self.epoch, self.position = self.epoch + 1, 0
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        idx = self.epoch_batches(self.epoch)[self.position]
        self.position += 1
        if self.position == len(self):
            self.epoch, self.position = self.epoch + 1, 0
        length = bucket_length(int(self.lengths[idx].max()), self.bucket, self.max_length,
                               self.max_buckets)
        local = len(idx) // self.process_count
        mine = idx[self.process_index * local:(self.process_index + 1) * local]
        out = collate([self.examples[i] for i in mine], length, pad_id=self.pad_id, indices=mine)
        # Over the global batch, like the length, so that every process compiles the same step.
        window = logits_window([len(self.examples[i].prompt_ids) for i in idx], length,
                               self.logits_windows)
        out["logits_window"] = np.asarray(window or 0, np.int32)
        return out


__all__ = ["BatchingConfig", "BatchingError", "ChatEncoder", "PairExample", "PairLoader", "SftExample",
           "TemplateBoundaryError", "TooLongError", "Tokenized", "bucket_length", "bucket_lengths",
           "collate", "collate_pairs", "collate_sft", "end_of_turn_token_id", "logits_window", "tokenize_pair", "tokenize_pairs", "tokenize_sft",
           "tokenize_sft_row"]
