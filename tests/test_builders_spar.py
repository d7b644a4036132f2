"""SPaR builder: actor pairs and refiner SFT data from scripted roles; once with a tiny model."""

import json
import re

import pytest
from ml_collections import ConfigDict

from musc_jax.data.builders.spar import SparConfig, build_spar, spar_iteration
from musc_jax.data.constraints import make
from musc_jax.data.pairs_io import normalize_pair, read_pairs, read_sft
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.recombine import compose
from musc_jax.data.roles import (CRITIQUE_REQUEST, critique_judge_messages, refine_messages,
                                 respond_messages)
from musc_jax.data.seeds import Seed

# Actor samples per instruction (5 each). The scripted judge says yes iff "FIXED" is in the
# response; "shaky" responses (not the "try" refinements) get one dissenting vote; "tie"
# responses split 2-2 (+1 junk).
ACTOR = {
    "Alpha task.": ["alpha shaky", "alpha one", "alpha two", "alpha FIXED", "alpha three"],
    "Beta task.": ["beta FIXED"] * 4 + ["beta FIXED shaky"],
    "Gamma task.": ["gamma tie"] * 5,
    "Delta task.": ["", "delta FIXED", "delta deep", "", "delta FIXED"],
}


def field(conv, name):
    return re.search(rf"^{name}: (.*)$", conv[-1]["content"], re.M).group(1)


def vote(resp, k):
    if "tie" in resp:
        return ["yes", "yes", "no it misses: tie", "no it misses: tie", "hmm"][k]
    ok = "FIXED" in resp
    if "shaky" in resp and "try" not in resp and k == 4:
        ok = not ok
    return "yes" if ok else f"no it misses: {resp}"


def reply(conv, k, seed):
    text = conv[-1]["content"]
    if text.startswith("Judge the response."):
        return vote(field(conv, "Response"), k)
    if text.startswith("Refine the response."):
        r = field(conv, "Response")
        if "deep" in r:                       # needs two refinements
            return f"{r} step" if "step" not in r else f"{r} FIXED"
        return f"{r} FIXED" if k == 2 else f"{r} try{k}"
    return ACTOR[text][k]


SEEDS = [Seed(p, meta={"src": i}) for i, p in enumerate(ACTOR)]


