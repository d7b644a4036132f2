"""Judges: does a response follow every constraint of its instruction? (DESIGN 5.5 step 2)

One interface, two judges:

* `SelfJudge(policy, votes=5, temperature=0.7)`: the policy itself, prompted per response with
  `roles.judge_messages`, sampled `votes` times. Each output is parsed with
  `roles.parse_verdict`; unparsable outputs are counted and excluded; the majority of the valid
  votes is the verdict, a tie (or no valid vote) gives verdict None ("dropped").
* `VerifierJudge()`: programmatic (the oracle of the ablations) via `constraints.verify_all`;
  verdict None when none of the constraints is verifiable; its judgement text names the missed
  constraints with `roles.judgement_text`, in the instruction's own wording where it can be found.

    judgements = judge.judge([(instruction, response, constraints_or_None), ...], seed=0)

Each `Judgement` carries the verdict, the value V (share of "yes" among the valid votes), the
parsed votes, the raw outputs and the judgement text a refiner is given (`roles.refine_messages`).
Every judge accumulates `JudgeStats` in `judge.stats` (items, votes, unparsable, ties, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from typing import Any, Mapping, Protocol, Sequence

from musc_jax.data import constraints as cons
from musc_jax.data.constraints import Constraint
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.roles import (critique_judge_messages, judge_messages, judgement_text,
                                 parse_verdict)

JudgeItem = tuple  # (instruction: str, response: str, constraints: Sequence[Constraint|dict] | None)
JUDGES = ("self", "verifier")
# Where a judge's preference signal comes from (DESIGN 8): the policy itself or a checker.
SIGNAL = {"self": "self", "verifier": "checker"}


def derive_seed(seed: int, *tags: Any) -> int:
    """A deterministic sub-seed in [0, 2**31) for one policy call of a builder or search."""
    h = hashlib.blake2b(repr((int(seed),) + tags).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


@dataclasses.dataclass(frozen=True)
class Judgement:
    """A judge's decision about one response.

    verdict: True ("follows every constraint"), False, or None (tie, or no valid vote / nothing
    verifiable). value: share of "yes" among the valid votes (None when there is none).
    votes: one parsed vote per sample (None = unparsable). outputs: the raw judge outputs.
    text: the judgement text for the refiner / for refiner SFT ("yes", or "no ..." naming what
    is missed): the most common output among the majority votes (for a tie, the most common "no").
    """

    verdict: bool | None
    value: float | None
    votes: tuple[bool | None, ...]
    text: str
    outputs: tuple[str, ...] = ()

    @property
    def yes(self) -> int:
        return sum(v is True for v in self.votes)

    @property
    def no(self) -> int:
        return sum(v is False for v in self.votes)

    @property
    def valid(self) -> int:
        return self.yes + self.no

    @property
    def unparsable(self) -> int:
        return sum(v is None for v in self.votes)

    @property
    def tie(self) -> bool:
        return self.valid > 0 and self.yes == self.no

    @property
    def unanimous(self) -> bool:
        """All valid votes agree (and there is at least one)."""
        return self.valid > 0 and (self.yes == 0 or self.no == 0)

    @property
    def contested(self) -> bool:
        """A majority verdict that not every valid vote shared."""
        return self.verdict is not None and not self.unanimous

    @property
    def score(self) -> float:
        """The value as a number for ranking (0.0 when there is no valid vote)."""
        return 0.0 if self.value is None else float(self.value)

    @classmethod
    def from_votes(cls, outputs: Sequence[str]) -> "Judgement":
        """Majority over parsed outputs: ties and all-unparsable give verdict None."""
        outputs = tuple(outputs)
        votes = tuple(parse_verdict(o) for o in outputs)
        yes, no = sum(v is True for v in votes), sum(v is False for v in votes)
        verdict = None if yes == no else yes > no
        value = yes / (yes + no) if yes + no else None
        want = False if verdict is None else verdict
        texts = [o.strip() for o, v in zip(outputs, votes) if v is want]
        text = (collections.Counter(texts).most_common(1)[0][0] if texts
                else judgement_text(want))
        return cls(verdict, value, votes, text, outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "value": self.value, "votes": list(self.votes),
                "text": self.text}


@dataclasses.dataclass
class JudgeStats:
    """Counts over judgements: items judged, votes sampled, unparsable votes, ties, agreement."""

    items: int = 0
    votes: int = 0
    unparsable: int = 0
    ties: int = 0
    no_valid: int = 0        # no valid vote at all (all unparsable, or nothing verifiable)
    unanimous: int = 0
    contested: int = 0
    passed: int = 0
    failed: int = 0

    def add(self, j: Judgement) -> None:
        self.items += 1
        self.votes += len(j.votes)
        self.unparsable += j.unparsable
        self.ties += j.tie
        self.no_valid += j.valid == 0
        self.unanimous += j.unanimous
        self.contested += j.contested
        self.passed += j.verdict is True
        self.failed += j.verdict is False

    @classmethod
    def of(cls, judgements: Sequence[Judgement]) -> "JudgeStats":
        s = cls()
        for j in judgements:
            s.add(j)
        return s

    @property
    def agreement(self) -> float:
        """Share of judgements (with a valid vote) whose valid votes were unanimous."""
        n = self.items - self.no_valid
        return self.unanimous / n if n else 0.0

    def to_dict(self) -> dict[str, float]:
        return {**dataclasses.asdict(self), "agreement": self.agreement}


class Judge(Protocol):
    votes: int
    stats: JudgeStats

    def judge(self, items: Sequence[JudgeItem], seed: int = 0) -> list[Judgement]:
        """One Judgement per (instruction, response, constraints) item, in order."""
        ...


def as_constraints(constraints: Sequence[Constraint | Mapping] | None) -> list[Constraint] | None:
    """Typed constraints from Constraint values or their dicts (pairs rows store dicts)."""
    if constraints is None:
        return None
    return [c if isinstance(c, Constraint) else Constraint.from_dict(c) for c in constraints]


class SelfJudge:
    """The policy as its own judge: `votes` sampled verdicts per response, majority wins."""

    def __init__(self, policy: Policy, votes: int = 5, temperature: float = 0.7,
                 top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 96,
                 critique: bool = False):
        if votes < 1:
            raise ValueError(f"SelfJudge needs votes >= 1, got {votes}")
        self.policy, self.votes, self.critique = policy, int(votes), bool(critique)
        self.sampling = Sampling(temperature=temperature, top_p=top_p, top_k=top_k,
                                 max_new_tokens=max_new_tokens, num_samples=self.votes)
        self.stats = JudgeStats()

    def messages(self, instruction: str, response: str) -> list[dict[str, str]]:
        """The judge prompt: critique then verdict (`critique=True`, SPaR) or the verdict."""
        make = critique_judge_messages if self.critique else judge_messages
        return make(instruction, response)

    def judge(self, items: Sequence[JudgeItem], seed: int = 0) -> list[Judgement]:
        if not items:
            return []
        convs = [self.messages(it[0], it[1]) for it in items]
        outputs = self.policy.chat(convs, self.sampling, seed=seed)
        if len(outputs) != len(items):
            raise RuntimeError(f"policy returned {len(outputs)} reply lists for {len(items)} "
                               "judge prompts")
        out = [Judgement.from_votes(o) for o in outputs]
        for j in out:
            self.stats.add(j)
        return out


def _constraint_sentence(c: Constraint, instruction: str) -> str:
    """The sentence of `instruction` that states `c` (any of its templates), else a rendering."""
    if c.id == cons.FREE_TEXT:
        return c.render()
    n = len(cons.get_type(c.id).templates)
    rendered = [c.render(v) for v in range(n)]
    low = instruction.lower()
    for s in rendered:
        if s in instruction:
            return s
    for s in rendered:
        if s.lower() in low or s.rstrip(".").lower() in low:
            return s
    return rendered[0]


class VerifierJudge:
    """Programmatic judge: the verifiers of the typed constraints (one "vote" per response).

    verdict True iff no verifiable constraint fails; None when none is verifiable (or the item
    has no constraints). The judgement text names the missed constraints.
    """

    votes = 1

    def __init__(self, loose: bool = False):
        self.loose = loose
        self.stats = JudgeStats()

    def judge(self, items: Sequence[JudgeItem], seed: int = 0) -> list[Judgement]:
        out = []
        for instruction, response, constraints in (tuple(it) for it in items):
            cs = as_constraints(constraints) or []
            passed = cons.verify_all(response, cs, loose=self.loose) if cs else []
            if all(p is None for p in passed):
                j = Judgement(None, None, (), "", ())
            else:
                missed = [_constraint_sentence(c, instruction)
                          for c, p in zip(cs, passed) if p is False]
                verdict = not missed
                j = Judgement(verdict, float(verdict), (verdict,),
                              judgement_text(verdict, missed), ())
            self.stats.add(j)
            out.append(j)
        return out


def make_judge(kind: str, policy: Policy | None = None, votes: int = 5, temperature: float = 0.7,
               max_new_tokens: int = 96, top_p: float = 1.0,
               critique: bool = False) -> SelfJudge | VerifierJudge:
    """"self" (needs the policy; `critique` asks for a critique before the verdict) or
    "verifier"."""
    if kind == "self":
        if policy is None:
            raise ValueError("a self judge needs a policy")
        return SelfJudge(policy, votes=votes, temperature=temperature, top_p=top_p,
                         max_new_tokens=max_new_tokens, critique=critique)
    if kind == "verifier":
        return VerifierJudge()
    raise ValueError(f"unknown judge {kind!r}; expected one of {JUDGES}")


__all__ = ["JUDGES", "SIGNAL", "Judge", "JudgeStats", "Judgement", "SelfJudge", "VerifierJudge",
           "as_constraints", "derive_seed", "make_judge"]
