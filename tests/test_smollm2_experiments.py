"""scripts/smollm2_experiments.py: the check that a rebuilt pairs set is the owner run's."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("smollm2_experiments",
                                               REPO / "scripts" / "smollm2_experiments.py")
experiments = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(experiments)


def test_same_build_compares_count_negativity_and_weight_mass():
    owner = json.loads((REPO / "docs/results/smollm2_default_seed0/stats.json").read_text())
    assert experiments._owner_build_stats("musc", 0) == owner
    assert experiments._owner_build_stats("random", 0) is None     # nothing committed for it
    rebuilt = {**owner, "pairs_dir": "elsewhere", "shards": {"built": 0, "resumed": 4}}
    same = experiments.same_build(owner, rebuilt)
    assert same["checked"] and same["same"] and same["weight_mass_max_gap"] == 0.0
    mass = dict(owner["weight_mass_by_constraint"])
    key = next(iter(mass))
    mass[key] += 1e-4
    moved = experiments.same_build(owner, {**owner, "weight_mass_by_constraint": mass})
    assert not moved["same"] and abs(moved["weight_mass_max_gap"] - 1e-4) < 1e-12
    fewer = experiments.same_build(owner, {**owner, "pairs": owner["pairs"] - 1})
    assert not fewer["same"] and fewer["pairs"] == owner["pairs"] - 1
    assert experiments.same_build(None, owner) == {"checked": False,
                                                   "why": "no build stats of the owner run"}
