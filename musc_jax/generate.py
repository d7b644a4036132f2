"""Batched sampling: `generate` (token ids) and `generate_text` (chat conversations).

The default engine does continuous batching over a fixed set of decode slots
(`musc_jax.engine.continuous`): a row that ends (EOS / stop token / its token budget) hands its
slot to the next prompt at once, prompts are prefilled in chunks attending only to themselves,
and the KV cache is laid out so decode steps update and read it in place. `engine="static"`
runs the former engine (one left-padded batch decoded until its longest row ends), kept for
comparison in bench/generate.py.

Temperature, top-k and top-p are traced values, so changing them does not recompile; only
switching a filter on or off (or greedy on or off) selects another compiled variant. Row r
(prompt-major: rows [i*n:(i+1)*n] are prompt i's samples) draws its token t from the key
fold_in(fold_in(key(seed), r), t), so a row's sample does not depend on the batch, the slot it
ran in or the other rows; both engines give the same samples.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from musc_jax.engine import cpu_kernels
from musc_jax.engine.buckets import _EOS_SLOTS, bucket_batch, bucket_length, stop_id_array  # noqa: F401
from musc_jax.engine.continuous import DEFAULT_MAX_SLOTS, EngineStats, generate_continuous
from musc_jax.engine.counters import TRACE_COUNTS  # noqa: F401
from musc_jax.engine.sampling import (SamplingMode, apply_temperature, filter_logits,  # noqa: F401
                                      top_k_filter, top_p_filter)
# the static engine's compiled loop, also lowered by musc_jax.aot for memory estimates
from musc_jax.engine.static import _compiled, _Static, generate_static  # noqa: F401

ENGINES = ("continuous", "static")


@dataclasses.dataclass
class GenerateOutput:
    """tokens [B*n, T_new] int32 (EOS included, pad after); lengths [B*n] (EOS counted).

    T_new is max_new_tokens (the largest one when given per prompt). `stats`: the continuous
    engine's work accounting (None for the static engine).
    """

    tokens: np.ndarray
    lengths: np.ndarray
    stats: EngineStats | None = None


def generate(model, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             eos_token_id: int | Sequence[int] | None = None, seed: int = 0,
             num_samples: int = 1, pad_token_id: int = 0, mesh: Mesh | None = None,
             engine: str = "continuous", max_slots: int = DEFAULT_MAX_SLOTS) -> GenerateOutput:
    """Sample up to `max_new_tokens` continuations of each prompt (a list of token-id lists).

    temperature == 0 is greedy. Rows stop at their own EOS (an id or a list of ids) and are
    padded with `pad_token_id` after it. `max_new_tokens` is an int or one int per prompt.
    Output rows are prompt-major: rows [i*n:(i+1)*n] are the `num_samples` samples of prompt i.
    With `mesh`, slots (rows) are sharded over ("data", "fsdp"). `max_slots`: decode slots of
    the continuous engine (rows beyond it wait for a free slot).
    """
    prompts = [list(map(int, p)) for p in prompt_ids]
    if not prompts:
        raise ValueError("prompt_ids is empty")
    if isinstance(max_new_tokens, (int, np.integer)):
        budgets = [int(max_new_tokens)] * len(prompts)
    else:
        budgets = [int(b) for b in max_new_tokens]
        if len(budgets) != len(prompts):
            raise ValueError(f"max_new_tokens has {len(budgets)} entries for {len(prompts)} "
                             f"prompts: give one int, or one per prompt")
    if min(budgets) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {min(budgets)}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: choose one of {', '.join(ENGINES)}")
    if max_slots < 1:
        raise ValueError(f"max_slots must be >= 1, got {max_slots}")
    vocab = model.config.vocab_size
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty (a prompt needs at least one token, e.g. BOS)")
        if any(t < 0 or t >= vocab for t in p):
            raise ValueError(f"prompt {i}: token ids must be in [0, {vocab}), got {p}")

    rows = [p for p in prompts for _ in range(num_samples)]
    row_budgets = [b for b in budgets for _ in range(num_samples)]
    greedy, use_top_k, use_top_p = temperature == 0, 0 < top_k < vocab, top_p < 1.0
    # the top-k / top-p cut by the CPU kernel on one CPU device (both engines: same samples)
    kernel = (mesh is None and not greedy and (use_top_k or use_top_p)
              and cpu_kernels.decode_kernels_available(jnp.float32))
    mode = SamplingMode(greedy, use_top_k, use_top_p, kernel)
    common = dict(seed=seed, stop_ids=stop_id_array(eos_token_id), pad=int(pad_token_id),
                  temperature=temperature if temperature > 0 else 1.0, top_k=int(top_k),
                  top_p=float(top_p), mode=mode, mesh=mesh)
    if engine == "static":
        if len(set(budgets)) > 1:
            raise ValueError("engine='static' takes one max_new_tokens for all prompts")
        tokens, lengths = generate_static(model, rows, budgets[0], **common)
        return GenerateOutput(tokens=tokens, lengths=lengths)
    stats = EngineStats()
    tokens, lengths = generate_continuous(model, rows, row_budgets, max_slots=max_slots,
                                          stats=stats, **common)
    return GenerateOutput(tokens=tokens, lengths=lengths, stats=stats)


# ----------------------------------------------------------------------------- text level

def _end_of_turn_ids(tokenizer) -> list[int]:
    """The special token the chat template writes right after an assistant message, if any."""
    sentinel = "zq7SENTINELq7z"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": sentinel}],
            tokenize=False)
    except Exception:  # templates that refuse this shape of conversation
        return []
    if sentinel not in text:
        return []
    tail = text.split(sentinel, 1)[1]
    special = set(tokenizer.all_special_ids) | {
        i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    for t in tokenizer(tail, add_special_tokens=False)["input_ids"]:
        if t in special:
            return [int(t)]
        if tokenizer.decode([t]).strip():
            return []  # ordinary text comes first: no end-of-turn token
    return []


def chat_prompt_ids(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of `conversation` with the generation prompt; exactly one leading BOS."""
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                        return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids = [int(t) for t in ids]
    bos = tokenizer.bos_token_id
    while bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def generate_text(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                  temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
                  num_samples: int = 1, mesh: Mesh | None = None) -> list[str]:
    """Chat-template each conversation, sample, and decode (special tokens skipped).

    Returns len(conversations) * num_samples strings, prompt-major. Generation stops at the
    tokenizer's EOS and at the chat template's end-of-turn token.
    """
    prompts = [chat_prompt_ids(tokenizer, c) for c in conversations]
    eos = set(_end_of_turn_ids(tokenizer))
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    out = generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p,
                   top_k=top_k, eos_token_id=sorted(eos) or None, seed=seed,
                   num_samples=num_samples, pad_token_id=pad, mesh=mesh)
    return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
            for row, n in zip(out.tokens, out.lengths)]
