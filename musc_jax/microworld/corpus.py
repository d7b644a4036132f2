"""The imperfect SFT corpus of the microworld: every role the recipes give the policy.

respond (instruction -> response following each constraint with a probability that falls with
the level), judge (verdict, right with probability `judge_accuracy`; the plain verdict-first
prompt that self_reward and MuSC's self filter send, and the critique-then-verdict prompt SPaR's
judge sends), refine (a failed response plus its judgement, plain or critique, -> a response that
fixes each missed constraint with probability `refine_fix`), decompose (the zero-shot prompt of
`musc.decompose_prompt="zero_shot"`), compose (`musc.compose_prompt="parts"`), evolve and edit
(negate or substitute one constraint: what MuSC's corruption asks of the policy for free-text
constraints). Prompts come from `musc_jax.data.roles`, the same functions the pair builders call.

Changing this mix changes the corpus: the shipped base model is rebuilt with
`python -m musc_jax.sft --config configs/microworld_sft.py` (about 25 minutes on 2 free cores),
which changes every microworld number.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from musc_jax.data.constraints import negate, verify_all
from musc_jax.data.decompose import format_decomposition
from musc_jax.data.recombine import render_parts
from musc_jax.data.roles import (compose_messages, critique_judge_messages, critique_text,
                                 decompose_messages, edit_constraint_messages, evolve_messages,
                                 judge_messages, judgement_text, refine_messages,
                                 respond_messages)
from musc_jax.microworld.world import (MICROWORLD_TYPES, TASKS, Instruction, World, compatible,
                                       imperfect_response, sample_constraint, sample_instruction,
                                       write_response)

ROLES = ("respond", "judge", "critique", "refine", "decompose", "compose", "evolve", "edit")


@dataclass(frozen=True)
class CorpusConfig:
    """Mix and imperfection of the SFT corpus."""

    respond: float = 0.58
    judge: float = 0.08
    critique: float = 0.06
    refine: float = 0.10
    decompose: float = 0.05
    compose: float = 0.05
    evolve: float = 0.05
    edit: float = 0.03
    p_first: float = 0.8          # follow probability at level 1 ...
    p_last: float = 0.45          # ... falling linearly to this at level 5
    judge_accuracy: float = 0.85
    refine_fix: float = 0.7
    max_level: int = 5


def missed_sentences(inst: Instruction, passed: list[bool | None]) -> list[str]:
    """The instruction's own sentences for the constraints a response misses."""
    parts = render_parts(inst.task, inst.constraints, inst.seed)[1:]
    return [s for s, ok in zip(parts, passed) if ok is False]


