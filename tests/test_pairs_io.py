"""Pairs dataset I/O: formats, normalisation, validation errors, skip counts, round trips."""

from __future__ import annotations

import json
import logging

import datasets
import numpy as np
import pytest

from musc_jax.data.pairs_io import (FIELDS, PairsFormatError, normalize_pair, normalize_sft_row, read_pairs,
                                    read_sft, rows_equal, write_pairs, write_pairs_jsonl)


def _write_jsonl(path, lines):
    """Write raw lines (dicts are JSON-encoded, strings written as they are)."""
    with open(path, "w") as f:
        for line in lines:
            f.write((json.dumps(line) if not isinstance(line, str) else line) + "\n")
    return path


def _full_row(i=0):
    return {
        "prompt": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": f"Write a note about topic {i} in 3 sentences."}],
        "chosen": f"Topic {i} is old. It is big. It is blue.",
        "rejected": f"Topic {i} is old.",
        "rejected_prompt": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": f"Write a note about topic {i}."}],
        "constraints": [{"type": "task", "args": {"topic": i}}, {"type": "sentences", "args": {"n": 3}}],
        "corrupted": [{"type": "sentences", "args": {"n": 3}, "op": "drop"}],
        "method": "musc",
        "meta": {"seed": 7, "round": 1, "model": "abc123"},
        "chosen_weights": [0.5, 1.25, 2.0, 0.1],
        "rejected_weights": [1.0, 0.3],
        "ref_chosen_token_logps": [-0.5, -1.5, -0.01, -3.0],
        "ref_rejected_token_logps": [-2.0, -0.25],
    }


TRL_ROWS = [
    {"prompt": [{"role": "user", "content": "What color is the sky?"}],
     "chosen": [{"role": "assistant", "content": "It is blue."}],
     "rejected": [{"role": "assistant", "content": "It is green."}]},
    {"prompt": [{"role": "user", "content": "Name a river."}],
     "chosen": [{"role": "assistant", "content": "The Nile."}],
     "rejected": [{"role": "assistant", "content": "A mountain."}]},
]


def test_trl_conversational_jsonl_and_arrow(tmp_path):
    jsonl = _write_jsonl(tmp_path / "trl.jsonl", TRL_ROWS)
    datasets.Dataset.from_list(TRL_ROWS).save_to_disk(str(tmp_path / "trl_arrow"))
    for path in (jsonl, tmp_path / "trl_arrow"):
        data = read_pairs(path)
        assert len(data) == 2 and data.skipped == {} and data.num_read == 2
        r = data[0]
        assert r["prompt"] == [{"role": "user", "content": "What color is the sky?"}]
        assert r["chosen"] == "It is blue." and r["rejected"] == "It is green."
        assert r["rejected_prompt"] == [] and r["constraints"] == [] and r["corrupted"] == []
        assert r["method"] == "unknown" and r["meta"] == {}
        assert all(r[f] is None for f in ("chosen_weights", "ref_rejected_token_logps"))
        assert set(r) == set(FIELDS)


def test_trl_implicit_prompt_and_plain_strings():
    implicit = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]}
    r = normalize_pair(implicit)
    assert r["prompt"] == [{"role": "user", "content": "Hi"}]
    assert (r["chosen"], r["rejected"]) == ("Hello!", "Go.")
    r = normalize_pair({"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.",
                        "rejected_prompt": "Say no."})
    assert r["prompt"] == [{"role": "user", "content": "Say hi."}]
    assert r["rejected_prompt"] == [{"role": "user", "content": "Say no."}]
    # JSON-string spellings (as stored in Arrow) are accepted too.
    r = normalize_pair({"prompt": "p", "chosen": "a", "rejected": "b", "constraints": '[{"type": "x"}]',
                        "meta": '{"seed": 3}'})
    assert r["constraints"] == [{"type": "x"}] and r["meta"] == {"seed": 3}


