"""Seed instructions: what the pair builders start from."""

from __future__ import annotations

import dataclasses
from typing import Any

from musc_jax.data.constraints import Constraint


@dataclasses.dataclass
class Seed:
    """One seed instruction.

    prompt: the instruction text (x). task / constraints: its decomposition when known (the
    microworld and IFEval-style data carry typed constraints; otherwise a decomposer fills them
    in). meta: provenance (source file and line, level, ...), copied into the pairs' `meta`.
    """

    prompt: str
    task: str | None = None
    constraints: list[Constraint] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