def _respond(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
    resp, _ = imperfect_response(world.lexicon, inst, rng, p_first=cfg.p_first, p_last=cfg.p_last)
    return {"prompt": respond_messages(inst.text), "response": resp, "role": "respond",
            "level": inst.level}


def _judged(world: World, rng: random.Random, cfg: CorpusConfig):
    """(instruction, response, said, missed, kept): an imperfect judgement of a response."""
    inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
    resp, _ = imperfect_response(world.lexicon, inst, rng, p_first=cfg.p_first, p_last=cfg.p_last)
    passed = verify_all(resp, inst.constraints)
    truth = all(p is not False for p in passed)
    said = truth if rng.random() < cfg.judge_accuracy else not truth
    missed = missed_sentences(inst, passed) if not truth else []
    if not said and truth:  # a wrong "no" names a constraint at random
        missed = [rng.choice(render_parts(inst.task, inst.constraints, inst.seed)[1:])]
    if said and not truth:  # a wrong "yes" misses nothing
        missed = []
    parts = render_parts(inst.task, inst.constraints, inst.seed)[1:]
    return inst, resp, said, missed, [x for x in parts if x not in missed]


def _judge(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst, resp, said, missed, _ = _judged(world, rng, cfg)
    return {"prompt": judge_messages(inst.text, resp), "response": judgement_text(said, missed),
            "role": "judge", "level": inst.level}


def _critique(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst, resp, said, missed, kept = _judged(world, rng, cfg)
    return {"prompt": critique_judge_messages(inst.text, resp),
            "response": critique_text(said, missed, kept), "role": "critique", "level": inst.level}


def _edit(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    """Negate one constraint (where it has an opposite) or swap it for one of another type."""
    while True:
        inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
        c = rng.choice(inst.constraints)
        op = "negate" if negate(c) is not None and rng.random() < 0.5 else "substitute"
        if op == "negate":
            new = negate(c)
        else:
            topic = next(t for t in world.lexicon if t.name == inst.topic)
            have = [x.id for x in inst.constraints]
            options = [t for t in MICROWORLD_TYPES if t not in have
                       and all(compatible(t, u) for u in have if u != c.id)]
            if not options:
                continue
            new = sample_constraint(rng.choice(options), topic, rng)
        seed = rng.getrandbits(31)
        old_text, new_text = render_parts(inst.task, [c], seed)[1], render_parts(inst.task, [new], seed)[1]
        return {"prompt": edit_constraint_messages(op, inst.task, old_text), "response": new_text,
                "role": "edit", "level": inst.level}


def _refine(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    for _ in range(20):
        inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
        resp, follow = imperfect_response(world.lexicon, inst, rng, p_first=cfg.p_first,
                                          p_last=cfg.p_last)
        passed = verify_all(resp, inst.constraints)
        if not all(p is not False for p in passed):
            break
    missed = [i for i, p in enumerate(passed) if p is False]
    fixed = set(follow) | {i for i in missed if rng.random() < cfg.refine_fix}
    better = write_response(world.lexicon, inst, fixed, rng)
    said = missed_sentences(inst, passed)
    # SPaR's refiner sees the judge's critique; other callers a plain judgement: teach both.
    judgement = (critique_text(False, said, [x for x in render_parts(
        inst.task, inst.constraints, inst.seed)[1:] if x not in said])
        if rng.random() < 0.5 else judgement_text(False, said))
    return {"prompt": refine_messages(inst.text, resp, judgement), "response": better,
            "role": "refine", "level": inst.level}


def _decompose(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
    parts = render_parts(inst.task, inst.constraints, inst.seed)
    return {"prompt": decompose_messages(inst.text),
            "response": format_decomposition(parts[0], parts[1:]), "role": "decompose",
            "level": inst.level}


def _compose(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
    parts = render_parts(inst.task, inst.constraints, inst.seed)
    return {"prompt": compose_messages(parts[0], parts[1:]), "response": inst.text,
            "role": "compose", "level": inst.level}


def evolve_instruction(world: World, inst: Instruction, rng: random.Random) -> Instruction | None:
    """`inst` with one more compatible constraint (same seed: shared sentences unchanged)."""
    topic = next(t for t in world.lexicon if t.name == inst.topic)
    have = [c.id for c in inst.constraints]
    options = [t for t in MICROWORLD_TYPES if all(compatible(t, u) for u in have)]
    rng.shuffle(options)
    for t in options:
        new = Instruction(inst.topic, inst.task, inst.constraints + (sample_constraint(t, topic, rng),),
                          inst.seed)
        if all(verify_all(world.ideal(new), new.constraints)):
            return new
    return None


def _evolve(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    while True:
        inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level - 1), rng)
        new = evolve_instruction(world, inst, rng)
        if new is not None:
            return {"prompt": evolve_messages(inst.text), "response": new.text, "role": "evolve",
                    "level": new.level}


_MAKERS = {"respond": _respond, "judge": _judge, "critique": _critique, "refine": _refine,
           "decompose": _decompose, "compose": _compose, "evolve": _evolve, "edit": _edit}


def corpus_rows(world: World, n: int, seed: int, cfg: CorpusConfig = CorpusConfig()) -> Iterator[dict]:
    """`n` SFT rows ({"prompt": messages, "response", "role", "level"}), fixed by `seed`."""
    rng = random.Random(seed)
    weights = [getattr(cfg, r) for r in ROLES]
    for _ in range(n):
        role = rng.choices(ROLES, weights)[0]
        yield _MAKERS[role](world, rng, cfg)


def plain_task_rows(world: World, n: int, seed: int) -> Iterator[dict]:
    """Level-0 rows: a bare task and the plain answer (the writer's defaults)."""
    rng = random.Random(seed)
    for _ in range(n):
        topic = rng.choice(world.lexicon)
        inst = Instruction(topic.name, rng.choice(TASKS).format(t=topic.name), (), rng.getrandbits(31))
        yield {"prompt": respond_messages(inst.text),
               "response": write_response(world.lexicon, inst, set(), rng), "role": "respond",
               "level": 0}
