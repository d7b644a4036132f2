"""MuSC pair builder (DESIGN 5.1) with scripted policies: drops, consistency, negativity."""

import re

import pytest

from musc_jax.data import pairs_io
from musc_jax.data.builders.musc import MuscConfig, build_musc
from musc_jax.data.constraints import Constraint, make
from musc_jax.data.decompose import SELF_DECOMPOSE_SYSTEM
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.recombine import render_parts
from musc_jax.data.seeds import Seed
from musc_jax.microworld.plugin import world_seeds as microworld_seeds


def _instruction(conv):
    return conv[-1]["content"]


def echo_policy():
    """Responds with a text that depends on the whole instruction (so y+ != y-)."""
    return ScriptedPolicy(lambda conv, k, seed: f"Reply {len(_instruction(conv))}: "
                                                + _instruction(conv)[::-1][:80])


def _sentences_of(row):
    """(parts of x, parts of x') rebuilt from the row's decomposition and composer seed."""
    m = row["meta"]
    cons = [Constraint.from_dict(c) for c in row["constraints"]]
    alt = [Constraint.from_dict(c) for c in m["rejected_constraints"]]
    return render_parts(m["task"], cons, m["compose_seed"]), render_parts(m["task"], alt,
                                                                          m["compose_seed"])


@pytest.mark.parametrize("decomposer", ["rule", "given"])
def test_x_and_x_alt_differ_only_by_corrupted_constraints(decomposer):
    seeds = microworld_seeds(12, seed=3, levels=(2, 3, 4, 5))
    rows, stats = build_musc(seeds, echo_policy(), MuscConfig(decomposer=decomposer), seed=7)
    assert stats["seeds"] == 12 and stats["decomposed"] == 12 and stats["pairs"] == len(rows) > 8
    for row in rows:
        pairs_io.normalize_pair(row)          # valid normalised pairs row
        x, xa = row["prompt"][0]["content"], row["rejected_prompt"][0]["content"]
        px, pa = _sentences_of(row)
        assert x == " ".join(px) and xa == " ".join(pa)
        assert px[0] == pa[0] == row["meta"]["task"]        # the core task is never touched
        removed = [s for s in px[1:] if s not in pa]
        added = [s for s in pa[1:] if s not in px]
        recs = row["corrupted"]
        assert removed == [p for p, c in zip(px[1:], row["constraints"])
                           if c in [r["original"] for r in recs]]
        assert sorted(added) == sorted(p for p, c in zip(pa[1:], row["meta"]["rejected_constraints"])
                                       if c in [r["replacement"] for r in recs if r["replacement"]])
        # every other sentence is shared word for word, in the same order
        assert [s for s in px if s not in removed] == [s for s in pa if s not in added]
        assert row["method"] == "musc" and row["meta"]["negativity"]["per_constraint"]
        if decomposer == "given":   # microworld seeds record their composer seed: x is their text
            assert x == seeds[row["meta"]["seed"]["index"]].prompt


def test_drops_are_counted():
    seeds = microworld_seeds(6, seed=1, levels=(1, 2, 3))   # two level-1 seeds

    def reply(conv, k, seed):
        text = _instruction(conv)
        if "JSON" in text:
            return "   "                                    # empty response: dropped
        return "same answer" if "title" in text else text[::-1]

    rows, stats = build_musc(seeds, ScriptedPolicy(reply), {"decomposer": "rule"}, seed=0)
    d = stats["dropped"]
    assert d["too_few_constraints"] == 2
    assert d["empty_response"] == 1                               # the JSON (whale) seed
    assert stats["pairs"] == len(rows) == 4 - sum(d.get(k, 0) for k in
                                                  ("empty_response", "identical_responses"))
    assert stats["corrupted"] == 4
    for row in rows:
        assert row["chosen"].strip() and row["chosen"] != row["rejected"]


