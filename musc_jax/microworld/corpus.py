"""The imperfect SFT corpus of the microworld: every role the recipes give the policy.

respond (instruction -> response following each constraint with a probability that falls with
the level), judge (verdict, right with probability `judge_accuracy`), refine (a failed response
plus its judgement -> a response that fixes each missed constraint with probability
`refine_fix`), decompose, compose and evolve. Prompts come from `musc_jax.data.roles`, the same
functions the pair builders call.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from musc_jax.data.constraints import verify_all
from musc_jax.data.decompose import format_decomposition
from musc_jax.data.recombine import render_parts
from musc_jax.data.roles import (compose_messages, decompose_messages, evolve_messages,
                                 judge_messages, judgement_text, refine_messages,
                                 respond_messages)
from musc_jax.microworld.world import (MICROWORLD_TYPES, TASKS, Instruction, World, compatible,
                                       imperfect_response, sample_constraint, sample_instruction,
                                       write_response)

ROLES = ("respond", "judge", "refine", "decompose", "compose", "evolve")


@dataclass(frozen=True)
class CorpusConfig:
    """Mix and imperfection of the SFT corpus."""

    respond: float = 0.62
    judge: float = 0.12
    refine: float = 0.10
    decompose: float = 0.05
    compose: float = 0.05
    evolve: float = 0.06
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


def _judge(world: World, rng: random.Random, cfg: CorpusConfig) -> dict:
    inst = sample_instruction(world.lexicon, rng.randint(1, cfg.max_level), rng)
    resp, _ = imperfect_response(world.lexicon, inst, rng, p_first=cfg.p_first, p_last=cfg.p_last)
    passed = verify_all(resp, inst.constraints)
    truth = all(p is not False for p in passed)
    said = truth if rng.random() < cfg.judge_accuracy else not truth
    missed = missed_sentences(inst, passed) if not truth else []
    if not said and truth:  # a wrong "no" names a constraint at random
        missed = [rng.choice(render_parts(inst.task, inst.constraints, inst.seed)[1:])]
    return {"prompt": judge_messages(inst.text, resp), "response": judgement_text(said, missed),
            "role": "judge", "level": inst.level}


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
    judgement = judgement_text(False, missed_sentences(inst, passed))
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


_MAKERS = {"respond": _respond, "judge": _judge, "refine": _refine, "decompose": _decompose,
           "compose": _compose, "evolve": _evolve}


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
