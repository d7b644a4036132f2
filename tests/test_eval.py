"""Constraint-following eval: hand-computed metrics, loaders, end-to-end evaluate, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from musc_jax.data.constraints import free_text, make
from musc_jax.eval import (EvalDataError, EvalItem, check_eval_config, eval_config, evaluate,
                           format_table, load_eval_items, print_table, run_eval,
                           save_eval_items, score_responses)
from trainer_fixtures import model_dir

REPO = Path(__file__).resolve().parents[1]
IFEVAL_DEV = REPO.parent / "shared" / "data" / "ifeval_dev.jsonl"

LOWER = make("change_case:english_lowercase")
RIVER = make("keywords:existence", keywords=["river"])
NO_COMMA = make("punctuation:no_comma")
FREE = free_text("Sound cheerful.")


def hand_items():
    """Responses and the verdicts worked out by hand:

    A (level 1)  lowercase                   "hello world."            strict [T]      loose [T]
    B (level 2)  lowercase, keyword 'river'  "**Title**\\nthe river..." strict [F, T]  loose [T, T]
                 (loose drops the markdown first line, so lowercase passes)
    C (level 2)  no comma, free text         "one, two"                strict [F, -]   loose [F, -]
    D (no level) free text only              "anything"                not scored
    """
    items = [
        EvalItem("Say hi in lowercase.", [LOWER], level=1, key="A"),
        EvalItem([{"role": "user", "content": "Write about a river, lowercase."}],
                 [LOWER, RIVER], level=2, key="B"),
        EvalItem("Count to two without commas, cheerfully.", [NO_COMMA, FREE], level=2, key="C"),
        EvalItem("Anything cheerful.", [FREE], level=None, key="D"),
    ]
    responses = ["hello world.", "**Title**\nthe river is calm.", "one, two", "anything"]
    return items, responses


def test_strict_vs_loose_single_constraint():
    # The leading markdown line makes the strict check fail and the loose one pass.
    r = score_responses([EvalItem("x", [LOWER], level=1)], ["**Title**\nall lowercase here."])
    assert r["prompt_level_strict"] == 0.0 and r["instruction_level_strict"] == 0.0
    assert r["prompt_level_loose"] == 1.0 and r["instruction_level_loose"] == 1.0


def test_score_hand_computed():
    items, responses = hand_items()
    d = score_responses(items, responses).to_dict()
    assert d["num_items"] == 4
    assert d["num_scored_items"] == 3          # D has nothing verifiable
    assert d["num_constraints"] == 6
    assert d["num_verifiable"] == 4
    assert d["num_unverifiable"] == 2
    assert d["unverifiable_types"] == {"free_text": 2}
    assert d["prompt_level_strict"] == pytest.approx(1 / 3)     # A
    assert d["prompt_level_loose"] == pytest.approx(2 / 3)      # A, B
    assert d["instruction_level_strict"] == pytest.approx(2 / 4)
    assert d["instruction_level_loose"] == pytest.approx(3 / 4)
    assert d["average"] == pytest.approx((1 / 3 + 2 / 3 + 2 / 4 + 3 / 4) / 4)
    assert d["by_type"] == {
        "change_case:english_lowercase": {"strict": 0.5, "loose": 1.0, "count": 2},
        "keywords:existence": {"strict": 1.0, "loose": 1.0, "count": 1},
        "punctuation:no_comma": {"strict": 0.0, "loose": 0.0, "count": 1},
    }
    assert "items" not in d


def test_by_level():
    items, responses = hand_items()
    by_level = score_responses(items, responses).to_dict()["by_level"]
    assert sorted(by_level) == [1, 2]                  # D (level None) is in no level
    l1, l2 = by_level[1], by_level[2]
    assert (l1["prompt_level_strict"], l1["instruction_level_strict"],
            l1["prompt_level_loose"], l1["instruction_level_loose"]) == (1.0, 1.0, 1.0, 1.0)
    assert l1["num_items"] == 1 and l1["num_verifiable"] == 1
    assert l2["prompt_level_strict"] == 0.0                         # B and C both fail
    assert l2["prompt_level_loose"] == pytest.approx(1 / 2)         # B passes loosely
    assert l2["instruction_level_strict"] == pytest.approx(1 / 3)   # B [F, T], C [F]
    assert l2["instruction_level_loose"] == pytest.approx(2 / 3)    # B [T, T], C [F]
    assert (l2["num_items"], l2["num_scored_items"], l2["num_constraints"],
            l2["num_verifiable"], l2["num_unverifiable"]) == (2, 2, 4, 3, 1)


def test_per_item_records_and_empty_ratios():
    items, responses = hand_items()
    result = score_responses(items, responses)
    recs = result.to_dict(per_item=True)["items"]
    assert [r["key"] for r in recs] == ["A", "B", "C", "D"]
    assert recs[1]["response"] == responses[1]
    assert [c["strict"] for c in recs[1]["constraints"]] == [False, True]
    assert [c["loose"] for c in recs[1]["constraints"]] == [True, True]
    assert (recs[1]["strict"], recs[1]["loose"]) == (False, True)
    assert recs[2]["constraints"][1] == dict(FREE.to_dict(), strict=None, loose=None)
    assert recs[3]["strict"] is None                      # nothing verifiable
    json.dumps(result.to_dict(per_item=True))             # JSON-serialisable
    # Nothing verifiable at all: ratios are None, not a made-up number.
    only_free = score_responses([items[3]], ["x"]).to_dict()
    assert only_free["prompt_level_strict"] is None and only_free["instruction_level_loose"] is None
    assert only_free["average"] is None
    with pytest.raises(ValueError, match="2 responses for 4 items"):
        score_responses(items, responses[:2])


def test_print_table(capsys):
    items, responses = hand_items()
    result = score_responses(items, responses)
    print_table(result)
    out = capsys.readouterr().out
    assert out.strip() == format_table(result)
    assert "overall" in out and "level 1 (n=1)" in out and "level 2 (n=2)" in out
    assert "change_case:english_lowercase" in out and "33.3" in out and "75.0" in out


def test_load_ifeval_first_five(tmp_path):
    lines = IFEVAL_DEV.read_text().splitlines()[:5]
    path = tmp_path / "ifeval5.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = load_eval_items(path)
    assert len(items) == 5
    for it, line in zip(items, lines):
        raw = json.loads(line)
        assert it.key == raw["key"] and it.prompt == raw["prompt"] and it.level is None
        assert [c.id for c in it.constraints] == raw["instruction_id_list"]
        assert [dict(c.kwargs) for c in it.constraints] == raw["kwargs"]
        assert it.conversation() == [{"role": "user", "content": raw["prompt"]}]
    # IFEval stores unused checker arguments as null: they are dropped.
    row = {"key": 7, "prompt": "p", "instruction_id_list": ["punctuation:no_comma",
                                                            "keywords:existence"],
           "kwargs": [{"keywords": None, "num_words": None}, {"keywords": ["sun"], "relation": None}]}
    path.write_text(json.dumps(row) + "\n")
    (it,) = load_eval_items(path)
    assert [c.to_dict() for c in it.constraints] == [
        {"id": "punctuation:no_comma", "kwargs": {}},
        {"id": "keywords:existence", "kwargs": {"keywords": ["sun"]}}]


def test_ifeval_metrics_match_reference_checker(tmp_path):
    """Our four IFEval metrics on the dev file equal if_verifiable's per-sample evaluation,
    aggregated as IFEval does (prompt level: mean of all-pass; instruction level: pooled)."""
    from if_verifiable.common import evaluate_instructions
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    rows = [json.loads(line) for line in IFEVAL_DEV.read_text().splitlines()]
    # Our checker deliberately counts a non-letter in letter_frequency (IFEval's picks a random
    # letter instead), so leave such rows out of the comparison.
    rows = [r for r in rows if not any(kw.get("letter") and not str(kw["letter"]).isalpha()
                                       for kw in r["kwargs"])]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = load_eval_items(path)
    makers = [
        lambda p: p,
        lambda p: "**My Title**\n" + p.lower() + "\nP.S. that is all",
        lambda p: "<<A TITLE>>\n\n" + p.upper().replace(",", "") + "\n***\n* one\n* two",
    ]
    for make_response in makers:
        responses = [make_response(r["prompt"]) for r in rows]
        ours = score_responses(items, responses).to_dict()
        n = s_all = l_all = s_pass = l_pass = 0
        for r, resp in zip(rows, responses):
            res, _ = evaluate_instructions(resp, r["instruction_id_list"], r["kwargs"], r["prompt"],
                                           INSTRUCTION_DICT)
            assert len(res) == len(r["instruction_id_list"])
            n += len(res)
            s_pass += sum(x.strict_pass for x in res)
            l_pass += sum(x.loose_pass for x in res)
            s_all += all(x.strict_pass for x in res)
            l_all += all(x.loose_pass for x in res)
        assert ours["num_verifiable"] == n
        assert ours["prompt_level_strict"] == pytest.approx(s_all / len(rows), abs=1e-12)
        assert ours["prompt_level_loose"] == pytest.approx(l_all / len(rows), abs=1e-12)
        assert ours["instruction_level_strict"] == pytest.approx(s_pass / n, abs=1e-12)
        assert ours["instruction_level_loose"] == pytest.approx(l_pass / n, abs=1e-12)



def test_our_format_round_trip(tmp_path):
    items, _ = hand_items()
    path = save_eval_items(items, tmp_path / "items.jsonl")
    back = load_eval_items(path)
    assert back == items
    # key defaults to the line number; level is optional
    path.write_text("\n" + json.dumps({"prompt": "p", "constraints": [{"id": "punctuation:no_comma"}]}) + "\n")
    (it,) = load_eval_items(path)
    assert it.key == 2 and it.level is None and it.constraints == [NO_COMMA]


@pytest.mark.parametrize("line, field", [
    ("{not json", "invalid JSON"),
    ('{"constraints": []}', "'prompt'"),
    ('{"prompt": "p"}', "'constraints'"),
    ('{"prompt": "p", "constraints": [{"id": "no:such_type"}]}', "'constraints[0]'"),
    ('{"prompt": "p", "constraints": [{"id": "keywords:existence", "kwargs": {}}]}', "'constraints[0]'"),
    ('{"prompt": "p", "constraints": [], "level": "two"}', "'level'"),
    ('{"prompt": [{"role": "user"}], "constraints": []}', "'prompt'"),
    ('{"prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}', "'kwargs'"),
    ('{"prompt": "p", "instruction_id_list": ["x:y"], "kwargs": [{}]}', "'instruction_id_list[0]'"),
])
def test_malformed_line_names_file_line_field(tmp_path, line, field):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "ok", "constraints": [{"id": "punctuation:no_comma"}]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(EvalDataError) as e:
        load_eval_items(path)
    assert f"{path}: line 2" in str(e.value) and field in str(e.value)


# ----------------------------------------------------------------------------- with a model

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from musc_jax.models import from_pretrained, load_tokenizer
    path = model_dir(tmp_path_factory.mktemp("eval_model"))
    return path, from_pretrained(path), load_tokenizer(path)


def model_items():
    return [
        EvalItem("write a short note about the river", [LOWER, NO_COMMA], level=2, key="x"),
        EvalItem([{"role": "user", "content": "list facts about stone"}], [RIVER], level=1,
                 key="y"),
        EvalItem("describe the cloud", [LOWER, RIVER, FREE], level=3, key="z"),
    ]


def test_evaluate_tiny_model_deterministic(tiny):
    _, model, tok = tiny
    items = model_items()
    r1 = evaluate(model, tok, items, max_new_tokens=8, batch_size=2)
    r2 = evaluate(model, tok, items, max_new_tokens=8, batch_size=2)
    d1, d2 = r1.to_dict(per_item=True), r2.to_dict(per_item=True)
    assert d1 == d2
    assert (d1["num_items"], d1["num_scored_items"], d1["num_constraints"],
            d1["num_verifiable"], d1["num_unverifiable"]) == (3, 3, 6, 5, 1)
    assert sorted(d1["by_level"]) == [1, 2, 3]
    assert {lv: m["num_items"] for lv, m in d1["by_level"].items()} == {1: 1, 2: 1, 3: 1}
    assert {t: m["count"] for t, m in d1["by_type"].items()} == {
        "change_case:english_lowercase": 2, "keywords:existence": 2, "punctuation:no_comma": 1}
    for k in ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose",
              "instruction_level_loose"):
        assert 0.0 <= d1[k] <= 1.0
    assert [r["key"] for r in d1["items"]] == ["x", "y", "z"]
    assert all(isinstance(r["response"], str) for r in d1["items"])
    # The metrics are exactly the scoring of the generated responses.
    again = score_responses(items, [r["response"] for r in d1["items"]])
    assert again.to_dict(per_item=True) == d1


def test_config_checks(tmp_path):
    c = ConfigDict({"model": {"path": "m"}})
    with pytest.raises(ValueError, match="eval.data.*eval.out"):
        check_eval_config(c)
    c.eval = eval_config()
    with pytest.raises(ValueError, match=r"\['eval.data', 'eval.out'\] are empty"):
        run_eval(c)
    c.eval.data, c.eval.out = "d.jsonl", "o.json"
    check_eval_config(c)
    del c.eval["batch_size"]
    with pytest.raises(ValueError, match="eval.batch_size"):
        check_eval_config(c)
    # The shared base config takes an eval section as is.
    from musc_jax.config import base_config
    b = base_config()
    b.eval = eval_config()
    b.model.path, b.eval.data, b.eval.out = "m", "d", "o"
    check_eval_config(b)


def test_cli(tiny, tmp_path):
    path, _, _ = tiny
    items_path = save_eval_items(model_items(), tmp_path / "items.jsonl")
    out = tmp_path / "res" / "eval.json"
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        "from ml_collections import ConfigDict\n"
        "from musc_jax.eval import eval_config\n\n"
        "def get_config():\n"
        f"    c = ConfigDict({{'model': {{'path': {str(path)!r}}}}})\n"
        "    c.eval = eval_config()\n"
        f"    c.eval.data = {str(items_path)!r}\n"
        "    c.eval.max_new_tokens = 8\n"
        "    return c\n")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "musc_jax.eval", f"--config={cfg}", f"--config.eval.out={out}",
         "--config.eval.batch_size=2"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    d = json.loads(out.read_text())
    for k in ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose",
              "instruction_level_loose", "by_level", "by_type", "num_items", "items"):
        assert k in d
    assert d["num_items"] == 3 and sorted(d["by_level"]) == ["1", "2", "3"]
    assert d["settings"]["batch_size"] == 2 and d["settings"]["max_new_tokens"] == 8
    assert "overall" in proc.stdout and "level 3 (n=1)" in proc.stdout
