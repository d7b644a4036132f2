"""scripts/smollm2_experiments.py: the check that a rebuilt pairs set is the owner run's, which
runs a restart skips, and the paired comparison with MuSC."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

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


def test_restart_skips_runs_with_a_committed_summary(tmp_path, monkeypatch):
    """A run whose summary is committed is not run again though its work dir is gone; one
    without a summary is (the check can fail)."""
    monkeypatch.setattr(experiments, "SUMMARIES", tmp_path / "summaries")
    (tmp_path / "summaries").mkdir()
    (tmp_path / "summaries" / "musc_seed1.json").write_text("{}")
    started = []

    def fake_train(overrides: list[str], workdir: Path) -> float:
        started.append(workdir.name)
        raise RuntimeError("stop before running")

    monkeypatch.setattr(experiments, "_train", fake_train)
    experiments.run_variant("musc", 1, tmp_path / "runs", [])
    assert started == []
    with pytest.raises(RuntimeError, match="stop before running"):
        experiments.run_variant("random", 1, tmp_path / "runs", [])
    assert started == ["random_seed1"]


def test_paired_section_compares_musc_with_each_row_per_prompt():
    """Hand-checked: on 4 prompts MuSC (one seed) passes 1, 2, 3 and random passes 1 at seed 1
    and 1, 4 at seed 2, so per prompt random averages (1, 0, 0, 0.5) and MuSC leads by
    (0 + 1 + 1 - 0.5) / 4 = 37.5 points; a run without `strict_pass` is named, not used."""
    run = lambda variant, seed, passed: {"variant": variant, "seed": seed,  # noqa: E731
                                         "label": variant, "strict_pass": passed}
    groups = {"base": [run("base", None, [1])],
              "random": [run("random", 1, [1]), run("random", 2, [1, 4]),
                         {"variant": "random", "seed": 0, "label": "random"}],
              "musc": [run("musc", 1, [1, 2, 3])]}
    lines = experiments.paired_section(groups, [1, 2, 3, 4])
    row = next(line for line in lines if line.startswith("| random |"))
    assert row.startswith("| random | 1; 1,2 | +37.5 [")
    lo, hi = (float(x) for x in row.split("[")[1].split("]")[0].split(","))
    assert lo <= 37.5 <= hi
    assert lines[-1].endswith("random seed 0.")
    assert experiments.paired_section({"random": groups["random"]}, [1, 2, 3, 4]) == []
