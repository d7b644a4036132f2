"""IFEval strict/loose scoring on hand-checked responses (musc_jax.eval + musc_jax.ifeval_scores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from musc_jax.data.constraints import Constraint, verify
from musc_jax.eval import load_eval_items, score_responses
from musc_jax.ifeval_scores import (LOOSE_VARIANT_NAMES, ifeval_figures, loose_rescues,
                                    loose_variants)

END = "Is there anything else I can help with?"

# (instruction id, kwargs, response, strict, loose, first loose variant that passes), checked by
# hand against IFEval's definition (module doc of musc_jax.ifeval_scores).
CASES = [
    # a capitalised preamble line: only dropping the first line makes it all lowercase
    ("change_case:english_lowercase", {}, "Sure! Here it is:\nall in lowercase here.",
     False, True, "no_first_line"),
    # a sign-off after the closing quote: dropping the last line leaves a quoted response
    ("startend:quotation", {}, '"the whole answer is quoted"\nHope this helps!',
     False, True, "no_last_line"),
    # markdown bold around the end phrase: removing '*' makes the response end with it
    ("startend:end_checker", {"end_phrase": END}, f"Here you go.\n**{END}**",
     False, True, "no_asterisks"),
    # a preamble, bold quotes and a sign-off: only both lines dropped *and* '*' removed passes
    ("startend:quotation", {}, 'Sure:\n**"quoted answer"**\nBye',
     False, True, "no_first_last_no_asterisks"),
    # one line: dropping it leaves an empty variant, which IFEval never counts as a pass (the
    # no-comma checker alone would accept the empty string)
    ("punctuation:no_comma", {}, "Hello, world", False, False, None),
    ("punctuation:no_comma", {}, "Hello world\nno commas at all", True, True, "as_is"),
    # the comma is on a middle line that every variant keeps
    ("punctuation:no_comma", {}, "a\nb, c\nd", False, False, None),
]


def test_loose_variants_by_hand():
    v = dict(zip(LOOSE_VARIANT_NAMES, loose_variants("*A*\n B *b* \n*C*")))
    assert v == {
        "as_is": "*A*\n B *b* \n*C*", "no_asterisks": "A\n B b \nC",
        "no_first_line": "B *b* \n*C*", "no_last_line": "*A*\n B *b*", "no_first_last": "B *b*",
        "no_first_line_no_asterisks": "B b \nC", "no_last_line_no_asterisks": "A\n B b",
        "no_first_last_no_asterisks": "B b",
    }
    assert loose_variants("one line")[2:5] == ["", "", ""]


@pytest.mark.parametrize("cid, kwargs, response, strict, loose, first", CASES)
def test_strict_and_loose_verdicts(cid, kwargs, response, strict, loose, first):
    c = Constraint(cid, kwargs)
    assert verify(response, c, loose=False) is strict
    assert verify(response, c, loose=True) is loose
    # the eval's loose verdict (if_verifiable) == IFEval's definition over our variants
    passing = [n for n, v in zip(LOOSE_VARIANT_NAMES, loose_variants(response))
               if v.strip() and verify(v, c)]
    assert (passing[0] if passing else None) == first


def _items(tmp_path: Path):
    """Two prompts in IFEval's format: 3 instructions in all."""
    rows = [
        {"key": 1, "prompt": "Answer in lowercase without commas.",
         "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
         "kwargs": [{}, {}]},
        {"key": 2, "prompt": "Wrap your answer in double quotes.",
         "instruction_id_list": ["startend:quotation"], "kwargs": [{}]},
    ]
    p = tmp_path / "items.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_eval_items(p)


def test_prompt_and_instruction_level_by_hand(tmp_path):
    items = _items(tmp_path)
    # item 1: no comma passes strict; lowercase passes only without the preamble (loose)
    # item 2: not quoted on any variant
    responses = ["Sure! Here it is:\nall lowercase and no commas", "not quoted at all"]
    result = score_responses(items, responses)
    assert result["prompt_level_strict"] == 0 / 2
    assert result["instruction_level_strict"] == pytest.approx(1 / 3)
    assert result["prompt_level_loose"] == 1 / 2
    assert result["instruction_level_loose"] == pytest.approx(2 / 3)
    fig = ifeval_figures(result)
    assert fig["prompt_level_strict"] == 0.0
    assert fig["instruction_level_loose"] == pytest.approx(200 / 3)
    assert fig["model_card"] == pytest.approx((0 + 100 / 3) / 2)
    assert fig["average"] == pytest.approx((0 + 100 / 3 + 50 + 200 / 3) / 4)
    assert loose_rescues(result) == {"no_first_line": 1}


def test_ifeval_config_is_a_complete_eval_config():
    import runpy

    from musc_jax.eval import check_eval_config
    c = runpy.run_path(str(Path(__file__).resolve().parents[1] / "configs" / "ifeval.py"))[
        "get_config"]()
    with pytest.raises(ValueError, match="model.path"):
        check_eval_config(c)                 # the model is the user's to name
    c.model.path = "some/model/dir"
    check_eval_config(c)
    assert c.eval.temperature == 0.0 and c.eval.max_new_tokens >= 512
    items = load_eval_items(c.eval.data)     # ../shared/data/ifeval_dev.jsonl
    assert len(items) == 120 and all(it.constraints for it in items)


def test_figures_undefined_without_scored_items():
    o = {"prompt_level_strict": None, "instruction_level_strict": None,
         "prompt_level_loose": None, "instruction_level_loose": None}
    assert ifeval_figures(o) == dict(o, average=None, model_card=None)
