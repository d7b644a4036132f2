"""Judges: majority of sampled votes (ties dropped, unparsable excluded) and the verifier."""

import re

import pytest

from musc_jax.data.constraints import free_text, make
from musc_jax.data.judge import (Judgement, JudgeStats, SelfJudge, VerifierJudge, derive_seed,
                                 make_judge)
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.recombine import compose
from musc_jax.data.roles import judge_messages

# Votes per response (one per sample index).
VOTES = {
    "good": ["yes", "yes", "yes", "yes", "yes"],
    "mostly": ["yes", "no it misses: A.", "yes", "yes", "no it misses: A."],
    "bad": ["no it misses: X.", "no it misses: Y.", "no it misses: X.", " No it misses: X. ",
            "yes"],
    "tied": ["yes", "no it misses: Z.", "banana", "yes", "no it misses: Z."],
    "junk": ["maybe", "", "I think so", "?", "unsure"],
}


def response_of(conv):
    return re.search(r"^Response: (.*)$", conv[-1]["content"], re.M).group(1)


def scripted_judge():
    return ScriptedPolicy(lambda conv, k, seed: VOTES[response_of(conv)][k])


def test_majority_ties_and_unparsable():
    policy = scripted_judge()
    judge = SelfJudge(policy, votes=5, temperature=0.7)
    names = ["good", "mostly", "bad", "tied", "junk"]
    js = judge.judge([("Do it.", n, None) for n in names], seed=3)
    by = dict(zip(names, js))

    assert by["good"].verdict is True and by["good"].value == 1.0 and by["good"].unanimous
    assert by["good"].text == "yes" and not by["good"].contested

    assert by["mostly"].verdict is True and by["mostly"].value == pytest.approx(0.6)
    assert by["mostly"].contested and not by["mostly"].unanimous and by["mostly"].text == "yes"

    # Majority "no"; the refiner's judgement text is the most common "no" output (stripped).
    assert by["bad"].verdict is False and by["bad"].value == pytest.approx(0.2)
    assert by["bad"].text == "no it misses: X."
    assert by["bad"].votes == (False, False, False, False, True)

    # 2 yes, 2 no, 1 unparsable: a tie is dropped (verdict None); the unparsable vote is excluded.
    t = by["tied"]
    assert t.verdict is None and t.tie and t.unparsable == 1 and t.valid == 4
    assert t.value == pytest.approx(0.5) and t.text == "no it misses: Z." and not t.contested

    # Nothing parsable: no verdict, no value (score 0 for ranking).
    j = by["junk"]
    assert j.verdict is None and j.value is None and j.score == 0.0 and j.unparsable == 5
    assert not j.tie and not j.unanimous

    s = judge.stats
    assert (s.items, s.votes, s.unparsable, s.ties, s.no_valid) == (5, 25, 6, 1, 1)
    assert (s.unanimous, s.contested, s.passed, s.failed) == (1, 2, 2, 1)
    assert s.agreement == pytest.approx(1 / 4)
    assert JudgeStats.of(js).to_dict() == s.to_dict()


def test_self_judge_prompts_and_sampling():
    policy = scripted_judge()
    SelfJudge(policy, votes=5, temperature=0.7, max_new_tokens=33).judge(
        [("Write a note.", "good", None), ("Write two.", "bad", None)], seed=0)
    assert [c for c, _ in policy.calls] == [judge_messages("Write a note.", "good"),
                                           judge_messages("Write two.", "bad")]
    sampling = policy.calls[0][1]
    assert (sampling.num_samples, sampling.temperature, sampling.max_new_tokens) == (5, 0.7, 33)
    assert SelfJudge(policy).judge([]) == []


def test_from_votes_even_split_and_single_vote():
    j = Judgement.from_votes(["yes", "no"])
    assert j.verdict is None and j.tie
    j = Judgement.from_votes(["no it misses: Q."])
    assert j.verdict is False and j.value == 0.0 and j.unanimous and j.text == "no it misses: Q."
    with pytest.raises(ValueError):
        SelfJudge(scripted_judge(), votes=0)


LOWER = make("change_case:english_lowercase")
RIVER = make("keywords:existence", keywords=["river"])


def test_verifier_judge_names_missed_constraints_in_the_instructions_words():
    instruction = compose("Write a note about the stone", [LOWER, RIVER], seed=7)
    judge = VerifierJudge()
    js = judge.judge([
        (instruction, "the river is calm", [LOWER, RIVER]),
        (instruction, "The river is calm", [LOWER, RIVER]),
        (instruction, "The stone is cold", [LOWER.to_dict(), RIVER.to_dict()]),  # dicts work
        (instruction, "anything", [free_text("Sound happy.")]),
        (instruction, "anything", None),
    ])
    assert js[0].verdict is True and js[0].value == 1.0 and js[0].text == "yes"
    assert js[1].verdict is False and js[1].value == 0.0 and js[1].text.startswith("no it misses: ")
    missed = js[1].text[len("no it misses: "):]
    assert missed in instruction and "lowercase" in missed.lower()
    assert js[2].verdict is False
    named = js[2].text[len("no it misses: "):]
    assert "river" in named and "lowercase" in named.lower() and named.split(". ")[0] in instruction
    # Nothing verifiable: no verdict.
    assert js[3].verdict is None and js[3].value is None
    assert js[4].verdict is None
    assert (judge.stats.items, judge.stats.no_valid, judge.stats.passed, judge.stats.failed) == (5, 2, 1, 2)
    assert all(j.unanimous for j in js[:3]) and judge.votes == 1


def test_make_judge_and_derive_seed():
    assert isinstance(make_judge("verifier"), VerifierJudge)
    j = make_judge("self", scripted_judge(), votes=3, temperature=0.5)
    assert isinstance(j, SelfJudge) and j.votes == 3 and j.sampling.temperature == 0.5
    with pytest.raises(ValueError, match="oracle"):
        make_judge("oracle")
    with pytest.raises(ValueError, match="policy"):
        make_judge("self")
    a, b = derive_seed(0, "x", 1), derive_seed(0, "x", 2)
    assert a == derive_seed(0, "x", 1) and a != b and 0 <= a < 2 ** 31
