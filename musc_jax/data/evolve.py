"""Evolve an instruction by one constraint (ECD, DESIGN 5.4): rule, policy and teacher evolvers.

A chain's instruction is a `ChainState` (text, task, typed constraints, input, the composer seed
of its text, the seed's meta). An evolver maps a batch of states to one `Evolution` or None
each, plus failure counts per reason; it never raises on a bad model output.

* `RuleEvolver` works on the taxonomy: with probability `p_tighten` it tightens a numeric bound
  (fewer words, more keyword repeats, ...), otherwise (or when nothing can be tightened) it adds a
  constraint of a type that is compatible with the ones present, with sampled arguments. The new
  text is composed with the state's composer seed, so the sentences of the old constraints stay
  word for word (x_{k-1} and x_k differ only by the new requirement).
* `PolicyEvolver` prompts a policy with `roles.evolve_messages`, takes the reply as the new
  instruction and types it with the rule decomposer. A reply is accepted when it adds at least one
  typed constraint and every typed constraint it lost was tightened (same type among the added
  ones); otherwise the failure is counted ("empty", "unchanged", "no_new_constraint",
  "lost_constraint"). The optional separate teacher model is a `PolicyEvolver` over another
  Policy (`name="teacher"`).
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Mapping, Protocol, Sequence

from musc_jax.data.constraints import (DEFAULT_POOL, IFEVAL_IDS, MICROWORLD_IDS, ArgPool,
                                       Constraint, compatible_with_all, get_type)
from musc_jax.data.decompose import decompose_instruction, rule_decompose
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.recombine import STYLES, compose
from musc_jax.data.roles import clean_output, evolve_messages

EVOLVERS = ("rule", "policy", "teacher")
TYPE_SETS = ("ifeval", "all")
# Named rule evolvers a world registers (its own types, argument sampler and conflict table):
# name -> factory(p_tighten, style) -> RuleEvolver.
RULE_EVOLVERS: dict[str, Callable[[float, str], "RuleEvolver"]] = {}


def register_rule_evolver(name: str, factory: Callable[[float, str], "RuleEvolver"]) -> None:
    """Make `make_rule_evolver(name, ...)` (and ECD's `types=name`) call `factory`."""
    RULE_EVOLVERS[name] = factory


def make_rule_evolver(types: str | Sequence[str], p_tighten: float = 0.3,
                      style: str = "paragraph") -> "RuleEvolver":
    """A registered rule evolver by name, else a `RuleEvolver` over the type set `types`."""
    if isinstance(types, str) and types in RULE_EVOLVERS:
        return RULE_EVOLVERS[types](p_tighten, style)
    return RuleEvolver(types, p_tighten, style=style)


@dataclasses.dataclass(frozen=True)
class ChainState:
    """One instruction of a chain (x_k) and, once answered and checked, its good response y_k."""

    text: str
    task: str
    constraints: tuple[Constraint, ...]
    input: str | None = None
    compose_seed: int = 0
    response: str | None = None
    meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Evolution:
    """x_{k-1} -> x_k: the new state, what was added, and what the added constraints replaced."""

    state: ChainState
    op: str                                   # "add" or "tighten"
    added: tuple[Constraint, ...]
    replaced: tuple[Constraint, ...] = ()

    def records(self) -> list[dict[str, Any]]:
        """Corruption-style records (x' = x_{k-1} lacks or loosens these constraints of x_k)."""
        out = []
        for c in self.added:
            rep = next((r for r in self.replaced if r.id == c.id), None)
            idx = next((i for i, d in enumerate(self.state.constraints) if d == c), -1)
            out.append({"index": idx, "op": "tighten" if rep is not None else "add",
                        "applied": "tighten" if rep is not None else "add",
                        "original": c.to_dict(),
                        "replacement": None if rep is None else rep.to_dict()})
        return out


class Evolver(Protocol):
    name: str

    def evolve(self, states: Sequence[ChainState], seed: int
               ) -> tuple[list[Evolution | None], collections.Counter]:
        """One evolution (or None) per state, and failure counts by reason."""
        ...


# --------------------------------------------------------------------------------------- rule

# type -> (count argument, relation argument or None for an implicit "at least")
TIGHTENABLE: dict[str, tuple[str, str | None]] = {
    "length_constraints:number_words": ("num_words", "relation"),
    "length_constraints:number_sentences": ("num_sentences", "relation"),
    "keywords:frequency": ("frequency", "relation"),
    "keywords:letter_frequency": ("let_frequency", "let_relation"),
    "change_case:capital_word_frequency": ("capital_frequency", "capital_relation"),
    "detectable_format:number_highlighted_sections": ("num_highlights", None),
    "detectable_content:number_placeholders": ("num_placeholders", None),
}
MIN_UPPER_BOUND = 2  # "less than N" is never tightened below this


def tighten(c: Constraint) -> Constraint | None:
    """`c` with a stricter numeric bound ("at least" up, "less than" down, by max(1, 25%)),
    or None when its type has no bound or the bound cannot go further."""
    spec = TIGHTENABLE.get(c.id)
    if spec is None:
        return None
    num, rel = spec
    n = int(c.kwargs[num])
    step = max(1, round(0.25 * n))
    kw = dict(c.kwargs)
    if rel is not None and c.kwargs[rel] == "less than":
        if n - step < MIN_UPPER_BOUND:
            return None
        kw[num] = n - step
    else:
        kw[num] = n + step
    return Constraint(c.id, kw)  # the old wording (if any) no longer fits


def type_ids(types: str | Sequence[str]) -> tuple[str, ...]:
    """A named set ("ifeval", "all") or an explicit list of constraint type ids."""
    if isinstance(types, str):
        if types == "ifeval":
            return IFEVAL_IDS
        if types == "all":
            return tuple(dict.fromkeys(IFEVAL_IDS + MICROWORLD_IDS))
        types = [t.strip() for t in types.split(",") if t.strip()]
    for t in types:
        get_type(t)  # raises naming an unknown id
    return tuple(types)


Sampler = Callable[[str, ChainState, random.Random], Constraint]
TypeCompatible = Callable[[str, str], bool]


class RuleEvolver:
    """Adds or tightens one constraint using the constraint taxonomy (see the module doc).

    types: candidate type ids for additions (types without an argument sampler are skipped).
    sampler: (type id, state, rng) -> Constraint; default: the taxonomy's sampler over `pool`.
    type_compatible: an extra (type id, type id) -> bool rule (e.g. a world's table) on top
    of `constraints.compatible`.
    """

    name = "rule"

    def __init__(self, types: str | Sequence[str] = "all", p_tighten: float = 0.3,
                 pool: ArgPool = DEFAULT_POOL, style: str = "paragraph", tries: int = 4,
                 sampler: Sampler | None = None, type_compatible: TypeCompatible | None = None):
        if not 0.0 <= p_tighten <= 1.0:
            raise ValueError(f"p_tighten must be in [0, 1], got {p_tighten}")
        if style not in STYLES:
            raise ValueError(f"unknown compose style {style!r}; expected one of {STYLES}")
        self.types = tuple(t for t in type_ids(types) if get_type(t).sampler is not None
                           or sampler is not None)
        self.p_tighten, self.pool, self.style, self.tries = p_tighten, pool, style, tries
        self.sampler = sampler or (lambda t, state, rng: get_type(t).sample(rng, self.pool))
        self.type_compatible = type_compatible

    def _ok(self, c: Constraint, others: Sequence[Constraint]) -> bool:
        if not compatible_with_all(c, others):
            return False
        return self.type_compatible is None or all(self.type_compatible(c.id, o.id) for o in others)

    def _tighten(self, state: ChainState, rng: random.Random) -> Evolution | None:
        idx = list(range(len(state.constraints)))
        rng.shuffle(idx)
        for i in idx:
            old = state.constraints[i]
            new = tighten(old)
            others = [c for j, c in enumerate(state.constraints) if j != i]
            if new is not None and self._ok(new, others):
                cons = state.constraints[:i] + (new,) + state.constraints[i + 1:]
                return Evolution(self._state(state, cons), "tighten", (new,), (old,))
        return None

    def _add(self, state: ChainState, rng: random.Random) -> Evolution | None:
        types = list(self.types)
        rng.shuffle(types)
        for t in types:
            for _ in range(self.tries):
                c = self.sampler(t, state, rng)
                if c not in state.constraints and self._ok(c, state.constraints):
                    return Evolution(self._state(state, state.constraints + (c,)), "add", (c,))
        return None

    def _state(self, state: ChainState, cons: tuple[Constraint, ...]) -> ChainState:
        text = compose(state.task, cons, state.compose_seed, self.style, state.input)
        return dataclasses.replace(state, text=text, constraints=cons, response=None)

    def evolve(self, states: Sequence[ChainState], seed: int
               ) -> tuple[list[Evolution | None], collections.Counter]:
        out: list[Evolution | None] = []
        fails: collections.Counter = collections.Counter()
        for j, state in enumerate(states):
            rng = random.Random(f"evolve:{seed}:{j}")
            ev = None
            if rng.random() < self.p_tighten:
                ev = self._tighten(state, rng)
            if ev is None:
                ev = self._add(state, rng)
            if ev is None:
                ev = self._tighten(state, rng)
            if ev is None:
                fails["no_compatible_constraint"] += 1
            out.append(ev)
        return out, fails


# ------------------------------------------------------------------------------ policy / teacher

def typed_difference(old: Sequence[Constraint], new: Sequence[Constraint]
                     ) -> tuple[list[Constraint], list[Constraint]]:
    """(constraints of `new` not in `old`, constraints of `old` not in `new`), by typed identity."""
    ok, nk = {c.key() for c in old}, {c.key() for c in new}
    return [c for c in new if c.key() not in ok], [c for c in old if c.key() not in nk]


def _strip_typed_text(c: Constraint) -> Constraint:
    return Constraint(c.id, c.kwargs) if c.id != "free_text" else c


class PolicyEvolver:
    """The policy (or a separate teacher Policy) rewrites x_{k-1} into x_k (see the module doc)."""

    def __init__(self, policy: Policy, sampling: Sampling | None = None, name: str = "policy"):
        self.policy = policy
        self.sampling = sampling or Sampling(temperature=0.7, max_new_tokens=256)
        self.name = name

    def evolve(self, states: Sequence[ChainState], seed: int
               ) -> tuple[list[Evolution | None], collections.Counter]:
        fails: collections.Counter = collections.Counter()
        if not states:
            return [], fails
        replies = self.policy.chat([evolve_messages(s.text) for s in states], self.sampling, seed)
        out: list[Evolution | None] = []
        for state, reply in zip(states, replies):
            text = reply[0] if reply and isinstance(reply[0], str) else ""
            ev, why = self._parse(state, clean_output(text))
            if ev is None:
                fails[why] += 1
            out.append(ev)
        return out, fails

    def _parse(self, state: ChainState, text: str) -> tuple[Evolution | None, str]:
        if not text:
            return None, "empty"
        if text == state.text.strip():
            return None, "unchanged"
        old = [_strip_typed_text(c) for c in rule_decompose(state.text)]
        dec = decompose_instruction(text)
        new = [_strip_typed_text(c) for c in dec.constraints]
        added, removed = typed_difference(old, new)
        if not added:
            return None, "no_new_constraint"
        if any(r.id not in {a.id for a in added} for r in removed):
            return None, "lost_constraint"
        op = "tighten" if removed else "add"
        new_state = dataclasses.replace(state, text=text, task=dec.task or state.task,
                                        constraints=tuple(new), input=dec.input, response=None)
        return Evolution(new_state, op, tuple(added), tuple(removed)), ""


__all__ = ["ChainState", "EVOLVERS", "Evolution", "Evolver", "PolicyEvolver", "RuleEvolver",
           "TIGHTENABLE", "TYPE_SETS", "tighten", "type_ids", "typed_difference"]
