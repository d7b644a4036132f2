"""Paired comparison of two recipes evaluated on the same prompts.

A results table's seed spread says how much training randomness moves a row; it does not say
whether two rows differ on *these* prompts. Here each recipe's seeds are first averaged per
prompt, then the difference in prompt-level strict accuracy (mean over prompts) and in
instruction-level strict accuracy (passed constraints over all constraints) is computed with a
percentile bootstrap over prompts (both recipes resampled with the same prompts: paired).
The interval reflects which prompts were drawn, not seed noise: report both.

An evaluation's items are the `items` of `musc_jax.eval`'s JSON: dicts with `key`, `strict`
(the prompt passes) and `constraints` (each with `strict`), or the compact rows
[key, prompt_pass, constraints_passed, constraints_total] that `compact_items` writes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def compact_items(items: Sequence[dict[str, Any]]) -> list[list[int]]:
    """[[key, prompt_pass (0/1), constraints passed, constraints total], ...] of eval items."""
    out = []
    for it in items:
        cons = it.get("constraints") or []
        out.append([int(it["key"]), int(bool(it["strict"])),
                    sum(int(bool(c.get("strict"))) for c in cons), len(cons)])
    return out


def _table(items: Sequence[Any]) -> dict[int, tuple[int, int, int]]:
    rows = compact_items(items) if items and isinstance(items[0], dict) else items
    table = {int(k): (int(p), int(c), int(n)) for k, p, c, n in rows}
    if len(table) != len(rows):
        raise ValueError("an evaluation lists a prompt key twice; paired comparison needs one row per prompt")
    return table


def _per_prompt(runs: Sequence[Sequence[Any]], keys: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed-averaged prompt pass [P], constraints passed [P], constraints total [P] (float64)."""
    tables = [_table(r) for r in runs]
    p = np.mean([[t[k][0] for k in keys] for t in tables], axis=0)
    c = np.mean([[t[k][1] for k in keys] for t in tables], axis=0)
    n = np.asarray([tables[0][k][2] for k in keys], np.float64)
    return p, c, n


def paired_difference(a_runs: Sequence[Sequence[Any]], b_runs: Sequence[Sequence[Any]],
                      resamples: int = 10_000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Recipe a minus recipe b, in accuracy points, with a bootstrap interval over prompts.

    a_runs, b_runs: one item list per seed (at least one each), all on the same prompt keys.
    Returns prompt_diff, prompt_ci (lo, hi), instruction_diff, instruction_ci, prompts, seeds.
    """
    if not a_runs or not b_runs:
        raise ValueError("paired_difference needs at least one evaluation of each recipe")
    key_sets = [set(_table(r)) for r in (*a_runs, *b_runs)]
    if any(s != key_sets[0] for s in key_sets):
        diff = sorted(set.union(*key_sets) - set.intersection(*key_sets))
        raise ValueError(f"the evaluations cover different prompts (keys {diff[:10]}...); "
                         "a paired comparison needs the same held-out set")
    keys = sorted(key_sets[0])
    pa, ca, n = _per_prompt(a_runs, keys)
    pb, cb, nb = _per_prompt(b_runs, keys)
    if not np.array_equal(n, nb):
        raise ValueError("the same prompt has different constraint counts in the two evaluations")
    dp, dc = pa - pb, ca - cb
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(keys), (resamples, len(keys)))
    boot_p = dp[idx].mean(axis=1)
    boot_i = dc[idx].sum(axis=1) / n[idx].sum(axis=1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"prompt_diff": 100 * float(dp.mean()),
            "prompt_ci": tuple(100 * float(x) for x in np.percentile(boot_p, q)),
            "instruction_diff": 100 * float(dc.sum() / n.sum()),
            "instruction_ci": tuple(100 * float(x) for x in np.percentile(boot_i, q)),
            "prompts": len(keys), "seeds": (len(a_runs), len(b_runs))}
