"""ECD pairs: evolution chains with hard negatives (DESIGN 5.4).

    rows, stats = build_ecd(seeds, policy, EcdConfig(rounds=3), seed=0)

Each seed starts a chain at (x0, y0): x0 is the seed instruction with its typed constraints
(`decomposer="given"` uses the seed's own, falling back to the rule decomposer when it has none;
`"rule"` always decomposes) and y0 a good response: the seed's known response
(`meta["response"]`) when given, else the first of `start_samples` policy samples that the
checker accepts (a chain with none is dropped and counted). With the rule evolver x0 is composed
from (task, constraints) with the seed's composer seed (`meta["compose_seed"]` when the seed has
one, as a generated world's seeds do, so x0 is then the seed's own text), so that every x_k of the chain is
composed alike; policy and teacher evolvers start from the seed text.

Then `rounds` times, for every chain: evolve x_{k-1} into x_k (one added or tightened
constraint, `musc_jax.data.evolve`), answer y_k = π(x_k) (`answer_samples` samples, the first the
checker accepts is kept) and check it. A failed evolution or an answer the checker rejects leaves
the chain in its previous state (counted by reason); it tries again next round. Each accepted
step gives the pair (prompt x_k, chosen y_k, rejected y_{k-1}, rejected_prompt x_{k-1}): the
previous good answer is a hard negative that misses only the new requirement. `corrupted` lists
the added / tightened constraints (corruption-style records), so MuSC token weights and the
per-constraint weight mass work on ECD pairs too.

The checker is a batched callable `(items) -> [True | False | None]` over `CheckItem`s, named by
`checker`: "verifier" (`verifier_checker`: the typed constraints' verifiers, the metric's own
oracle; a free-text constraint cannot be verified and does not block), "self" (the policy judges
with `checker_votes` votes, `judge_checker`: no stronger model) or "teacher" (a separate model
judging the same way). Any callable can be passed as `checker=`; None (a tie or an unparseable
verdict) rejects and is counted. `stats["signal"]` is "self" only for the policy's own checker
without `require_negative`. `meta["negativity"]` records whether y_{k-1} really violates the new constraint;
`require_negative=True` keeps only such pairs (the chain still advances).
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Mapping, NamedTuple, Sequence

from musc_jax.config import config_from
from musc_jax.data.builders.musc import (NEGATIVITY_COUNTS, count_negativity,
                                         finalize_rates, first_replies, negativity_record,
                                         seed_meta, stage_seed)
from musc_jax.data.constraints import Constraint, verify
from musc_jax.data.decompose import decompose_instruction
from musc_jax.data.judge import SelfJudge, derive_seed
from musc_jax.data.evolve import (EVOLVERS, ChainState, Evolution, Evolver, PolicyEvolver,
                                  RuleEvolver, make_rule_evolver)
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.recombine import STYLES, compose
from musc_jax.data.roles import respond_messages
from musc_jax.data.seeds import Seed

DECOMPOSERS = ("given", "rule")
CHECKERS = ("self", "verifier", "teacher")


class CheckItem(NamedTuple):
    instruction: str
    constraints: Sequence[Constraint]
    response: str


Checker = Callable[[Sequence[CheckItem]], list]


def judge_checker(judge: SelfJudge, seed: int = 0) -> Checker:
    """A checker from a judge (the policy or a teacher voting): its majority verdict per item
    (None for a tie or no parsable vote, which rejects and is counted). Each call uses a fresh
    sub-seed, so repeated checks of a chain are not copies of one another."""
    calls = [0]

    def check(items: Sequence[CheckItem]) -> list:
        calls[0] += 1
        js = judge.judge([(it.instruction, it.response, None) for it in items],
                         seed=derive_seed(seed, "check", calls[0]))
        return [j.verdict if it.response.strip() else False for it, j in zip(items, js)]

    check.judge = judge  # type: ignore[attr-defined]  (its stats: votes, unparsable, ...)
    return check


def verifier_checker(items: Sequence[CheckItem]) -> list[bool]:
    """True when no typed constraint is violated (free-text ones cannot be checked) and the
    response is not empty."""
    return [bool(it.response.strip()) and all(verify(it.response, c) is not False
                                              for c in it.constraints) for it in items]


@dataclasses.dataclass(frozen=True)
class EcdConfig:
    """Settings of the ECD chain builder (see the module doc)."""

    evolver: str = "rule"               # "rule" | "policy" | "teacher"
    rounds: int = 3                     # K evolution attempts per chain
    p_tighten: float = 0.3              # rule evolver: chance to tighten a bound instead of adding
    types: str = "all"                  # rule evolver: a registered name | "ifeval" | "all" | "id,id,..."
    decomposer: str = "given"           # "given" (rule when a seed has none) | "rule"
    compose_style: str = "paragraph"
    evolve_temperature: float = 0.7    # policy / teacher evolvers
    evolve_max_new_tokens: int = 256
    temperature: float = 0.5            # answers y_k (and y0)
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    answer_samples: int = 1             # samples per answer; the first that passes is kept
    start_samples: int = 4              # samples for y0; the first that passes is kept
    checker: str = "verifier"           # "self" (the policy votes) | "verifier" | "teacher" (votes)
    checker_votes: int = 5              # self / teacher checker: sampled verdicts (majority)
    checker_temperature: float = 0.7
    checker_max_new_tokens: int = 24
    require_negative: bool = False      # keep only pairs whose y_{k-1} violates the new constraint
    keep_unverifiable: bool = True      # with require_negative: keep pairs with nothing verifiable
    drop_identical: bool = True         # no pair when y_k == y_{k-1} (the chain still advances)

    def __post_init__(self):
        if self.evolver not in EVOLVERS:
            raise ValueError(f"ecd.evolver={self.evolver!r}: choose one of {EVOLVERS}")
        if self.decomposer not in DECOMPOSERS:
            raise ValueError(f"ecd.decomposer={self.decomposer!r}: choose one of {DECOMPOSERS}")
        if self.checker not in CHECKERS:
            raise ValueError(f"ecd.checker={self.checker!r}: choose one of {CHECKERS} (or pass "
                             "a callable as build_ecd(..., checker=fn))")
        if self.compose_style not in STYLES:
            raise ValueError(f"ecd.compose_style={self.compose_style!r}: choose one of {STYLES}")
        if self.rounds < 1 or self.answer_samples < 1 or self.start_samples < 1:
            raise ValueError("ecd.rounds, ecd.answer_samples and ecd.start_samples must be >= 1")

    def sampling(self, n: int) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        max_new_tokens=self.max_new_tokens, num_samples=n)


def make_evolver(cfg: EcdConfig, policy: Policy, teacher: Policy | None = None) -> Evolver:
    if cfg.evolver == "rule":
        return make_rule_evolver(cfg.types, cfg.p_tighten, cfg.compose_style)
    sampling = Sampling(temperature=cfg.evolve_temperature, max_new_tokens=cfg.evolve_max_new_tokens)
    if cfg.evolver == "teacher":
        if teacher is None:
            raise ValueError("ecd.evolver='teacher' needs a teacher Policy (build_ecd(..., "
                             "teacher=...); the CLI loads it from ecd_teacher.path)")
        return PolicyEvolver(teacher, sampling, name="teacher")
    return PolicyEvolver(policy, sampling, name="policy")


def _start_state(s: Seed, i: int, cfg: EcdConfig, seed: int, recompose: bool) -> ChainState:
    if cfg.decomposer == "given" and s.constraints is not None:
        rule = None if s.task else decompose_instruction(s.prompt)
        task, cons, inp = s.task or rule.task, tuple(s.constraints), None if s.task else rule.input
    else:
        dec = decompose_instruction(s.prompt)
        task, cons, inp = dec.task, tuple(dec.constraints), dec.input
    given = s.meta.get("compose_seed")
    cseed = int(given) if isinstance(given, int) else random.Random(f"ecd:{seed}:{i}").getrandbits(31)
    text = compose(task, cons, cseed, cfg.compose_style, inp) if recompose else s.prompt
    meta = {k: v for k, v in s.meta.items() if k != "response"}
    return ChainState(text, task, cons, inp, cseed, s.meta.get("response"), meta)


def _answer(states: Sequence[ChainState], policy: Policy, checker: Checker, sampling: Sampling,
            seed: int, counts: collections.Counter) -> list[str | None]:
    """For each state, the first of `sampling.num_samples` answers the checker accepts (or None)."""
    replies = first_replies(policy, [respond_messages(s.text) for s in states], sampling, seed)
    items = [CheckItem(s.text, s.constraints, y) for s, ys in zip(states, replies) for y in ys]
    verdicts = list(checker(items)) if items else []
    if len(verdicts) != len(items):
        raise ValueError(f"the checker returned {len(verdicts)} verdicts for {len(items)} items")
    out, k = [], 0
    for ys in replies:
        chosen = None
        for y in ys:
            v = verdicts[k]
            k += 1
            if v is None:
                counts["checker_unparsed"] += 1
            elif v and chosen is None and y.strip():
                chosen = y
        out.append(chosen)
    return out


def build_ecd(seeds: Sequence[Seed], policy: Policy, cfg: EcdConfig | Mapping | None = None,
              seed: int = 0, *, teacher: Policy | None = None, checker: Checker | None = None,
              evolver: Evolver | None = None) -> tuple[list[dict], dict[str, Any]]:
    """ECD pairs from evolution chains started at `seeds` (see the module doc): (rows, stats)."""
    cfg = config_from(EcdConfig, cfg)
    signal = "checker" if cfg.checker != "self" or cfg.require_negative else "self"
    if checker is not None:
        signal = getattr(checker, "signal", "checker")
    elif cfg.checker == "verifier":
        checker = verifier_checker
    else:
        if cfg.checker == "teacher" and teacher is None:
            raise ValueError("ecd.checker='teacher' needs a teacher Policy (build_ecd(..., "
                             "teacher=...); the CLI loads it from teacher.path)")
        checker = judge_checker(SelfJudge(policy if cfg.checker == "self" else teacher,
                                          votes=cfg.checker_votes,
                                          temperature=cfg.checker_temperature,
                                          max_new_tokens=cfg.checker_max_new_tokens),
                                stage_seed(seed, "checker"))
    evolver = evolver or make_evolver(cfg, policy, teacher)
    recompose = isinstance(evolver, RuleEvolver)
    counts: collections.Counter = collections.Counter()
    dropped: collections.Counter = collections.Counter()
    rejections: collections.Counter = collections.Counter()

    states = [_start_state(s, i, cfg, seed, recompose) for i, s in enumerate(seeds)]
    need = [j for j, st in enumerate(states) if st.response is None]
    counts["start_given"] = len(states) - len(need)
    starts = _answer([states[j] for j in need], policy, checker, cfg.sampling(cfg.start_samples),
                     stage_seed(seed, "start"), rejections)
    for j, y0 in zip(need, starts):
        states[j] = dataclasses.replace(states[j], response=y0)
    chains = [j for j, st in enumerate(states) if st.response is not None]
    dropped["no_good_start"] = len(states) - len(chains)

    accepted = collections.Counter({j: 0 for j in chains})
    neg_counts: collections.Counter = collections.Counter()
    rows = []
    for k in range(1, cfg.rounds + 1):
        if not chains:
            break
        counts["steps_tried"] += len(chains)
        evs, fails = evolver.evolve([states[j] for j in chains], stage_seed(seed, f"evolve{k}"))
        rejections.update({f"evolve/{r}": n for r, n in fails.items()})
        ok = [(j, ev) for j, ev in zip(chains, evs) if ev is not None]
        answers = _answer([ev.state for _, ev in ok], policy, checker,
                          cfg.sampling(cfg.answer_samples), stage_seed(seed, f"answer{k}"),
                          rejections)
        for (j, ev), y in zip(ok, answers):
            if y is None:
                rejections["answer_rejected"] += 1
                continue
            prev = states[j]
            states[j] = dataclasses.replace(ev.state, response=y)
            accepted[j] += 1
            counts["steps_accepted"] += 1
            row = _row(seeds[j], j, k, prev, ev, y, evolver.name, seed, cfg, dropped, neg_counts)
            if row is not None:
                rows.append(row)

    out: dict[str, Any] = {
        "seeds": len(seeds),
        "chains": len(chains),
        "pairs": len(rows),
        "dropped": {r: n for r, n in dropped.items() if n},
        "rejections": dict(rejections),
        "parse_failures": sum(n for r, n in rejections.items() if r.startswith("evolve/")
                              and evolver.name != "rule"),
        "steps_tried": counts["steps_tried"],
        "steps_accepted": counts["steps_accepted"],
        "start_given": counts["start_given"],
        "chain_lengths": {str(n): c for n, c in sorted(collections.Counter(accepted.values()).items())},
        "negativity": {c: neg_counts[c] for c in NEGATIVITY_COUNTS},
        "signal": signal,
        "checker": cfg.checker,
    }
    judge = getattr(checker, "judge", None)
    if judge is not None:
        out["roles"] = {"judge": {"calls": judge.stats.votes,
                                  "parsed": judge.stats.votes - judge.stats.unparsable}}
    out["rates"] = finalize_rates(out)
    out["rates"]["step_acceptance_rate"] = (out["steps_accepted"] / out["steps_tried"]
                                            if out["steps_tried"] else None)
    return rows, out


def _row(s: Seed, j: int, k: int, prev: ChainState, ev: Evolution, y: str, evolver: str,
         seed: int, cfg: EcdConfig, dropped: collections.Counter,
         neg_counts: collections.Counter) -> dict | None:
    if cfg.drop_identical and y == prev.response:
        dropped["identical_responses"] += 1
        return None
    neg = negativity_record(ev.added, y, prev.response)
    count_negativity(neg_counts, neg)
    if cfg.require_negative and not (neg["negative"] or (not neg["checked"] and cfg.keep_unverifiable)):
        dropped["not_negative"] += 1
        return None
    return {
        "prompt": [{"role": "user", "content": ev.state.text}],
        "chosen": y,
        "rejected": prev.response,
        "rejected_prompt": [{"role": "user", "content": prev.text}],
        "constraints": [c.to_dict() for c in ev.state.constraints],
        "corrupted": ev.records(),
        "method": "ecd",
        "meta": {"seed": seed_meta(s, j), "rng_seed": seed, "chain": j, "step": k,
                 "evolver": evolver, "op": ev.op, "task": ev.state.task,
                 "compose_seed": ev.state.compose_seed,
                 "rejected_constraints": [c.to_dict() for c in prev.constraints],
                 "negativity": neg},
    }


__all__ = ["CHECKERS", "CheckItem", "Checker", "DECOMPOSERS", "EcdConfig", "build_ecd",
           "judge_checker", "make_evolver", "verifier_checker"]
