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
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping, Sequence

from musc_jax.data.constraints import (DEFAULT_POOL, FREE_TEXT, ArgPool, Constraint,
                                       compatible_with_all, free_text, get_type, negate, render)
from musc_jax.data.decompose import Decomposition, rule_decompose
from musc_jax.data.roles import compose_messages

OPS = ("drop", "negate", "substitute")
FREETEXT_EDITS = ("policy", "typed")


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
    writer: str = "rule"  # "policy": a free-text negation/substitution the policy writes

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "applied": self.applied,
                "original": self.original.to_dict(),
                "replacement": None if self.replacement is None else self.replacement.to_dict(),
                "writer": self.writer}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CorruptionRecord":
        rep = d.get("replacement")
        return cls(d["index"], d["op"], d["applied"], Constraint.from_dict(d["original"]),
                   None if rep is None else Constraint.from_dict(rep), d.get("writer", "rule"))

    @property
    def pending(self) -> bool:
        """A policy-written replacement not written yet (see `apply_constraint_edits`)."""
        return self.writer == "policy" and self.applied != "drop" and self.replacement is None


def n_to_corrupt(n_eligible: int, rate: float) -> int:
    """k = max(1, round(rate * n)), rounding halves up (Python's round() would round 2.5 to 2)."""
    if n_eligible <= 0:
        return 0
    return min(n_eligible, max(1, math.floor(rate * n_eligible + 0.5 + 1e-9)))


def corruption_count(n_constraints: int, rate: float) -> int:
    """How many of `n_constraints` constraints (the task not among them) to corrupt: DESIGN 5.1's
    k = max(1, round(rate * n)) with n counting every constraint of C, the core task included
    (n = n_constraints + 1); at most n_constraints, since the task is never corrupted."""
    if n_constraints <= 0:
        return 0
    return min(n_constraints, n_to_corrupt(n_constraints + 1, rate))


def _draw_op(rng: random.Random, cfg: CorruptionConfig) -> str:
    u = rng.random()
    if u < cfg.p_drop:
        return "drop"
    return "negate" if u < cfg.p_drop + cfg.p_negate else "substitute"


def _substitute(c: Constraint, others: Sequence[Constraint], rng: random.Random,
                pool: ArgPool, tries: int, exclude: frozenset = frozenset()) -> Constraint | None:
    """A constraint of another type, compatible with `others`, or None. Types in `exclude` (the
    original list's) are never drawn: a substitute must not bring back a constraint that C
    already has (x' would then still ask for it, elsewhere)."""
    types = [t for t in get_type(c.id).substitutes
             if t != c.id and t not in exclude and get_type(t).sampler is not None]
    rng.shuffle(types)
    for t in types:
        for _ in range(tries):
            cand = get_type(t).sample(rng, pool)
            if compatible_with_all(cand, others):
                return cand
    return None


def corrupt(constraints: Sequence[Constraint], rng: random.Random, rate: float = 0.3,
            p_drop: float = 0.5, p_negate: float = 0.25, p_substitute: float = 0.25, *,
            config: CorruptionConfig | None = None, pool: ArgPool = DEFAULT_POOL,
            freetext: str = "typed") -> tuple[list[Constraint], list[CorruptionRecord]]:
    """Corrupt k = `corruption_count(len(constraints), rate)` constraints: max(1, round(rate * n))
    with n = len(constraints) + 1, counting the core task, which is never picked itself.

    Each picked constraint is dropped, negated or substituted with the configured
    probabilities. A negation that does not exist (see constraints.negate) or clashes with the
    remaining constraints falls back to substitution; a substitution with no compatible
    candidate falls back to dropping. Replacements stay in place, so the order of the untouched
    constraints is preserved. Returns (corrupted constraints, one record per picked constraint).

    freetext="policy": a free-text constraint drawn for negation or substitution gets a record
    with `writer="policy"` and no replacement yet (it stays in the returned list as a
    placeholder); the caller has the policy write it and calls `apply_constraint_edits`.
    "typed" negates/substitutes it like any constraint (a typed constraint of another type).
    """
    if freetext not in FREETEXT_EDITS:
        raise ValueError(f"freetext={freetext!r}: choose one of {FREETEXT_EDITS}")
    cfg = config or CorruptionConfig(rate, p_drop, p_negate, p_substitute)
    if not constraints:
        raise ValueError("corrupt needs at least one constraint besides the task "
                         "(decompositions with fewer than 2 constraints should be dropped)")
    n = len(constraints)
    picked = sorted(rng.sample(range(n), corruption_count(n, cfg.rate)))
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
        if freetext == "policy" and c.id == FREE_TEXT and op != "drop":
            records[i] = CorruptionRecord(i, op, op, c, None, writer="policy")
            continue  # placeholder: current[i] stays c until the policy writes its edit
        if op == "negate":
            new = negate(c)
            if new is None or not compatible_with_all(new, others):
                applied, new = "substitute", None
        if applied == "substitute":
            new = _substitute(c, others, rng, pool, cfg.substitute_tries,
                              frozenset(x.id for x in constraints))
            if new is None:
                applied = "drop"
        current[i] = new if applied != "drop" else None
        records[i] = CorruptionRecord(i, op, applied, c, new)
    return [x for x in current if x is not None], [records[i] for i in picked]