def test_spar_rows_stats_and_refiner_sft():
    policy = ScriptedPolicy(reply)
    res = build_spar(SEEDS, policy, None, seed=1, round=2)
    rows, stats = res                                # unpacks as (rows, stats)
    assert stats["refiner_sft"] is res.refiner_sft

    # Alpha: first failed sample ("alpha shaky": 4 no, 1 yes) is the root; fixed at depth 1.
    # Delta: only "delta deep" fails; it needs two refinements. Beta all pass, gamma all tie.
    assert [(r["chosen"], r["rejected"]) for r in rows] == [
        ("alpha shaky FIXED", "alpha shaky"), ("delta deep step FIXED", "delta deep")]
    a = rows[0]
    assert a["prompt"] == respond_messages("Alpha task.") and a["method"] == "spar"
    assert a["rejected_prompt"] == [] and a["corrupted"] == []
    assert a["meta"]["src"] == 0 and a["meta"]["round"] == 2 and a["meta"]["seed"] == 1
    assert a["meta"]["spar"]["depth"] == 1 and a["meta"]["spar"]["chosen_value"] == 0.8
    assert a["meta"]["spar"]["rejected_value"] == pytest.approx(0.2)
    assert rows[1]["meta"]["spar"]["depth"] == 2
    for r in rows:
        normalize_pair(r)

    # Actor sampling as the paper: 5 samples, temperature 0.9, top-p 0.9.
    actor_calls = [s for c, s in policy.calls if c[-1]["content"] in ACTOR]
    assert len(actor_calls) == 4
    assert {(s.num_samples, s.temperature, s.top_p) for s in actor_calls} == {(5, 0.9, 0.9)}
    judge_calls = [s for c, s in policy.calls if c[-1]["content"].startswith("Judge")]
    assert {(s.num_samples, s.temperature) for s in judge_calls} == {(5, 0.7)}

    # Refiner SFT: refine prompt of the successful node's parent -> the refinement ...
    refine = [r for r in res.refiner_sft if r["role"] == "refine"]
    assert refine == [
        {"prompt": refine_messages("Alpha task.", "alpha shaky", "no it misses: alpha shaky"),
         "response": "alpha shaky FIXED", "role": "refine"},
        {"prompt": refine_messages("Delta task.", "delta deep step",
                                   "no it misses: delta deep step"),
         "response": "delta deep step FIXED", "role": "refine"}]
    # ... and contested judgements (majority not unanimous): the "shaky" labels and tree node.
    judge_rows = [r for r in res.refiner_sft if r["role"] == "judge"]
    assert judge_rows == [
        {"prompt": critique_judge_messages("Alpha task.", "alpha shaky"),
         "response": "no it misses: alpha shaky", "role": "judge"},
        {"prompt": critique_judge_messages("Beta task.", "beta FIXED shaky"), "response": "yes",
         "role": "judge"},
        {"prompt": critique_judge_messages("Alpha task.", "alpha shaky FIXED"), "response": "yes",
         "role": "judge"}]
    assert stats["signal"] == "self" and stats["refiner_sft_capped_judge"] == 0
    # The judge prompt asks for a critique before the verdict (DESIGN 5.5).
    assert all(CRITIQUE_REQUEST in c[-1]["content"] for c, _ in policy.calls
               if c[-1]["content"].startswith("Judge"))

    # Caps: at most one refinement trace and two judge rows, judge rows balanced yes / no.
    capped = build_spar(SEEDS, ScriptedPolicy(reply), {"max_refine_sft": 1, "max_judge_sft": 2},
                        seed=1, round=2)
    sft = capped.refiner_sft
    assert [r["role"] for r in sft] == ["refine", "judge", "judge"]
    assert sorted(r["response"] for r in sft if r["role"] == "judge") == [
        "no it misses: alpha shaky", "yes"]
    assert capped.stats["refiner_sft_capped_refine"] == 1
    assert capped.stats["refiner_sft_capped_judge"] == 1

    assert stats["prompts"] == 4 and stats["samples"] == 20 and stats["empty_samples"] == 2
    assert stats["ties_dropped"] == 5 and stats["labelled_fail"] == 5
    assert stats["labelled_pass"] == 18 - 5 - 5
    assert stats["no_failed"] == 2 and stats["roots"] == 2
    assert stats["refinement_success"] == 2 and stats["refinement_success_rate"] == 1.0
    assert stats["avg_depth"] == 1.5 and stats["pairs"] == 2
    # 18 labels: 5 ties and 2 contested majorities are not unanimous.
    assert stats["judge_agreement"] == pytest.approx(11 / 18)
    assert stats["judge_unparsable"] == 5
    assert stats["refiner_sft_refine"] == 2 and stats["refiner_sft_judge"] == 3
    # alpha: root expanded once (3 refinements); delta: root, then its 2 kept children.
    assert stats["stop_gate"] == 2 and stats["expansions"] == 1 + 3
    assert stats["refine_calls"] == 3 + 9 and stats["tree_judge_calls"] == 3 + 9
    json.dumps({k: v for k, v in stats.items()})                # JSON-able, SFT rows included


def test_spar_dfs_configdict_and_unknown_key():
    cfg = ConfigDict(dict(search="dfs", samples=5, branch=3))
    rows, stats = build_spar(SEEDS, ScriptedPolicy(reply), cfg, seed=0)
    assert [r["chosen"] for r in rows] == ["alpha shaky FIXED", "delta deep step FIXED"]
    assert SparConfig.from_config({"max_depth": 1}).max_depth == 1
    with pytest.raises(ValueError, match="brnch"):
        SparConfig.from_config({"brnch": 2})
    with pytest.raises(ValueError, match="judge"):
        SparConfig.from_config({"judge": "oracle"})
    # max_depth 1: delta's two-step fix is out of reach.
    rows, stats = build_spar(SEEDS, ScriptedPolicy(reply), {"max_depth": 1}, seed=0)
    assert len(rows) == 1 and stats["refinement_success_rate"] == 0.5
    assert stats["stop_max_depth"] == 1


