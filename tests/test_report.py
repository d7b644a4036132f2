"""The run report's accuracy breakdown: by level (microworld) or by constraint count (IFEval)."""

from __future__ import annotations

import json

from musc_jax.report import comparison_table, write_report


def _item(n: int, strict):
    return {"key": "k", "constraints": [{"id": "x"}] * n, "strict": strict, "loose": strict}


def test_items_without_levels_are_grouped_by_their_number_of_constraints():
    base = {"prompt_level_strict": 0.25, "by_level": {},
            "items": [_item(1, True), _item(1, False), _item(2, False), _item(2, None), _item(3, False)]}
    after = {"prompt_level_strict": 0.5, "by_level": {},
             "items": [_item(1, True), _item(1, True), _item(2, True), _item(2, None), _item(3, False)]}
    table = comparison_table(base, after)
    # hand-counted: 1 constraint 1/2 -> 2/2; 2 constraints 0/1 -> 1/1 (the None item is unscored)
    assert "| prompt-level strict, 1 constraint | 50.0 | 100.0 | +50.0 |" in table
    assert "| prompt-level strict, 2 constraints | 0.0 | 100.0 | +100.0 |" in table
    assert "| prompt-level strict, 3 constraints | 0.0 | 0.0 | +0.0 |" in table


def test_levels_win_when_the_items_have_them(tmp_path):
    before = {"prompt_level_strict": 0.5, "by_level": {"1": {"prompt_level_strict": 0.85}},
              "items": [_item(4, True)]}
    table = comparison_table(before, None)
    assert "| prompt-level strict, level 1 | 85.0 | - | - |" in table and "constraint" not in table
    table = comparison_table(None, before)   # eval_before=False, as the experiment scripts run
    assert "| prompt-level strict, level 1 | - | 85.0 | - |" in table and "constraint" not in table
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "split": "train", "loss": 0.7}) + "\n")
    out = write_report(tmp_path, "t", before, before, {"pairs": 3}, {"eval": 1.0})
    assert "level 1" in out.read_text() and (tmp_path / "report.png").stat().st_size > 1000


def test_rewrite_report_from_a_finished_workdir(tmp_path):
    from musc_jax.errors import MissingFileError
    from musc_jax.report import rewrite_report
    import pytest
    with pytest.raises(MissingFileError, match="no config.json"):
        rewrite_report(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"pipeline": {"title": "SmolLM2: musc"}}))
    (tmp_path / "eval_after.json").write_text(json.dumps(
        {"prompt_level_strict": 0.5, "by_level": {}, "items": [_item(2, True), _item(2, False)]}))
    (tmp_path / "timings.json").write_text(json.dumps({"eval after": 12.0}))
    text = rewrite_report(tmp_path).read_text()
    assert text.startswith("# SmolLM2: musc")
    assert "| prompt-level strict, 2 constraints | - | 50.0 | - |" in text and "- eval after: 12 s" in text
