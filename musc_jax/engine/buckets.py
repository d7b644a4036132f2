"""Shape buckets: prompt lengths, batch sizes and cache lengths round up to few sizes, so a run
compiles a handful of variants instead of one per call."""

from __future__ import annotations

import numpy as np

_MIN_PROMPT_BUCKET = 16
_PROMPT_BUCKET_STEP = 512   # powers of two up to this, then multiples of it
_EOS_SLOTS = 4              # eos id lists are padded (with -1) to a multiple of this


def bucket_length(n: int, minimum: int = _MIN_PROMPT_BUCKET, step: int = _PROMPT_BUCKET_STEP) -> int:
    """Prompt length bucket: powers of two from `minimum` up to `step`, then multiples of `step`."""
    n = max(int(n), 1)
    if n > step:
        return -(-n // step) * step
    b = minimum
    while b < n:
        b *= 2
    return b


def prefill_bucket(n: int, minimum: int = _MIN_PROMPT_BUCKET,
                   step: int = _PROMPT_BUCKET_STEP) -> int:
    """Prompt length bucket of a prefill group: powers of two and 1.5 times them (16, 24, 32,
    48, 64, 96, ...) up to `step`, then multiples of `step`. Finer than `bucket_length`: every
    padded position costs a full forward pass, and a program per bucket compiles once."""
    n = max(int(n), 1)
    if n > step:
        return -(-n // step) * step
    b = minimum
    while b < n:
        b = b * 3 // 2 if b & (b - 1) == 0 else b // 3 * 4     # p -> 1.5p -> 2p
    return b


def prefill_groups(lengths, call_cost: int = 512) -> list[np.ndarray]:
    """Rows (indices into `lengths`) split into prefill calls of rows of similar lengths.

    A call over rows i..j-1 of the length-sorted order costs bucket_batch(j - i) rows times the
    prefill bucket of its longest prompt, plus `call_cost` positions for the call itself: its
    pass over the weights, and one more program to compile per new shape, which dominates short
    runs; so only large groups of widely spread lengths split (64 prompts of 16..96 tokens: 32 x
    64 and 32 x 96, 5120 positions instead of 6144; 16 prompts stay one call).
    The split minimising the total is found exactly (O(n^2) over the sorted rows; n is at most
    the slot count)."""
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    srt = lengths[order]
    n = len(srt)
    best = np.zeros(n + 1)
    cut = np.zeros(n + 1, int)
    for j in range(1, n + 1):
        width = prefill_bucket(srt[j - 1])          # rows i..j-1 pad to the longest, row j-1
        costs = [best[i] + bucket_batch(j - i) * width + call_cost for i in range(j)]
        cut[j] = int(np.argmin(costs))
        best[j] = costs[cut[j]]
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def bucket_batch(n: int, multiple: int = 1) -> int:
    """Batch bucket: the next power of two, rounded up to a multiple of the mesh batch size."""
    b = 1
    while b < n:
        b *= 2
    return -(-b // multiple) * multiple


def stop_id_array(eos_token_id) -> np.ndarray:
    """Stop ids as int32 [k * _EOS_SLOTS], padded with -1 (no token), so few shapes compile."""
    if eos_token_id is None:
        ids: list[int] = []
    elif isinstance(eos_token_id, (int, np.integer)):
        ids = [int(eos_token_id)]
    else:
        ids = sorted({int(e) for e in eos_token_id})
    size = max(_EOS_SLOTS, -(-len(ids) // _EOS_SLOTS) * _EOS_SLOTS)
    return np.array(ids + [-1] * (size - len(ids)), np.int32)