def test_spar_refine_sft_root_and_no_contested():
    res = build_spar(SEEDS, ScriptedPolicy(reply), {"refine_sft": "both", "contested_sft": False})
    refine = [r for r in res.refiner_sft if r["role"] == "refine"]
    # alpha: parent is the root (one row); delta: parent and root (two rows).
    assert [r["prompt"][0]["content"].split("Response: ")[1].split("\n")[0] for r in refine] == [
        "alpha shaky", "delta deep step", "delta deep"]
    assert not [r for r in res.refiner_sft if r["role"] == "judge"]
    assert res.stats["contested_judgements"] == 3
    res = build_spar(SEEDS, ScriptedPolicy(reply), {"refine_sft": "root"})
    refine = [r for r in res.refiner_sft if r["role"] == "refine"]
    assert [(r["prompt"][0]["content"].split("Response: ")[1].split("\n")[0], r["response"])
            for r in refine] == [("alpha shaky", "alpha shaky FIXED"),
                                 ("delta deep", "delta deep step FIXED")]


LOWER = make("change_case:english_lowercase")
RIVER = make("keywords:existence", keywords=["river"])


def test_spar_verifier_judge_with_scripted_roles(tmp_path):
    inst = compose("Write a note about the stone", [LOWER, RIVER], seed=0)

    def actor(conv, k, seed):
        text = conv[-1]["content"]
        if text.startswith("Refine the response."):
            return field(conv, "Response").lower() + " river" if k == 1 else "Nope"
        return ["The Stone", "the river stone"][k % 2]

    policy = ScriptedPolicy(actor)
    res = spar_iteration([Seed(inst, constraints=[LOWER, RIVER])], policy,
                         {"judge": "verifier", "samples": 2}, seed=0, out_dir=tmp_path / "it0")
    assert not [c for c, _ in policy.calls if c[-1]["content"].startswith("Judge")]
    assert [(r["chosen"], r["rejected"]) for r in res.rows] == [("the stone river", "The Stone")]
    assert res.rows[0]["constraints"] == [LOWER.to_dict(), RIVER.to_dict()]
    assert "no it misses: " in policy.calls[1][0][0]["content"]      # verifier's judgement text
    assert res.stats["judge_agreement"] == 1.0 and res.stats["contested_judgements"] == 0
    pairs = read_pairs(tmp_path / "it0" / "pairs")
    assert len(pairs) == 1 and pairs[0]["method"] == "spar"
    sft = read_sft(tmp_path / "it0" / "refiner_sft.jsonl")
    assert len(sft) == 1 and sft[0]["response"] == "the stone river"
    assert json.loads((tmp_path / "it0" / "stats.json").read_text())["pairs"] == 1


def test_spar_end_to_end_tiny_model(tmp_path):
    from trainer_fixtures import model_dir

    from musc_jax.data.policy import ModelPolicy
    from musc_jax.models import from_pretrained, load_tokenizer

    path = model_dir(tmp_path / "m")
    policy = ModelPolicy(from_pretrained(path), load_tokenizer(path), batch_size=8)
    words = make("length_constraints:number_words", relation="at least", num_words=40)
    seeds = [Seed(compose("Write a note about the river", [LOWER, words], seed=1),
                  constraints=[LOWER, words]),
             Seed(compose("List facts about stone", [RIVER, words], seed=2),
                  constraints=[RIVER, words])]
    cfg = {"judge": "verifier", "samples": 2, "branch": 2, "keep": 1, "max_depth": 2,
           "max_new_tokens": 6}
    res = spar_iteration(seeds, policy, cfg, seed=0, out_dir=tmp_path / "it")
    st = res.stats
    assert st["prompts"] == 2 and st["samples"] == 4
    assert st["roots"] + st["no_failed"] == 2
    assert st["roots"] == 2 - sum(1 for p in range(2) if st["empty_samples"] == 4)
    for s in res.searches:          # 6 new tokens can never reach 40 words: all trees fail
        assert not s.success and s.stop in ("max_depth", "exhausted")
        assert len(s.trace) == 1 + s.refine_calls and s.depth <= 2
        assert s.refine_calls <= 2 + 2
    assert res.rows == [] and st["pairs"] == 0 and st["refinement_success_rate"] == 0.0
    assert res.refiner_sft == []
    assert len(read_pairs(tmp_path / "it" / "pairs")) == 0          # no pairs: empty, readable
