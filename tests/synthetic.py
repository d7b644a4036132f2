"""Synthetic preference batches for step-level tests (no tokenizer needed)."""

from __future__ import annotations

import numpy as np


def pair_batch(batch: int = 4, length: int = 32, vocab: int = 128, seed: int = 0,
               alt: bool = False) -> dict[str, np.ndarray]:
    """Right-padded chosen/rejected sequences with random prompt and response lengths.

    With `alt`, the same responses also follow a different prompt (x'), as dynamic weights need.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {}

    def seq(prompt, response, name):
        ids = np.zeros(length, np.int32)
        mask = np.zeros(length, np.int32)
        resp = np.zeros(length, np.float32)
        full = np.concatenate([prompt, response])[:length]
        ids[:len(full)] = full
        mask[:len(full)] = 1
        resp[len(prompt):len(full)] = 1
        for key, val in ((f"{name}_ids", ids), (f"{name}_mask", mask), (f"{name}_response_mask", resp)):
            out.setdefault(key, []).append(val)

    for _ in range(batch):
        p = rng.integers(1, vocab, rng.integers(4, length // 2))
        pa = rng.integers(1, vocab, rng.integers(4, length // 2))
        yc = rng.integers(1, vocab, rng.integers(2, length // 2 - 1))
        yr = rng.integers(1, vocab, rng.integers(2, length // 2 - 1))
        seq(p, yc, "chosen")
        seq(p, yr, "rejected")
        if alt:
            seq(pa, yc, "chosen_alt")
            seq(pa, yr, "rejected_alt")
    return {k: np.stack(v) for k, v in out.items()}
