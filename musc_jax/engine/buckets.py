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
