"""ECD evolution chains (DESIGN 5.4) with scripted policies: accepted / rejected steps, state."""

import collections
import dataclasses
import re

import pytest

from musc_jax.data import pairs_io
from musc_jax.data.builders.ecd import EcdConfig, build_ecd
from musc_jax.data.constraints import Constraint, make, verify_all
from musc_jax.data.decompose import decompose_instruction, rule_decompose
from musc_jax.data.evolve import ChainState, RuleEvolver, tighten
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.seeds import Seed
from musc_jax.microworld.plugin import world_seeds as microworld_seeds
from musc_jax.microworld.world import Instruction, World

EVOLVE_HEAD = "Make the instruction harder"


def _text(conv):
    return conv[-1]["content"]


def _no_bad(items):
    return [not it.response.startswith("BAD") for it in items]


def test_chain_keeps_state_on_rejection_and_runs_k_rounds():
    seeds = microworld_seeds(3, seed=2, levels=(1,))
    assert len({s.task for s in seeds}) == 3
    seeds.append(Seed("Describe the NEVERGOOD.", task="Describe the NEVERGOOD.",
                      constraints=[make("punctuation:no_comma")]))
    seen = collections.Counter()

    def reply(conv, k, seed):
        x = _text(conv)
        if "NEVERGOOD" in x:
            return "BAD always"
        n = len(rule_decompose(x))
        key = (x.split(".")[0], n)
        seen[key] += 1
        if n >= 2 and seen[key] == 1:   # the first answer at each new level fails the check
            return f"BAD first try at level {n}"
        return f"good answer at level {n}: {x[::-1]}"

    policy = ScriptedPolicy(reply)
    cfg = EcdConfig(rounds=4, p_tighten=0.0, start_samples=2, types="microworld")
    rows, stats = build_ecd(seeds, policy, cfg, seed=5, checker=_no_bad)
    assert stats["dropped"] == {"no_good_start": 1} and stats["chains"] == 3
    assert stats["steps_tried"] == 12 and stats["steps_accepted"] == 6
    assert stats["rejections"]["answer_rejected"] == 6
    assert stats["pairs"] == len(rows) == 6 and stats["chain_lengths"] == {"2": 3}
    by_chain = collections.defaultdict(list)
    for r in rows:
        pairs_io.normalize_pair(r)
        by_chain[r["meta"]["chain"]].append(r)
    for j, (r1, r2) in by_chain.items():
        x0 = seeds[j].prompt      # microworld seed: x0 is recomposed to exactly its text
        assert [r1["meta"]["step"], r2["meta"]["step"]] == [2, 4]    # steps 1 and 3 were rejected
        assert r1["rejected_prompt"][0]["content"] == x0
        assert r1["rejected"].startswith("good answer at level 1")   # y0
        assert r2["rejected_prompt"] == r1["prompt"] and r2["rejected"] == r1["chosen"]
        for r, n in ((r1, 2), (r2, 3)):
            x, xp = r["prompt"][0]["content"], r["rejected_prompt"][0]["content"]
            assert len(r["constraints"]) == n and x.startswith(xp + " ")   # one sentence added
            assert [c["op"] for c in r["corrupted"]] == ["add"]
            assert r["corrupted"][0]["original"] == r["constraints"][-1]
            assert r["chosen"].startswith(f"good answer at level {n}")
    starts = [s for c, s in policy.calls if s.num_samples == 2]
    assert len(starts) == 4 and all(s.temperature == 0.5 for s in starts)


def _oracle_policy(world):
    """Answers with the microworld's ideal response for the constraints typed in the text."""
    def reply(conv, k, seed):
        dec = decompose_instruction(_text(conv))
        topic = re.search(r"the (\w+)\.", dec.task).group(1)
        return world.ideal(Instruction(topic, dec.task, tuple(dec.constraints), 0), seed=k)
    return ScriptedPolicy(reply)


def test_verifier_checker_with_oracle_policy_and_hard_negatives():
    world = World(0)
    seeds = microworld_seeds(6, seed=4, levels=(1, 2))
    rows, stats = build_ecd(seeds, _oracle_policy(world),
                            EcdConfig(rounds=3, p_tighten=0.5, types="microworld"),
                            seed=1)
    assert stats["chains"] == 6 and stats["steps_tried"] == 18
    assert stats["steps_accepted"] == stats["steps_tried"] - sum(stats["rejections"].values())
    assert rows and stats["pairs"] == len(rows)
    ops = {r["meta"]["op"] for r in rows}
    assert ops == {"add", "tighten"}
    for r in rows:
        cons = [Constraint.from_dict(c) for c in r["constraints"]]
        assert all(verify_all(r["chosen"], cons))        # the checker passed y_k on x_k
        if r["meta"]["op"] == "tighten":
            rec = r["corrupted"][0]
            assert rec["replacement"]["id"] == rec["original"]["id"]
            assert tighten(Constraint.from_dict(rec["replacement"])) == Constraint.from_dict(
                rec["original"])
    neg = stats["negativity"]
    assert neg["pairs"] == len(rows) and neg["checked"] == len(rows)
    assert 0 < neg["rejected_violates"] <= len(rows)       # previous answers miss the new rule
    assert stats["rates"]["negative_rate"] == pytest.approx(neg["negative"] / neg["checked"])