def test_unknown_columns_kept_in_meta():
    r = normalize_pair({"prompt": "p", "chosen": "a", "rejected": "b", "score_chosen": 9.0, "id": "x1"})
    assert r["meta"] == {"extra": {"score_chosen": 9.0, "id": "x1"}}


def test_round_trip_arrow_and_jsonl(tmp_path):
    rows = [_full_row(i) for i in range(5)] + [TRL_ROWS[0]]
    out = write_pairs(rows, tmp_path / "pairs")
    from_arrow = read_pairs(out)
    from_jsonl = read_pairs(out / "pairs.jsonl")
    assert len(from_arrow) == len(from_jsonl) == 6
    for a, b, raw in zip(from_arrow, from_jsonl, rows):
        assert rows_equal(a, b)
        expected = normalize_pair(raw)
        for f in FIELDS:
            if isinstance(expected[f], np.ndarray):
                assert a[f].dtype == np.float32
                np.testing.assert_array_equal(a[f], np.asarray(raw[f], np.float32))
            else:
                assert a[f] == expected[f], f
    # Writing what was read reproduces the same data (both formats).
    again = read_pairs(write_pairs(from_jsonl.rows, tmp_path / "again"))
    assert all(rows_equal(a, b) for a, b in zip(again, from_arrow))
    single = read_pairs(write_pairs_jsonl(from_arrow.rows, tmp_path / "one.jsonl"))
    assert all(rows_equal(a, b) for a, b in zip(single, from_arrow))


def test_write_refuses_existing_dir_unless_overwrite(tmp_path):
    write_pairs([_full_row()], tmp_path / "p")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_pairs([_full_row()], tmp_path / "p")
    write_pairs([_full_row(1), _full_row(2)], tmp_path / "p", overwrite=True)
    assert len(read_pairs(tmp_path / "p")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]      # no temp dirs left behind


def test_write_and_read_no_rows(tmp_path):
    """A build that keeps no pairs still writes a readable (empty) dataset, Arrow and JSONL."""
    out = write_pairs([], tmp_path / "none")
    assert len(read_pairs(out)) == 0
    assert (out / "pairs.jsonl").read_text() == ""
    import datasets
    assert set(datasets.load_from_disk(str(out)).column_names) >= {"prompt", "chosen", "rejected"}


