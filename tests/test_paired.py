"""Paired bootstrap comparison of two recipes (musc_jax.paired): hand-checked cases and the
normal approximation as the reference for the interval's width."""

from __future__ import annotations

import numpy as np
import pytest

from musc_jax.paired import compact_items, paired_difference


def _items(prompt_pass, passed, total):
    return [[k, p, c, n] for k, (p, c, n) in enumerate(zip(prompt_pass, passed, total))]


def test_compact_items_of_eval_json_rows():
    items = [{"key": 7, "strict": True, "constraints": [{"strict": True}, {"strict": True}]},
             {"key": 9, "strict": False, "constraints": [{"strict": True}, {"strict": False}]}]
    assert compact_items(items) == [[7, 1, 2, 2], [9, 0, 1, 2]]
    # eval dicts and compact rows give the same comparison
    r = paired_difference([items], [compact_items(items)])
    assert r["prompt_diff"] == 0.0 and r["prompt_ci"] == (0.0, 0.0)


def test_hand_checked_differences_with_seeds_averaged_per_prompt():
    # 4 prompts with 2, 1, 3, 2 constraints. Recipe a, two seeds; recipe b, one seed.
    total = [2, 1, 3, 2]
    a1 = _items([1, 0, 1, 0], [2, 0, 3, 1], total)
    a2 = _items([1, 1, 0, 0], [2, 1, 2, 1], total)
    b = _items([0, 0, 1, 0], [1, 0, 3, 0], total)
    r = paired_difference([a1, a2], [b], resamples=2000)
    # a per prompt: 1, .5, .5, 0 -> mean .5; b: .25 -> +25 points
    assert r["prompt_diff"] == pytest.approx(25.0, abs=1e-12)
    # constraints: a passes (2+2)/2 + (0+1)/2 + (3+2)/2 + (1+1)/2 = 6.0 of 8; b 4 of 8 -> +25
    assert r["instruction_diff"] == pytest.approx(25.0, abs=1e-12)
    lo, hi = r["prompt_ci"]
    assert lo <= 25.0 <= hi and r["prompts"] == 4 and r["seeds"] == (2, 1)


def test_certain_difference_has_a_degenerate_interval():
    a = _items([1] * 50, [1] * 50, [1] * 50)
    b = _items([0] * 50, [0] * 50, [1] * 50)
    r = paired_difference([a], [b], resamples=500)
    assert r["prompt_diff"] == 100.0 and r["prompt_ci"] == (100.0, 100.0)
    assert r["instruction_ci"] == (100.0, 100.0)


def test_interval_width_matches_the_normal_approximation():
    # Per-prompt differences of +-1 with equal odds: sd 1, so the 95% interval of the mean is
    # about +-1.96 / sqrt(P). Reference: the CLT; tolerance 10% of the width.
    rng = np.random.default_rng(3)
    p = 2000
    a_pass = rng.integers(0, 2, p)
    b_pass = 1 - a_pass
    a = _items(a_pass, a_pass, [1] * p)
    b = _items(b_pass, b_pass, [1] * p)
    r = paired_difference([a], [b], resamples=4000, seed=1)
    d = (a_pass - b_pass).astype(float)
    half = 1.96 * d.std() / np.sqrt(p) * 100
    lo, hi = r["prompt_ci"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.10)
    assert r["prompt_diff"] == pytest.approx(100 * d.mean(), abs=1e-9)


def test_different_prompt_sets_are_refused():
    a = _items([1, 0], [1, 0], [1, 1])
    b = [[0, 1, 1, 1], [5, 0, 0, 1]]
    with pytest.raises(ValueError, match="different prompts"):
        paired_difference([a], [b])
    with pytest.raises(ValueError, match="at least one"):
        paired_difference([], [b])
