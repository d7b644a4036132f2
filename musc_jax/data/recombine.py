"""Corrupt a constraint list (MuSC step 2) and compose instructions back into text (step 3).

The core task is kept apart from the constraints everywhere in this module: `corrupt` receives
only the constraints c2..cn (a `Decomposition.constraints` list), so the task cannot be touched;
`compose` takes the task as its own argument and always renders it first and unchanged.

Consistency (DESIGN 5.1 step 3): the template used for a constraint depends only on the seed
and on the constraint itself, never on its neighbours, so composing C and its corruption C'
with the same seed and style yields x and x' whose sentences for the shared constraints are
identical and in the same order.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

from musc_jax.data.constraints import (DEFAULT_POOL, ArgPool, Constraint, compatible_with_all,
                                       get_type, negate, render)
from musc_jax.data.decompose import Decomposition, rule_decompose

OPS = ("drop", "negate", "substitute")


@dataclass(frozen=True)
class CorruptionConfig:
    """How many constraints to corrupt (rate) and how (probabilities that sum to 1)."""

    rate: float = 0.3
    p_drop: float = 0.5
    p_negate: float = 0.25
    p_substitute: float = 0.25
    substitute_tries: int = 8  # samples tried per substitute type before falling back

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"CorruptionConfig.rate must be in [0, 1], got {self.rate}")
        probs = (self.p_drop, self.p_negate, self.p_substitute)
        if min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
            raise ValueError("CorruptionConfig: p_drop + p_negate + p_substitute must be 1 with "
                             f"each >= 0, got {probs}")


@dataclass(frozen=True)
class CorruptionRecord:
    """What happened to one constraint. `op` is the drawn operation; `applied` is what was done
    after fallbacks (negate -> substitute -> drop when no clean/compatible result exists)."""

    index: int  # position in the input constraint list
    op: str
    applied: str
    original: Constraint
    replacement: Constraint | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "applied": self.applied,
                "original": self.original.to_dict(),
                "replacement": None if self.replacement is None else self.replacement.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CorruptionRecord":
        rep = d.get("replacement")
        return cls(d["index"], d["op"], d["applied"], Constraint.from_dict(d["original"]),
                   None if rep is None else Constraint.from_dict(rep))


def n_to_corrupt(n_eligible: int, rate: float) -> int:
    """k = max(1, round(rate * n)), rounding halves up (Python's round() would round 2.5 to 2)."""
    if n_eligible <= 0:
        return 0
    return min(n_eligible, max(1, math.floor(rate * n_eligible + 0.5 + 1e-9)))


def _draw_op(rng: random.Random, cfg: CorruptionConfig) -> str:
    u = rng.random()
    if u < cfg.p_drop:
        return "drop"
    return "negate" if u < cfg.p_drop + cfg.p_negate else "substitute"


def _substitute(c: Constraint, others: Sequence[Constraint], rng: random.Random,
                pool: ArgPool, tries: int) -> Constraint | None:
    """A constraint of another type, compatible with `others`, or None."""
    types = [t for t in get_type(c.id).substitutes
             if t != c.id and get_type(t).sampler is not None]
    rng.shuffle(types)
    for t in types:
        for _ in range(tries):
            cand = get_type(t).sample(rng, pool)
            if compatible_with_all(cand, others):
                return cand
    return None


def corrupt(constraints: Sequence[Constraint], rng: random.Random, rate: float = 0.3,
            p_drop: float = 0.5, p_negate: float = 0.25, p_substitute: float = 0.25, *,
            config: CorruptionConfig | None = None, pool: ArgPool = DEFAULT_POOL
            ) -> tuple[list[Constraint], list[CorruptionRecord]]:
    """Corrupt k = max(1, round(rate * n)) of the n constraints (the task is not among them).

    Each picked constraint is dropped, negated or substituted with the configured
    probabilities. A negation that does not exist (see constraints.negate) or clashes with the
    remaining constraints falls back to substitution; a substitution with no compatible
    candidate falls back to dropping. Replacements stay in place, so the order of the untouched
    constraints is preserved. Returns (corrupted constraints, one record per picked constraint).
    """
    cfg = config or CorruptionConfig(rate, p_drop, p_negate, p_substitute)
    if not constraints:
        raise ValueError("corrupt needs at least one constraint besides the task "
                         "(decompositions with fewer than 2 constraints should be dropped)")
    n = len(constraints)
    picked = sorted(rng.sample(range(n), n_to_corrupt(n, cfg.rate)))
    ops = [_draw_op(rng, cfg) for _ in picked]
    current: list[Constraint | None] = list(constraints)
    records = {}
    # Drops first (they only relax the rest), then negations (fixed results), then
    # substitutions, which can pick something compatible with everything else.
    order = sorted(zip(picked, ops), key=lambda x: OPS.index(x[1]))
    for i, op in order:
        c = current[i]
        others = [x for j, x in enumerate(current) if j != i and x is not None]
        applied, new = op, None
        if op == "negate":
            new = negate(c)
            if new is None or not compatible_with_all(new, others):
                applied, new = "substitute", None
        if applied == "substitute":
            new = _substitute(c, others, rng, pool, cfg.substitute_tries)
            if new is None:
                applied = "drop"
        current[i] = new if applied != "drop" else None
        records[i] = CorruptionRecord(i, op, applied, c, new)
    return [x for x in current if x is not None], [records[i] for i in picked]


def corrupt_decomposition(dec: Decomposition, rng: random.Random,
                          config: CorruptionConfig | None = None, pool: ArgPool = DEFAULT_POOL
                          ) -> tuple[Decomposition, list[CorruptionRecord]]:
    """`corrupt` on a Decomposition: same task and input, corrupted constraints."""
    cons, recs = corrupt(dec.constraints, rng, config=config or CorruptionConfig(), pool=pool)
    return Decomposition(dec.task, cons, dec.input), recs


def corruption_stats(records: Sequence[CorruptionRecord]) -> dict[str, float]:
    """Shares of drawn and applied operations (DESIGN 5.1: always log the rates)."""
    n = len(records) or 1
    out = {f"op/{o}": sum(r.op == o for r in records) / n for o in OPS}
    out.update({f"applied/{o}": sum(r.applied == o for r in records) / n for o in OPS})
    out["fallback"] = sum(r.op != r.applied for r in records) / n
    return out


# --------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------

STYLES = ("paragraph", "lines", "list")


def template_choice(c: Constraint, seed: int) -> int:
    """Template index for `c`: a hash of (seed, constraint), independent of other constraints."""
    h = hashlib.sha256(f"{seed}\x00{c.key()}".encode()).digest()
    return int.from_bytes(h[:8], "big")


def _task_sentence(task: str) -> str:
    task = task.strip()
    if not task:
        raise ValueError("compose needs a non-empty task")
    return task if task[-1] in ".!?:\"')" else task + "."


def render_parts(task: str, constraints: Sequence[Constraint], seed: int = 0) -> list[str]:
    """[task sentence, one sentence per constraint] in order."""
    return [_task_sentence(task)] + [render(c, template_choice(c, seed)) for c in constraints]


def compose(task: str, constraints: Sequence[Constraint], seed: int = 0,
            style: str = "paragraph", input: str | None = None) -> str:
    """Instruction text from the task and constraints with the template composer.

    style: "paragraph" (one paragraph), "lines" (one sentence per line) or "list" (task, then
    the constraints as a bulleted requirements list). `input` is appended after a blank line.
    A repeat_prompt constraint's prompt_to_repeat is not rewritten here.
    """
    if style not in STYLES:
        raise ValueError(f"unknown compose style {style!r}; expected one of {STYLES}")
    if not isinstance(seed, int):
        # A Random would be advanced by the first call, so x and x' would not match.
        raise ValueError(f"compose needs an int seed, got {type(seed).__name__}; use "
                         "compose_pair(..., seed=rng) to compose x and x' from one Random")
    head, *cons = render_parts(task, constraints, seed)
    if style == "paragraph":
        text = " ".join([head] + cons)
    elif style == "lines":
        text = "\n".join([head] + cons)
    else:
        text = head + ("\n\nRequirements:\n" + "\n".join(f"- {s}" for s in cons) if cons else "")
    return text + (f"\n\n{input.strip()}" if input and input.strip() else "")


def compose_pair(task: str, constraints: Sequence[Constraint], corrupted: Sequence[Constraint],
                 seed: int | random.Random = 0, style: str = "paragraph",
                 input: str | None = None) -> tuple[str, str]:
    """(x, x') composed with the same settings; a Random draws one seed used for both."""
    if isinstance(seed, random.Random):
        seed = seed.getrandbits(32)
    return (compose(task, constraints, seed, style, input),
            compose(task, corrupted, seed, style, input))


# --------------------------------------------------------------------------------------------
# Self composer: the policy rewrites the template text; checked, with a counted fallback
# --------------------------------------------------------------------------------------------

SELF_COMPOSE_SYSTEM = (
    "Rewrite the instruction so it reads naturally, as one request from a user. Keep the task "
    "and every requirement with its exact numbers, words and phrases; add nothing. Write only "
    "the rewritten instruction.")


@dataclass
class ComposeStats:
    total: int = 0
    accepted: int = 0
    fallbacks: int = 0


def _typed_ids(text: str) -> list[tuple[str, str]]:
    return sorted((c.id, c.key()) for c in rule_decompose(text))


def self_compose(items: Sequence[tuple[str, Sequence[Constraint]]],
                 generate_fn: Callable[[list[list[dict[str, str]]]], list[str]],
                 seed: int = 0, style: str = "paragraph") -> tuple[list[str], ComposeStats]:
    """Compose with the policy. Each output must keep every typed constraint that
    `rule_decompose` finds in the template text (same ids and arguments); otherwise the
    template text is used and the fallback is counted. Unlike the template composer, this
    cannot promise that x and x' share their wording for unchanged constraints."""
    templ = [compose(task, cons, seed, style) for task, cons in items]
    convs = [[{"role": "system", "content": SELF_COMPOSE_SYSTEM},
              {"role": "user", "content": t}] for t in templ]
    outs = list(generate_fn(convs))
    if len(outs) != len(templ):
        raise ValueError(f"generate_fn returned {len(outs)} outputs for {len(templ)} "
                         "conversations")
    stats = ComposeStats(total=len(templ))
    texts = []
    for t, o in zip(templ, outs):
        o = o.strip() if isinstance(o, str) else ""
        o = re.sub(r"^(?:rewritten instruction|instruction)\s*:\s*", "", o, flags=re.I)
        if o and _typed_ids(o) == _typed_ids(t):
            stats.accepted += 1
            texts.append(o)
        else:
            stats.fallbacks += 1
            texts.append(t)
    return texts, stats


def config_dict(cfg: CorruptionConfig) -> dict[str, Any]:
    return asdict(cfg)