def corrupted_from(constraints: Sequence[Constraint],
                   records: Sequence[CorruptionRecord]) -> list[Constraint]:
    """C' from C and its records: drops removed, replacements in place, order kept."""
    by_index = {r.index: r for r in records}
    out = []
    for i, c in enumerate(constraints):
        r = by_index.get(i)
        if r is None:
            out.append(c)
        elif r.applied != "drop":
            if r.replacement is None:
                raise ValueError(f"record {i} ({r.op} by the {r.writer}) has no replacement yet")
            out.append(r.replacement)
    return out


def apply_constraint_edits(records: Sequence[CorruptionRecord], texts: Sequence[str | None]
                           ) -> tuple[list[CorruptionRecord], int]:
    """Fill the pending records (in order) with the policy's edits: a parsed text becomes a
    free-text replacement; None (unparsable or unchanged) falls back to dropping. Returns the
    records and how many fell back."""
    pending = [k for k, r in enumerate(records) if r.pending]
    if len(texts) != len(pending):
        raise ValueError(f"{len(texts)} edits for {len(pending)} pending records")
    out, failed = list(records), 0
    for k, t in zip(pending, texts):
        r = out[k]
        if t is None:
            out[k] = replace(r, applied="drop")
            failed += 1
        else:
            out[k] = replace(r, replacement=free_text(t))
    return out, failed


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


COMPOSE_PROMPTS = ("rewrite", "parts")


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", s.lower())).strip()


def keeps_constraints(text: str, template: str, constraints: Sequence[Constraint]) -> bool:
    """Whether a composed `text` keeps every constraint: the typed ones `rule_decompose` finds
    in the template text (same ids and arguments) and the wording of every free-text one
    (punctuation, case and spacing aside): a free-text constraint cannot be verified, so its
    own words are the only evidence that it survived."""
    if _typed_ids(text) != _typed_ids(template):
        return False
    have = _norm_text(text)
    return all(_norm_text(c.render()) in have for c in constraints if c.id == FREE_TEXT)


def self_compose(items: Sequence[tuple[str, Sequence[Constraint]]],
                 generate_fn: Callable[[list[list[dict[str, str]]]], list[str]],
                 seed: int = 0, style: str = "paragraph", prompt: str = "rewrite"
                 ) -> tuple[list[str], ComposeStats]:
    """Compose with the policy. prompt="rewrite" asks it to rewrite the template text
    (`SELF_COMPOSE_SYSTEM`); "parts" sends the task and constraint sentences
    (`roles.compose_messages`, the prompt the microworld's corpus teaches). Each output must
    keep every constraint (`keeps_constraints`: typed ones by id and arguments, free-text ones
    by their wording); otherwise the template text is used and the rejection is counted
    (`fallbacks`). Unlike the template composer, this cannot promise that x and x' share their
    wording for unchanged constraints."""
    if prompt not in COMPOSE_PROMPTS:
        raise ValueError(f"compose prompt {prompt!r}: choose one of {COMPOSE_PROMPTS}")
    templ = [compose(task, cons, seed, style) for task, cons in items]
    if prompt == "rewrite":
        convs = [[{"role": "system", "content": SELF_COMPOSE_SYSTEM},
                  {"role": "user", "content": t}] for t in templ]
    else:
        convs = [compose_messages(parts[0], parts[1:])
                 for parts in (render_parts(task, cons, seed) for task, cons in items)]
    outs = list(generate_fn(convs))
    if len(outs) != len(templ):
        raise ValueError(f"generate_fn returned {len(outs)} outputs for {len(templ)} "
                         "conversations")
    stats = ComposeStats(total=len(templ))
    texts = []
    for t, o, (_, cons) in zip(templ, outs, items):
        o = o.strip() if isinstance(o, str) else ""
        o = re.sub(r"^(?:rewritten instruction|instruction)\s*:\s*", "", o, flags=re.I)
        if o and keeps_constraints(o, t, cons):
            stats.accepted += 1
            texts.append(o)
        else:
            stats.fallbacks += 1
            texts.append(t)
    return texts, stats


def config_dict(cfg: CorruptionConfig) -> dict[str, Any]:
    return asdict(cfg)
