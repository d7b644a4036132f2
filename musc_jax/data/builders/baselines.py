"""Baseline pair builders: self-rewarding (best vs worst by the policy's own judge) and random
(independently sampled pairs, no judge: the "no refinement" ablation of DESIGN 5.5).

Both return `(rows, stats)` with normalised pairs rows (method "self_reward" / "random").

`build_self_reward(seeds, policy, cfg, seed)` config keys (`SelfRewardConfig`):

    samples=4            responses per prompt
    temperature=0.9      top_p=0.9  top_k=0  max_new_tokens=128   (actor sampling)
    judge="self"         "self" (the policy judges, value = share of "yes") | "verifier"
    judge_votes=5        judge_temperature=0.7  judge_max_new_tokens=96

  chosen = the sample with the highest value, rejected = the one with the lowest (first in sample
  order on ties). Skipped and counted: prompts whose values all tie (`all_tied`), with fewer than
  two judged samples (`too_few`), and whose best and worst texts are identical (`identical`).

`build_random(seeds, policy, cfg, seed)` config keys (`RandomConfig`):

    temperature=0.9      top_p=0.9  top_k=0  max_new_tokens=128

  two independent samples per prompt, chosen/rejected assigned by a fair coin seeded from `seed`;
  prompts with an empty sample or two identical samples are skipped and counted.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Sequence

from musc_jax.data.builders.spar import builder_config
from musc_jax.data.judge import JUDGES, SIGNAL, Judge, JudgeStats, derive_seed, make_judge
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.roles import respond_messages
from musc_jax.data.seeds import Seed


@dataclasses.dataclass(frozen=True)
class SelfRewardConfig:
    samples: int = 4
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 0
    max_new_tokens: int = 128
    judge: str = "self"
    judge_votes: int = 5
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 96

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"self_reward judge must be one of {JUDGES}, got {self.judge!r}")
        if self.samples < 2:
            raise ValueError(f"self_reward needs samples >= 2, got {self.samples}")


@dataclasses.dataclass(frozen=True)
class RandomConfig:
    temperature: float = 0.9
    top_p: float = 0.9
    top_k: int = 0
    max_new_tokens: int = 128


def _sample(seeds: Sequence[Seed], policy: Policy, n: int, temperature: float, top_p: float,
            top_k: int, max_new_tokens: int, seed: int) -> list[list[str]]:
    if not seeds:
        return []
    sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k,
                        max_new_tokens=max_new_tokens, num_samples=n)
    out = policy.chat([respond_messages(s.prompt) for s in seeds], sampling,
                      seed=derive_seed(seed, "actor"))
    return [[str(y).strip() for y in ys] for ys in out]


def _row(s: Seed, chosen: str, rejected: str, method: str, seed: int, index: int,
         **meta: Any) -> dict:
    return {"prompt": respond_messages(s.prompt), "chosen": chosen, "rejected": rejected,
            "rejected_prompt": [],
            "constraints": [c.to_dict() if hasattr(c, "to_dict") else dict(c)
                            for c in (s.constraints or [])],
            "corrupted": [], "method": method,
            "meta": {**s.meta, "seed": seed, "index": index, **meta}}


def build_self_reward(seeds: Sequence[Seed], policy: Policy, cfg: Any = None, seed: int = 0, *,
                      judge: Judge | None = None) -> tuple[list[dict], dict[str, Any]]:
    """Self-rewarding pairs: best vs worst of `samples` responses by the policy's own judge."""
    c = builder_config(SelfRewardConfig, cfg, "self_reward")
    if judge is None:
        judge = make_judge(c.judge, policy, votes=c.judge_votes, temperature=c.judge_temperature,
                           max_new_tokens=c.judge_max_new_tokens)
    seeds = list(seeds)
    samples = _sample(seeds, policy, c.samples, c.temperature, c.top_p, c.top_k,
                      c.max_new_tokens, seed)
    where = [(p, k) for p, ys in enumerate(samples) for k, y in enumerate(ys) if y]
    items = [(seeds[p].prompt, samples[p][k], seeds[p].constraints) for p, k in where]
    judgements = judge.judge(items, seed=derive_seed(seed, "judge")) if items else []
    values: list[list[tuple[int, float]]] = [[] for _ in seeds]
    for (p, k), j in zip(where, judgements):
        if j.value is not None:
            values[p].append((k, j.value))
    rows, too_few, tied, identical = [], 0, 0, 0
    for p, s in enumerate(seeds):
        vs = values[p]
        if len(vs) < 2:
            too_few += 1
            continue
        best = max(vs, key=lambda kv: kv[1])     # first on ties
        worst = min(vs, key=lambda kv: kv[1])
        if best[1] == worst[1]:
            tied += 1
            continue
        if samples[p][best[0]] == samples[p][worst[0]]:
            identical += 1
            continue
        rows.append(_row(s, samples[p][best[0]], samples[p][worst[0]], "self_reward", seed, p,
                         self_reward={"chosen_value": best[1], "rejected_value": worst[1],
                                      "judge": c.judge}))
    js = JudgeStats.of(judgements)
    stats = {"prompts": len(seeds), "samples": sum(len(ys) for ys in samples),
             "empty_samples": sum(len(ys) for ys in samples) - len(where),
             "too_few": too_few, "all_tied": tied, "identical": identical, "pairs": len(rows),
             "judge_votes": js.votes, "judge_unparsable": js.unparsable, "judge_ties": js.ties,
             "judge_agreement": js.agreement, "signal": SIGNAL[c.judge],
             "mean_value": (sum(v for vs in values for _, v in vs)
                            / max(1, sum(len(vs) for vs in values)))}
    return rows, stats


def build_random(seeds: Sequence[Seed], policy: Policy, cfg: Any = None,
                 seed: int = 0) -> tuple[list[dict], dict[str, Any]]:
    """Random pairs: two independent samples per prompt, chosen/rejected by a coin (no judge)."""
    c = builder_config(RandomConfig, cfg, "random")
    seeds = list(seeds)
    samples = _sample(seeds, policy, 2, c.temperature, c.top_p, c.top_k, c.max_new_tokens, seed)
    rng = random.Random(derive_seed(seed, "random"))
    rows, empty, identical, swapped = [], 0, 0, 0
    for p, (s, ys) in enumerate(zip(seeds, samples)):
        flip = rng.random() < 0.5        # drawn for every prompt: assignments don't shift
        a, b = ys[0], ys[1]
        if not a or not b:
            empty += 1
            continue
        if a == b:
            identical += 1
            continue
        if flip:
            a, b = b, a
            swapped += 1
        rows.append(_row(s, a, b, "random", seed, p, random={"swapped": flip}))
    stats = {"prompts": len(seeds), "samples": sum(len(ys) for ys in samples),
             "empty": empty, "identical": identical, "swapped": swapped, "pairs": len(rows),
             "signal": "none"}   # a coin labels the pairs: no preference signal at all
    return rows, stats


__all__ = ["RandomConfig", "SelfRewardConfig", "build_random", "build_self_reward"]