def test_self_decomposer_parse_failures_counted_and_dropped():
    seeds = [Seed("Describe the owl. Do not use any commas. Write exactly 3 sentences."),
             Seed("PARSEFAIL Describe the fox. Do not use any commas. Answer in lowercase."),
             Seed("ONE Describe the otter. Do not use any commas."),
             Seed("Describe the whale. Include the keyword \"ocean\" in the response. "
                  "Do not use any commas.")]

    def reply(conv, k, seed):
        if conv[0]["content"] == SELF_DECOMPOSE_SYSTEM:
            text = _instruction(conv).split("\n", 1)[1]
            if text.startswith("PARSEFAIL"):
                return "I am not sure what you mean."
            task = re.match(r"(?:ONE )?([^.]*\.)", text).group(1)
            cons = [s.strip() + "." for s in text.split(".")[1:] if s.strip()]
            return "\n".join([f"TASK: {task}"] + [f"CONSTRAINT: {c}" for c in cons])
        return "answer: " + _instruction(conv)[::-1]

    policy = ScriptedPolicy(reply)
    rows, stats = build_musc(seeds, policy, MuscConfig(decomposer="self", decompose_temperature=0.1),
                             seed=0)
    assert stats["parse_failures"] == 1 and stats["dropped"]["parse_failure"] == 1
    assert stats["dropped"]["too_few_constraints"] == 1
    assert stats["pairs"] == len(rows) == 2
    decompose_calls = [s for c, s in policy.calls if c[0]["content"] == SELF_DECOMPOSE_SYSTEM]
    assert len(decompose_calls) == 4 and all(s.temperature == 0.1 for s in decompose_calls)
    respond_calls = [s for c, s in policy.calls if c[0]["content"] != SELF_DECOMPOSE_SYSTEM]
    assert len(respond_calls) == 4 and all(s.temperature == 0.5 and s.num_samples == 1
                                           for s in respond_calls)
    assert {r["constraints"][0]["id"] for r in rows} == {"punctuation:no_comma",
                                                         "keywords:existence"}


def _otter_seeds(n: int = 12):
    """n two-constraint seeds (no comma, lowercase) for the filter tests."""
    no_comma, lower = make("punctuation:no_comma"), make("change_case:english_lowercase")
    return no_comma, lower, [Seed(f"Describe the otter {i}.", task=f"Describe the otter {i}.",
                                  constraints=[no_comma, lower]) for i in range(n)]


def test_negativity_filter():
    no_comma, lower, seeds = _otter_seeds()

    def reply(conv, k, seed):
        # Follows both constraints when the instruction mentions commas; else breaks both.
        x = _instruction(conv)
        return f"the otter is small {len(x)}" if "comma" in x else f"The otter, Small {len(x)}"

    cfg = dict(decomposer="given", p_drop=1.0, p_negate=0.0, p_substitute=0.0)
    rows_all, st_all = build_musc(seeds, ScriptedPolicy(reply), cfg, seed=0)
    rows, st = build_musc(seeds, ScriptedPolicy(reply), {**cfg, "negativity_filter": "checker"}, seed=0)
    dropped_comma = [r for r in rows_all if r["corrupted"][0]["original"]["id"] == no_comma.id]
    assert 0 < len(dropped_comma) < len(rows_all) == 12          # both cases occur
    neg = st_all["negativity"]
    assert neg["pairs"] == neg["checked"] == 12
    assert neg["negative"] == len(dropped_comma)                  # y- breaks the dropped no-comma
    assert neg["chosen_satisfies"] == 12
    assert st_all["rates"]["negative_rate"] == pytest.approx(len(dropped_comma) / 12)
    assert len(rows) == len(dropped_comma) and st["dropped"]["not_negative"] == 12 - len(rows)
    for r in rows:
        n = r["meta"]["negativity"]
        assert n["negative"] and n["per_constraint"] == [
            {"id": no_comma.id, "chosen": True, "rejected": False}]
    assert st["rates"]["negative_rate"] == st_all["rates"]["negative_rate"]   # always reported


def test_shared_filter_drops_pairs_that_teach_breaking_a_kept_constraint():
    no_comma, lower, seeds = _otter_seeds()

    def reply(conv, k, seed):
        # With both constraints asked: lowercase with a comma (y+ breaks the shared no-comma);
        # with one asked: follows exactly that one.
        x = _instruction(conv)
        if "comma" in x and "lowercase" in x:
            return f"the otter, small {len(x)}"
        return f"the otter is small {len(x)}" if "lowercase" in x else f"The otter is Small {len(x)}"

    cfg = dict(decomposer="given", p_drop=1.0, p_negate=0.0, p_substitute=0.0, corrupt_rate=0.3)
    rows_all, st_all = build_musc(seeds, ScriptedPolicy(reply), cfg, seed=0)
    checker = {**cfg, "negativity_filter": "checker"}
    rows_neg, _ = build_musc(seeds, ScriptedPolicy(reply), checker, seed=0)
    rows, st = build_musc(seeds, ScriptedPolicy(reply), {**checker, "shared_filter": True}, seed=0)
    # Dropping lowercase keeps no_comma shared: y- ("The otter is Small") follows it, y+ breaks it.
    regress = [r for r in rows_all if r["corrupted"][0]["original"]["id"] == lower.id]
    assert 0 < len(regress) < 12 and len(rows_all) == 12
    for r in rows_all:
        expected = [no_comma.id] if r in regress else []
        assert r["meta"]["negativity"]["shared_regressions"] == expected
    assert st_all["negativity"]["shared_clean"] == 12 - len(regress)
    assert st_all["rates"]["shared_clean_rate"] == pytest.approx((12 - len(regress)) / 12)
    regress_neg = [r for r in rows_neg if r["meta"]["negativity"]["shared_regressions"]]
    assert regress_neg and len(rows) == len(rows_neg) - len(regress_neg)
    assert st["dropped"]["shared_regression"] == len(regress_neg)
    assert not any(r["meta"]["negativity"]["shared_regressions"] for r in rows)
    with pytest.raises(ValueError, match="needs a signal"):
        build_musc(seeds, ScriptedPolicy(reply), {**cfg, "shared_filter": True}, seed=0)


