"""Fixes found on review: pairs files never hold a row the trainer refuses (dropped and counted);
the older validation errors (seeds, batching, model configs) are UserErrors naming what to fix."""

import json

import pytest

from musc_jax.data import pairs_io
from musc_jax.data.builders import run as run_mod

SAME = "The same answer."


def _rows():
    x = [{"role": "user", "content": "Describe the owl."}]
    return [
        {"prompt": x, "chosen": "An owl.", "rejected": "A cat."},
        {"prompt": x, "chosen": SAME, "rejected": SAME},                         # refused
        {"prompt": x, "chosen": SAME, "rejected": SAME, "rejected_prompt": x},   # same x': refused
        # Another x' (as MuSC and ECD write): the trainer accepts it, so it is written.
        {"prompt": x, "chosen": SAME, "rejected": SAME,
         "rejected_prompt": [{"role": "user", "content": "Describe the owl in French."}]},
    ]


def test_write_pairs_drops_and_counts_rows_the_trainer_refuses(tmp_path):
    raw = tmp_path / "raw.jsonl"                   # the trainer's reader refuses row 2
    raw.write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    with pytest.raises(pairs_io.PairsFormatError, match="line 2: field 'rejected': equals 'chosen'"):
        pairs_io.read_pairs(raw)
    stats = {}
    out = pairs_io.write_pairs(_rows(), tmp_path / "pairs", stats=stats)
    assert stats == {"dropped_untrainable": 2}
    for path in (out, out / pairs_io.JSONL_NAME):    # Arrow and its JSONL copy, read for training
        data = pairs_io.read_pairs(path)
        assert [r["rejected"] for r in data] == ["A cat.", SAME] and data.skipped == {}
    stats = {"dropped_untrainable": 1}
    one = pairs_io.write_pairs_jsonl(_rows(), tmp_path / "one.jsonl", stats=stats)
    assert stats == {"dropped_untrainable": 3} and len(pairs_io.read_pairs(one)) == 2
    assert pairs_io.trainable_rows(_rows()) == [_rows()[0], _rows()[3]]   # rows as given


def identical_builder(seeds, policy, cfg, seed):
    """A builder that keeps identical pairs (as one with drop_identical=False could)."""
    rows = [{"prompt": s.prompt, "chosen": SAME if i % 2 else "yes", "rejected": SAME if i % 2 else "no",
             "method": "fake"} for i, s in enumerate(seeds)]
    return rows, {"pairs": len(rows)}


def test_build_pairs_counts_the_dropped_rows_in_stats(monkeypatch, tmp_path):
    from musc_jax.data.policy import ScriptedPolicy

    monkeypatch.setitem(run_mod.METHODS, "random", ("test_review_fixes", "identical_builder"))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Describe item {i}."}) + "\n" for i in range(5)))
    c = run_mod.base_pairs_config("random")
    c.update_from_flattened_dict({"data.source": "jsonl", "data.path": str(seeds), "data.num_seeds": 0,
                                  "pairs.out_dir": str(tmp_path / "run"), "pairs.shard_size": 2,
                                  "pairs.progress": False, "weights.kind": "none"})
    result = run_mod.build_pairs(c, ScriptedPolicy(lambda conv, k, seed: "unused"))
    # Shards [0, 1], [2, 3], [4]: the odd row of each full shard is identical.
    assert result.stats["pairs"] == 3 and result.stats["builder"]["dropped_untrainable"] == 2
    on_disk = json.loads((result.out_dir / "stats.json").read_text())
    assert on_disk["builder"]["dropped_untrainable"] == 2
    assert len(pairs_io.read_pairs(result.pairs_dir)) == 3


# ---- user mistakes in seeds, batching and model configs are UserErrors -------------------------

def test_older_error_types_are_user_errors(tmp_path):
    from musc_jax.data import batching, seeds
    from musc_jax.errors import MissingFileError, UserError
    from musc_jax.models.config import ConfigError, ModelConfig, config_from_hf

    for cls in (seeds.SeedFormatError, batching.BatchingError, batching.TooLongError,
                batching.TemplateBoundaryError, ConfigError):
        assert issubclass(cls, UserError), cls
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(MissingFileError, match=rf"{missing}: seeds file not found \(data.path\)"):
        seeds.load_seeds("jsonl", str(missing))
    with pytest.raises(UserError, match=r"^config data.source='web': choose one of jsonl, hf"):
        seeds.load_seeds("web", "x")
    with pytest.raises(UserError, match=r"^config data.path is empty"):
        seeds.load_seeds("jsonl", "")
    with pytest.raises(UserError, match=r"^config data.on_error='ignore': choose one of 'error', 'skip'"):
        seeds.read_jsonl_seeds(_seed_file(tmp_path), on_error="ignore")
    with pytest.raises(UserError, match=r"^truncation='cut': choose one of 'error', 'skip', 'truncate'"):
        batching.BatchingConfig(truncation="cut")
    hf = {"model_type": "llama", "vocab_size": 8, "hidden_size": 12, "intermediate_size": 16,
          "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 2}
    with pytest.raises(ConfigError, match=r"^m/config.json: num_attention_heads=3 is not a multiple of "
                                          r"num_key_value_heads=2"):
        config_from_hf(hf, source="m/config.json")
    with pytest.raises(ConfigError, match=r"model preset 'llama9' \(model.preset / --model_preset\) is "
                                          r"unknown; choose one of"):
        ModelConfig.preset("llama9")


def _seed_file(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text(json.dumps({"prompt": "Describe the owl."}) + "\n")
    return path


def test_tokenizer_errors_name_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from musc_jax.data.batching import BatchingError, ChatEncoder
    from toy_tokenizer import make_toy_tokenizer

    make_toy_tokenizer(tmp_path / "tok")
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    tok.chat_template = None
    with pytest.raises(BatchingError, match=rf"^{tmp_path / 'tok'}: the tokenizer has no chat_template"):
        ChatEncoder(tok)
