"""What the microworld registers with the generic data package, and its pairs-config defaults.

Importing `musc_jax.microworld` (any module of it) registers:

* the seed source "microworld" (`world_seeds`): `World.instructions(n, seed, levels)`, each seed
  carrying its task, typed constraints and the composer seed of its text;
* the rule evolver "microworld" (ECD's `types="microworld"`): the world's constraint types, its
  argument sampler (by the chain's topic) and its table of type conflicts.

`pairs_config(method)` is `base_pairs_config(method)` with the world's defaults (the shipped
base model, the world's seeds and lexicon), used by configs/pairs_*.py and configs/microworld*.py.
"""

from __future__ import annotations

import random
from typing import Sequence

from ml_collections import ConfigDict

from musc_jax.data.constraints import DEFAULT_POOL, Constraint, get_type
from musc_jax.data.evolve import ChainState, RuleEvolver, register_rule_evolver
from musc_jax.data.seeds import Seed, register_seed_source
from musc_jax.microworld.assets import BASE_MODEL, WORLD_SEED
from musc_jax.microworld.world import MICROWORLD_TYPES, World, compatible, sample_constraint

NAME = "microworld"


def world_seeds(n: int, seed: int = 0, levels: Sequence[int] = (1, 2, 3, 4, 5),
                world_seed: int | None = None) -> list[Seed]:
    """`n` microworld instructions as seeds (task, typed constraints, composer seed in meta)."""
    world = World(WORLD_SEED if world_seed is None else int(world_seed))
    out = []
    for i, inst in enumerate(world.instructions(n, seed, tuple(levels))):
        out.append(Seed(prompt=inst.text, task=inst.task, constraints=list(inst.constraints),
                        meta={"source": NAME, "index": i, "topic": inst.topic,
                              "level": inst.level, "compose_seed": inst.seed}))
    return out


def rule_evolver(p_tighten: float = 0.3, style: str = "paragraph",
                 world_seed: int | None = None) -> RuleEvolver:
    """The world's types with its own argument sampler (by the state's topic, `meta["topic"]`)
    and its table of type conflicts."""
    lexicon = {t.name: t for t in World(WORLD_SEED if world_seed is None else world_seed).lexicon}

    def sampler(t: str, state: ChainState, rng: random.Random) -> Constraint:
        topic = lexicon.get(str(state.meta.get("topic")))
        if topic is None:
            return get_type(t).sample(rng, DEFAULT_POOL)
        return sample_constraint(t, topic, rng)

    return RuleEvolver(MICROWORLD_TYPES, p_tighten, style=style, sampler=sampler,
                       type_compatible=lambda a, b: a == b or compatible(a, b))


def pairs_config(method: str = "musc") -> ConfigDict:
    """`base_pairs_config(method)` with the microworld's defaults (small sizes)."""
    from musc_jax.data.builders.run import base_pairs_config

    c = base_pairs_config(method)
    c.model.path = str(BASE_MODEL)
    c.data.source = NAME
    c.data.num_seeds = 64
    c.data.levels = (2, 3, 4, 5)
    c.data.world_seed = WORLD_SEED
    if "ecd" in c:
        c.ecd.types = NAME
    return c


register_seed_source(NAME, world_seeds)
register_rule_evolver(NAME, lambda p_tighten, style: rule_evolver(p_tighten, style))

__all__ = ["NAME", "pairs_config", "rule_evolver", "world_seeds"]