def test_negativity_filter_names_its_signal():
    no_comma, lower, seeds = _otter_seeds(4)
    with pytest.raises(ValueError, match="old boolean form.*checker"):
        build_musc(seeds, ScriptedPolicy(lambda c, k, s: "x"), {"negativity_filter": True})
    with pytest.raises(ValueError, match="choose one of"):
        build_musc(seeds, ScriptedPolicy(lambda c, k, s: "x"), {"negativity_filter": "oracle"})


def test_self_negativity_filter_asks_the_policy_not_the_checker():
    """negativity_filter="self": the policy's majority verdicts (judge prompt on the task with one
    constraint) pick the pairs; the verifiers are only logged. The scripted judge here says "yes"
    exactly when the response has no capital letter, whatever the constraint, so its choices
    differ from the checker's and the test can tell which signal was used."""
    from musc_jax.data.roles import JUDGE_QUESTION
    no_comma, lower, seeds = _otter_seeds()

    def reply(conv, k, seed):
        x = _instruction(conv)
        if JUDGE_QUESTION in x:   # a judge call: "yes" iff the response is all lowercase
            resp = x.split("Response: ", 1)[1].rsplit("\n", 1)[0]
            return "yes" if resp == resp.lower() else "no it misses"
        # follows exactly the constraints x asks for
        return ("the otter" if "lowercase" in x else "The Otter") + (
            f" is small {len(x)}" if "comma" in x else f", small {len(x)}")

    cfg = dict(decomposer="given", p_drop=1.0, p_negate=0.0, p_substitute=0.0,
               negativity_votes=3)
    rows, st = build_musc(seeds, ScriptedPolicy(reply), {**cfg, "negativity_filter": "self"}, seed=0)
    _, st_chk = build_musc(seeds, ScriptedPolicy(reply), {**cfg, "negativity_filter": "checker"},
                           seed=0)
    # The checker calls every pair negative (y- breaks what was dropped); the self judge only
    # those whose y- has capitals (the dropped lowercase).
    assert st_chk["pairs"] == 12 and st["signal"] == "self" and st_chk["signal"] == "checker"
    assert 0 < len(rows) < 12 and st["dropped"]["not_negative"] == 12 - len(rows)
    assert all(r["corrupted"][0]["original"]["id"] == lower.id for r in rows)
    assert all(r["meta"]["self_check"]["negative"] and r["meta"]["signal"] == "self" for r in rows)
    assert st["roles"]["judge"] == {"calls": 12 * 2 * 3, "parsed": 12 * 2 * 3}
    assert st["self_check"]["answered"] == 24 and 0 < st["self_check"]["agree"] < 24
    assert st["negativity"]["pairs"] == 12                         # the checker is still logged


def test_free_text_constraints_are_edited_by_the_policy():
    """A free-text constraint drawn for negation is rewritten by the policy (edit role); an
    unusable edit falls back to dropping it, counted as an edit parse failure."""
    from musc_jax.data.constraints import free_text
    style = free_text("Write in a cheerful tone.")
    seeds = [Seed(f"Describe the otter {i}.", task=f"Describe the otter {i}.",
                  constraints=[style, make("punctuation:no_comma")]) for i in range(6)]

    def reply(conv, k, seed):
        x = _instruction(conv)
        if x.startswith("Edit the constraint."):
            return "" if "otter 0" in x else "Write in a gloomy tone."
        return f"reply {len(x)} {x[-30:]}"

    cfg = dict(decomposer="given", corrupt_rate=1.0, p_drop=0.0, p_negate=1.0, p_substitute=0.0)
    rows, st = build_musc(seeds, ScriptedPolicy(reply), cfg, seed=0)
    edited = [r for r in rows if r["corrupted"][0]["writer"] == "policy"
              and r["corrupted"][0]["applied"] == "negate"]
    assert len(edited) == 5
    assert all("gloomy" in r["rejected_prompt"][0]["content"] and
               "cheerful" in r["prompt"][0]["content"] for r in edited)
    assert st["roles"]["edit"] == {"calls": 6, "parsed": 5}
    assert st["rates"]["parsed/edit"] == pytest.approx(5 / 6)
    assert st["corruption"]["applied/drop"] == 1   # the unusable edit fell back to a drop
