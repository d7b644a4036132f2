"""Baseline builders: self-rewarding (best vs worst by the self judge) and random pairs."""

import re

import pytest

from musc_jax.data.builders.baselines import build_random, build_self_reward
from musc_jax.data.constraints import make
from musc_jax.data.pairs_io import normalize_pair
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.roles import respond_messages
from musc_jax.data.seeds import Seed

# Four samples per instruction; a response "r<n>" gets n yes-votes out of 5.
ACTOR = {
    "One.": ["r2", "r4", "r1", "r4"],       # best r4 (first), worst r1
    "Two.": ["r3", "r3", "r3", "r3"],       # all values tie: skipped
    "Three.": ["r5", "", "", ""],           # fewer than 2 judged samples: skipped
    "Four.": ["r0", "zz", "r5", "r0"],      # "zz": unparsable votes only -> not ranked
}


def reply(conv, k, seed):
    text = conv[-1]["content"]
    if text.startswith("Judge the response."):
        resp = re.search(r"^Response: (.*)$", text, re.M).group(1)
        if resp == "zz":
            return "???"
        return "yes" if k < int(resp[1:]) else "no it misses: something"
    return ACTOR[text][k]


SEEDS = [Seed(p, meta={"i": i}) for i, p in enumerate(ACTOR)]


def test_self_reward_best_vs_worst():
    policy = ScriptedPolicy(reply)
    rows, stats = build_self_reward(SEEDS, policy, None, seed=3)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        (respond_messages("One."), "r4", "r1"), (respond_messages("Four."), "r5", "r0")]
    assert all(r["method"] == "self_reward" for r in rows)
    assert rows[0]["meta"]["self_reward"] == {"chosen_value": 0.8, "rejected_value": 0.2,
                                              "judge": "self"}
    assert rows[0]["meta"]["i"] == 0 and rows[0]["meta"]["seed"] == 3
    for r in rows:
        normalize_pair(r)
    assert stats["all_tied"] == 1 and stats["too_few"] == 1 and stats["pairs"] == 2
    assert stats["samples"] == 16 and stats["empty_samples"] == 3
    assert stats["judge_unparsable"] == 5 and stats["judge_votes"] == 13 * 5
    actor = [s for c, s in policy.calls if not c[-1]["content"].startswith("Judge")]
    assert {(s.num_samples, s.temperature, s.top_p) for s in actor} == {(4, 0.9, 0.9)}
    judge = [s for c, s in policy.calls if c[-1]["content"].startswith("Judge")]
    assert {(s.num_samples, s.temperature) for s in judge} == {(5, 0.7)}


def test_self_reward_config():
    rows, stats = build_self_reward(SEEDS, ScriptedPolicy(reply), {"samples": 2}, seed=0)
    # Only the first 2 samples: One (r2 vs r4), Four (r0 vs zz: zz unranked -> too few).
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("r4", "r2")]
    with pytest.raises(ValueError, match="sample"):
        build_self_reward(SEEDS, ScriptedPolicy(reply), {"sample": 3})
    with pytest.raises(ValueError, match="samples >= 2"):
        build_self_reward(SEEDS, ScriptedPolicy(reply), {"samples": 1})


def test_self_reward_verifier_judge():
    lower = make("change_case:english_lowercase")
    outs = {"A.": ["The quiet river is calm", "the quiet river is calm", "The River", "x y"],
            "B.": ["The stone is cold today"] * 4}
    rows, stats = build_self_reward(
        [Seed("A.", constraints=[lower]), Seed("B.", constraints=[lower])],
        ScriptedPolicy(lambda conv, k, seed: outs[conv[-1]["content"]][k]), {"judge": "verifier"})
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("the quiet river is calm", "The quiet river is calm")]
    assert rows[0]["constraints"] == [lower.to_dict()] and stats["all_tied"] == 1


def test_self_reward_skips_identical_texts():
    # A noisy judge (votes depend on the call's seed) can value one text twice differently.
    def reply(conv, k, seed):
        if conv[-1]["content"].startswith("Judge the response."):
            return "yes" if seed % 2 else "no"
        return "same text"
    rows, stats = build_self_reward([Seed("A.")], ScriptedPolicy(reply), None)
    assert rows == [] and stats["identical"] == 1


def test_random_pairs():
    outs = {"One.": ["a", "b"], "Two.": ["c", "d"], "Three.": ["e", ""], "Four.": ["f", "f"]}
    policy = ScriptedPolicy(lambda conv, k, seed: outs[conv[-1]["content"]][k])
    rows, stats = build_random(SEEDS, policy, None, seed=0)
    assert len(rows) == 2 and stats["empty"] == 1 and stats["identical"] == 1
    assert all(r["method"] == "random" for r in rows)
    assert {frozenset((r["chosen"], r["rejected"])) for r in rows} == {frozenset("ab"),
                                                                     frozenset("cd")}
    assert not [c for c, _ in policy.calls if c[-1]["content"].startswith("Judge")]
    assert {s.num_samples for _, s in policy.calls} == {2}
    for r in rows:
        normalize_pair(r)
        assert r["meta"]["random"]["swapped"] == (r["chosen"] in "bd")
    # Deterministic in the seed; over many prompts the coin lands both ways.
    again, _ = build_random(SEEDS, policy, None, seed=0)
    assert again == rows
    many = [Seed(f"P{i}.") for i in range(40)]
    rows, stats = build_random(many, ScriptedPolicy(lambda conv, k, seed: f"{conv[-1]['content']}{k}"),
                               None, seed=1)
    assert len(rows) == 40 and 5 < stats["swapped"] < 35
    with pytest.raises(ValueError, match="samples"):
        build_random(SEEDS, policy, {"samples": 3})