def _evolve_reply(conv, k, seed):
    x = _text(conv).split("Instruction: ", 1)[1]
    if "lion" in x:
        return x + " Do not use any commas."
    if "tiger" in x:
        return ""
    if "bear" in x:
        return x
    if "wolf" in x:
        return "Describe the wolf. Do not use any commas."   # adds one, loses the keyword
    return "Describe something else."                         # adds nothing


def _evolve_seeds():
    kw = make("keywords:existence", keywords=["river"])
    return [Seed(f"Describe the {a}. Include the keyword \"river\" in the response.",
                 meta={"response": f"The {a} likes the river."})
            for a in ("lion", "tiger", "bear", "wolf")] + [
        Seed("Describe the cat.", task="Describe the cat.", constraints=[kw],
             meta={"response": "The cat sleeps by the river."})]


@pytest.mark.parametrize("which", ["policy", "teacher"])
def test_policy_and_teacher_evolvers_count_failures(which):
    answers = ScriptedPolicy(lambda conv, k, seed: "Fresh answer about the river without punctuation")
    evolver = ScriptedPolicy(_evolve_reply)
    teacher = evolver if which == "teacher" else None
    policy = answers if which == "teacher" else ScriptedPolicy(
        lambda conv, k, seed: _evolve_reply(conv, k, seed) if _text(conv).startswith(EVOLVE_HEAD)
        else "Fresh answer about the river without punctuation")
    rows, stats = build_ecd(_evolve_seeds(), policy, EcdConfig(evolver=which, rounds=1), seed=0,
                            teacher=teacher)
    assert stats["start_given"] == 5 and stats["steps_tried"] == 5
    assert stats["rejections"] == {"evolve/empty": 1, "evolve/unchanged": 1,
                                   "evolve/lost_constraint": 1, "evolve/no_new_constraint": 1}
    assert stats["parse_failures"] == 4
    assert len(rows) == 1
    (row,) = rows
    assert row["prompt"][0]["content"] == ('Describe the lion. Include the keyword "river" in the '
                                           'response. Do not use any commas.')
    assert row["rejected"] == "The lion likes the river."
    assert row["corrupted"][0]["original"]["id"] == "punctuation:no_comma"
    assert row["meta"]["evolver"] == which
    evolve_calls = [c for c, s in policy.calls if _text(c).startswith(EVOLVE_HEAD)]
    assert len(evolve_calls) == (0 if which == "teacher" else 5)
    if which == "teacher":
        assert len(evolver.calls) == 5 and all(_text(c).startswith(EVOLVE_HEAD)
                                               for c, _ in evolver.calls)
    with pytest.raises(ValueError, match="teacher"):
        build_ecd(_evolve_seeds(), policy, EcdConfig(evolver="teacher"), seed=0)


def test_rule_evolver_add_and_tighten():
    words = make("length_constraints:number_words", relation="less than", num_words=20)
    state = ChainState("Describe the owl. Answer with less than 20 words.", "Describe the owl.",
                       (words,), compose_seed=3)
    evs, fails = RuleEvolver("ifeval", p_tighten=1.0).evolve([state], seed=0)
    assert not fails and evs[0].op == "tighten"
    assert evs[0].state.constraints[0].kwargs["num_words"] == 15
    evs, _ = RuleEvolver(["punctuation:no_comma"], p_tighten=0.0).evolve([state], seed=0)
    assert evs[0].op == "add" and evs[0].state.constraints[1].id == "punctuation:no_comma"
    only = dataclasses.replace(state, constraints=(make("punctuation:no_comma"),))
    evs, fails = RuleEvolver(["punctuation:no_comma"], p_tighten=0.0).evolve([only], seed=0)
    assert evs == [None] and fails == {"no_compatible_constraint": 1}
    assert tighten(make("length_constraints:number_words", relation="at least", num_words=40)
                   ).kwargs["num_words"] == 50
    assert tighten(make("punctuation:no_comma")) is None


def test_self_checker_is_the_policy_voting():
    """checker="self": the policy's majority vote accepts or rejects answers (signal "self");
    the verifiers are never asked. The scripted judge rejects every answer with the word
    "sun" in it (2 of 3 votes), which the verifiers would not do."""
    world = World(0)
    oracle = _oracle_policy(world)

    def reply(conv, k, seed):
        text = _text(conv)
        if text.startswith("Judge the response."):
            return "no it misses" if "sun" in text.split("Response: ", 1)[1] and k < 2 else "yes"
        return oracle.reply(conv, k, seed)

    seeds = microworld_seeds(4, seed=4, levels=(1, 2))
    cfg = EcdConfig(rounds=2, types="microworld", checker="self", checker_votes=3)
    policy = ScriptedPolicy(reply)
    rows, stats = build_ecd(seeds, policy, cfg, seed=1)
    assert stats["signal"] == "self" and stats["checker"] == "self"
    judge_calls = [s for c, s in policy.calls if _text(c).startswith("Judge the response.")]
    assert judge_calls and all(s.num_samples == 3 for s in judge_calls)
    assert stats["roles"]["judge"]["calls"] == 3 * len(judge_calls)
    assert all("sun" not in r["chosen"] for r in rows)
    _, chk = build_ecd(seeds, _oracle_policy(world), {**cfg.__dict__, "checker": "verifier"}, seed=1)
    assert chk["signal"] == "checker"
    with pytest.raises(ValueError, match="teacher"):
        build_ecd(seeds, policy, {**cfg.__dict__, "checker": "teacher"}, seed=1)
