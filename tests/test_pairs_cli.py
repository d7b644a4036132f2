"""Pairs building end to end (tiny random model, real generation), the CLI with resume, seeds."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musc_jax.data import pairs_io
from musc_jax.data.batching import BatchingConfig, tokenize_pairs
from musc_jax.data.builders import run as run_mod
from musc_jax.data.builders.run import base_pairs_config, build_pairs, merge_stats
from musc_jax.data.seeds import SeedFormatError, read_hf_seeds, read_jsonl_seeds
from trainer_fixtures import model_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    # microworld instructions are long in the toy tokenizer's tokens: room for them
    return model_dir(tmp_path_factory.mktemp("pairs_model"), max_position_embeddings=1024)


def _config(tiny_dir, out_dir, **changes):
    from musc_jax.microworld.plugin import pairs_config
    c = pairs_config("musc")
    c.model.path = str(tiny_dir)
    c.data.num_seeds = 4
    c.data.levels = (2, 3)
    c.pairs.out_dir = str(out_dir)
    c.pairs.shard_size = 2
    c.pairs.progress = False
    c.musc.decomposer = "rule"
    c.musc.max_new_tokens = 12
    c.weights.update(kind="kl", ref_logps=True, batch_size=4, max_length=1024,
                     max_prompt_length=768, bucket=128)
    for k, v in changes.items():
        section, key = k.split(".")
        c[section][key] = v
    return c


def test_musc_end_to_end_with_the_tiny_model(tiny_dir, tmp_path):
    from musc_jax.models import load_tokenizer

    cfg = _config(tiny_dir, tmp_path / "run")
    result = build_pairs(cfg)          # loads the model: ModelPolicy, jitted KV-cache sampling
    st = result.stats
    b = st["builder"]
    assert b["seeds"] == 4 and b["decomposed"] == 4 and b["corrupted"] == 4
    assert st["shards"] == {"total": 2, "built": 2, "resumed": 0}
    assert b["pairs"] + sum(b["dropped"].values()) == 4
    assert st["weights"]["rows"] == b["pairs"] and st["weights"]["dropped"] == {}
    assert b["pairs"] >= 2, b       # gibberish, but non-empty and different responses
    on_disk = json.loads((result.out_dir / "stats.json").read_text())
    assert on_disk["pairs"] == st["pairs"] == b["pairs"]
    for key in ("negativity_rate", "judge_agreement", "refinement_success_rate", "parse_failures",
                "weight_mass_by_constraint"):
        assert key in on_disk
    assert on_disk["parse_failures"] == 0
    assert sum(on_disk["weight_mass_by_constraint"].values()) == pytest.approx(1.0)

    rows = pairs_io.read_pairs(result.pairs_dir)
    assert len(rows) == st["pairs"]
    tok = load_tokenizer(tiny_dir)
    bcfg = BatchingConfig(max_length=1024, max_prompt_length=768, alt_sequences=True)
    examples = tokenize_pairs(rows, tok, bcfg).examples
    assert len(examples) == len(rows)
    for row, ex in zip(rows, examples):
        assert row["method"] == "musc" and row["rejected_prompt"] and row["corrupted"]
        assert row["meta"]["model_hash"] == st["model_hash"] and row["meta"]["round"] == 0
        for side, ids in (("chosen", ex.chosen_ids), ("rejected", ex.rejected_ids)):
            w = ex.token_fields[f"{side}_weights"]
            assert len(w) == len(ids) and np.all(w >= 0) and np.all(w <= 2.0) and w.sum() > 0
            lp = ex.token_fields[f"ref_{side}_token_logps"]
            assert len(lp) == len(ids) and np.all(lp <= 0)

    # the same out_dir with another config is refused, naming the keys (before any model work)
    with pytest.raises(ValueError, match="musc.temperature"):
        build_pairs(_config(tiny_dir, tmp_path / "run", **{"musc.temperature": 0.9}))


def test_cli_builds_then_resumes(tiny_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "musc_jax.pairs", "--config", str(REPO / "configs/pairs_musc.py"),
           f"--config.model.path={tiny_dir}", f"--config.pairs.out_dir={out}",
           "--config.data.num_seeds=2", "--config.data.levels=(3,)", "--config.pairs.shard_size=1",
           "--config.pairs.progress=False", "--config.musc.max_new_tokens=6",
           "--config.weights.kind=diff", "--config.weights.max_length=1024",
           "--config.weights.max_prompt_length=768"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert first.returncode == 0, first.stderr[-4000:]
    shards = sorted(p.name for p in (out / "pairs").iterdir())
    assert shards == ["shard-00000", "shard-00001"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["shards"] == {"total": 2, "built": 2, "resumed": 0}
    mtimes = {p: (out / "pairs" / p / "shard_stats.json").stat().st_mtime_ns for p in shards}

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "2 shards, 0 to build" in second.stderr
    again = json.loads((out / "stats.json").read_text())
    assert again["shards"] == {"total": 2, "built": 0, "resumed": 2}
    assert again["pairs"] == stats["pairs"] and again["builder"] == stats["builder"]
    assert mtimes == {p: (out / "pairs" / p / "shard_stats.json").stat().st_mtime_ns for p in shards}


def test_missing_builder_module_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(run_mod.METHODS, "spar", ("musc_jax.data.builders.no_such_module", "build_spar"))
    with pytest.raises(RuntimeError, match="pairs.method='spar' needs musc_jax.data.builders."
                                           "no_such_module.build_spar"):
        run_mod.builder_fn("spar")
    with pytest.raises(ValueError, match="choose one of"):
        run_mod.builder_fn("dpo")


def test_merge_stats_sums_counts_and_weights_rates():
    a = {"pairs": 2, "dropped": {"x": 1}, "judge_agreement": 1.0, "rates": {"r_rate": 0.5},
         "avg_depth": 1.0}
    b = {"pairs": 6, "dropped": {"x": 2, "y": 1}, "judge_agreement": 0.5, "rates": {"r_rate": None},
         "avg_depth": 2.0}
    m = merge_stats([a, b], [2.0, 6.0])
    assert m["pairs"] == 8 and m["dropped"] == {"x": 3, "y": 1}
    assert m["judge_agreement"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert m["avg_depth"] == pytest.approx((2 * 1.0 + 6 * 2.0) / 8)
    assert m["rates"] == {"r_rate": 0.5}


def test_jsonl_seeds_typed_constraints_and_errors(tmp_path):
    path = tmp_path / "seeds.jsonl"
    good = {"key": 7, "prompt": "Write about cats. Do not use any commas.",
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [{}, {"num_words": 30, "relation": "at least", "keywords": None}]}
    lines = [json.dumps(good), "", json.dumps({"prompt": "  "}), "{not json",
             json.dumps({"prompt": "x", "instruction_id_list": ["nope:unknown"], "kwargs": [{}]})]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SeedFormatError, match=r"seeds.jsonl: line 3: field 'prompt': empty"):
        read_jsonl_seeds(path)
    out = read_jsonl_seeds(path, on_error="skip")
    assert len(out.seeds) == 1 and out.num_read == 4
    assert out.skipped == {"prompt: empty": 1, "row: json": 1, "instruction_id_list[0]: value": 1}
    s = out.seeds[0]
    assert [c.id for c in s.constraints] == good["instruction_id_list"]
    assert s.constraints[1].kwargs == {"num_words": 30, "relation": "at least"}
    assert s.meta == {"source": str(path), "line": 1, "key": 7}


def test_hf_seeds_with_a_configurable_column(tmp_path):
    import datasets
    ds = datasets.Dataset.from_list([{"instruction": "Describe the owl. Write in lowercase."},
                                     {"instruction": ""}])
    ds.save_to_disk(str(tmp_path / "ds"))
    with pytest.raises(SeedFormatError, match=r"ds: row 1: field 'instruction': empty"):
        read_hf_seeds(tmp_path / "ds", prompt_field="instruction")
    out = read_hf_seeds(tmp_path / "ds", prompt_field="instruction", on_error="skip")
    assert [s.prompt for s in out.seeds] == ["Describe the owl. Write in lowercase."]
    assert out.skipped == {"instruction: empty": 1}
    with pytest.raises(SeedFormatError, match="no such column"):
        read_hf_seeds(tmp_path / "ds", prompt_field="prompt")


def fake_builder(seeds, policy, cfg, seed, *, refiner=None):
    """A stand-in builder (method dispatch, extra kwargs, side outputs, rate merging)."""
    rows = [{"prompt": s.prompt, "chosen": "yes", "rejected": "no", "method": "fake"} for s in seeds]
    return rows, {"pairs": len(rows), "judge_agreement": 0.5, "refiner_given": int(refiner is not None),
                  "refiner_sft": [{"prompt": s.prompt, "response": "r", "role": "refine"}
                                  for s in seeds]}


def test_dispatch_kwargs_and_side_outputs(monkeypatch, tmp_path):
    from musc_jax.data.policy import ScriptedPolicy

    monkeypatch.setitem(run_mod.METHODS, "random", ("test_pairs_cli", "fake_builder"))
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"prompt": f"Describe item {i}."}) + "\n" for i in range(3)))
    c = base_pairs_config("random")
    c.data.update(source="jsonl", path=str(seeds), num_seeds=0)
    c.pairs.update(out_dir=str(tmp_path / "run"), shard_size=2, progress=False)
    c.weights.kind = "none"
    policy = ScriptedPolicy(lambda conv, k, seed: "unused")
    result = build_pairs(c, policy, refiner=policy)
    assert result.stats["pairs"] == 3 and result.stats["shards"]["total"] == 2
    assert result.stats["judge_agreement"] == 0.5 and result.stats["builder"]["refiner_given"] == 2
    assert "refiner_sft" not in result.stats["builder"]
    sft = pairs_io.read_sft(result.out_dir / "refiner_sft.jsonl")
    assert [r["prompt"][0]["content"] for r in sft] == [f"Describe item {i}." for i in range(3)]
    assert len(pairs_io.read_pairs(result.pairs_dir)) == 3