def test_write_validates_rows(tmp_path):
    with pytest.raises(PairsFormatError, match=r"row 1: field 'rejected': empty response"):
        write_pairs([_full_row(), {**_full_row(), "rejected": "  "}], tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_shard_directory(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_jsonl(shards / "part-000.jsonl", [_full_row(0), _full_row(1)])
    write_pairs([_full_row(2)], shards / "part-001")
    datasets.Dataset.from_list([TRL_ROWS[1]]).to_parquet(str(shards / "part-002.parquet"))
    (shards / "README.md").write_text("not data")
    data = read_pairs(shards)
    assert [r["prompt"][-1]["content"] for r in data][:3] == [
        f"Write a note about topic {i} in 3 sentences." for i in range(3)]
    assert data[3]["chosen"] == "The Nile."
    assert data.locations[1].endswith("part-000.jsonl: line 2")  # 1-based lines
    assert data.locations[2].endswith("part-001: row 0")
    assert data.locations[3].endswith("part-002.parquet: row 0")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no pairs data"):
        read_pairs(tmp_path / "empty")


def test_dataset_dict_split(tmp_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(TRL_ROWS),
                               "test": datasets.Dataset.from_list(TRL_ROWS[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="pass split"):
        read_pairs(tmp_path / "dd")
    assert len(read_pairs(tmp_path / "dd", split="test")) == 1


BAD_LINES = [
    ({"chosen": "a", "rejected": "b"}, "prompt", "missing"),
    ({"prompt": "p", "rejected": "b"}, "chosen", "missing"),
    ({"prompt": "p", "chosen": "   ", "rejected": "b"}, "chosen", "empty"),
    ({"prompt": "p", "chosen": "a", "rejected": 5}, "rejected", "type"),
    ({"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}, "prompt", "type"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}],
      "chosen": "a", "rejected": "b"}, "prompt", "value"),
    ({"prompt": "p", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "chosen", "type"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weights": [1.0, "x"]}, "chosen_weights", "type"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weights": [1.0, -2.0]},
     "chosen_weights", "value"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "ref_rejected_token_logps": [0.5]},
     "ref_rejected_token_logps", "value"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "constraints": "{not json"}, "constraints", "json"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "meta": [1, 2]}, "meta", "type"),
    ({"prompt": "p", "chosen": "a", "rejected": "b", "method": 3}, "method", "type"),
]


@pytest.mark.parametrize("bad,field,code", BAD_LINES)
def test_error_names_file_line_and_field(tmp_path, bad, field, code):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    # Line 3 is blank: blank lines are not rows but still count, so the bad row is on line 4
    # (lines are 1-based, as an editor shows them).
    path = _write_jsonl(tmp_path / "pairs.jsonl", [good, good, "", bad, good])
    with pytest.raises(PairsFormatError) as info:
        read_pairs(path)
    e = info.value
    assert (e.row, e.field, e.code) == (4, field, code)
    assert str(e).startswith(f"{path}: line 4: field {field!r}: ")


def test_error_names_arrow_row(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 3
    rows = rows[:2] + [{"prompt": "p", "chosen": "", "rejected": "b"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(PairsFormatError, match=r"ds: row 2: field 'chosen': empty response"):
        read_pairs(tmp_path / "ds")


def test_invalid_json_line(tmp_path):
    path = _write_jsonl(tmp_path / "x.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, "{oops"])
    with pytest.raises(PairsFormatError, match=r"x.jsonl: line 2: invalid JSON"):
        read_pairs(path)


def test_skip_counts_per_reason_and_logs(tmp_path, caplog):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    lines = [good, {"prompt": "p", "chosen": "", "rejected": "b"}, {"prompt": "p", "rejected": "b"},
             good, {"prompt": "p", "chosen": " ", "rejected": "b"}, "{oops", {"prompt": "p", "chosen": "a"}]
    path = _write_jsonl(tmp_path / "pairs.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="musc_jax.data.pairs_io"):
        data = read_pairs(path, on_error="skip")
    assert len(data) == 2 and data.num_read == 7 and data.num_skipped == 5
    assert data.skipped == {"chosen: empty": 2, "chosen: missing": 1, "row: json": 1, "rejected: missing": 1}
    assert data.locations == [f"{path}: line 1", f"{path}: line 4"]
    assert "skipped 5 of 7 rows" in caplog.text and "chosen: empty" in caplog.text


def test_on_error_value_checked(tmp_path):
    with pytest.raises(ValueError, match="on_error"):
        read_pairs(tmp_path, on_error="ignore")


def test_sft_rows(tmp_path):
    assert normalize_sft_row({"prompt": "Hi", "completion": [{"role": "assistant", "content": "Hello"}]}) == {
        "prompt": [{"role": "user", "content": "Hi"}], "response": "Hello"}
    conv = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Yo"}]}
    assert normalize_sft_row(conv) == {"prompt": conv["messages"][:2], "response": "Yo"}
    with pytest.raises(PairsFormatError, match=r"f.jsonl: line 4: field 'response': missing"):
        normalize_sft_row({"prompt": "Hi"}, file="f.jsonl", row=4, row_label="line")
    path = _write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "response": "b"}, conv,
                                                 {"prompt": "a", "response": ""}])
    with pytest.raises(PairsFormatError, match=r"sft.jsonl: line 3: field 'response': empty response"):
        read_sft(path)
    data = read_sft(path, on_error="skip")
    assert [r["response"] for r in data] == ["b", "Yo"] and data.skipped == {"response: empty": 1}
