"""The microworld: a verifiable world, an imperfect corpus, and the default run end to end."""

import json
import random
import subprocess
import sys

import pytest

from musc_jax.data.constraints import verify_all
from musc_jax.microworld.assets import BASE_MODEL, EVAL_SET
from musc_jax.microworld.build import eval_items
from musc_jax.microworld.corpus import CorpusConfig, corpus_rows
from musc_jax.microworld.tokenizer import train_tokenizer
from musc_jax.microworld.world import World, follow_probability, imperfect_response

WORLD = World(0)


def test_ideal_responses_follow_every_constraint_and_plain_ones_do_not():
    insts = WORLD.instructions(100, seed=3)
    ideal = [all(verify_all(WORLD.ideal(i, s), i.constraints)) for s, i in enumerate(insts)]
    plain = [all(verify_all(WORLD.plain(i, s), i.constraints)) for s, i in enumerate(insts)]
    assert sum(ideal) >= 97, sum(ideal)           # rejection sampling keeps satisfiable ones
    assert sum(plain) <= 25, sum(plain)           # ignoring the constraints mostly fails them


def test_levels_and_incompatible_pairs():
    insts = WORLD.instructions(50, seed=4)
    assert [i.level for i in insts[:5]] == [1, 2, 3, 4, 5]
    for i in insts:
        ids = {c.id for c in i.constraints}
        assert not {"change_case:english_lowercase", "change_case:english_capital"} <= ids
        assert not {"detectable_format:json_format", "detectable_format:title"} <= ids


def test_imperfect_writer_follows_less_at_higher_levels():
    rng = random.Random(0)
    rates = {}
    for level in (1, 5):
        followed = total = 0
        for inst in WORLD.instructions(120, seed=10 + level, levels=(level,)):
            _, follow = imperfect_response(WORLD.lexicon, inst, rng)
            followed += len(follow)
            total += inst.level
        rates[level] = followed / total
    assert abs(rates[1] - follow_probability(1)) < 0.1
    assert abs(rates[5] - follow_probability(5)) < 0.06
    assert rates[1] > rates[5] + 0.2


def test_corpus_covers_every_role_and_tokenizer_round_trips():
    rows = list(corpus_rows(WORLD, 300, seed=0, cfg=CorpusConfig()))
    assert {r["role"] for r in rows} == {"respond", "judge", "critique", "refine", "decompose",
                                         "compose", "evolve", "edit"}
    texts = [m["content"] for r in rows for m in r["prompt"]] + [r["response"] for r in rows]
    tok = train_tokenizer(texts, vocab_size=600)
    for t in texts[:50] + ['{"topic": "owl", "answer": "<<A>>\\n* x"}']:
        assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]) == t
    chat = tok.apply_chat_template(rows[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert chat.startswith("<s><|user|>\n") and chat.endswith("<|assistant|>\n")


def test_corpus_teaches_the_prompts_the_builders_send():
    """Every role prompt a microworld builder sends is one the corpus teaches, and the answers
    parse with the builders' own parsers (issue 13: one model in every role)."""
    from musc_jax.data.decompose import parse_decomposition
    from musc_jax.data.roles import (CRITIQUE_REQUEST, EDIT_REQUESTS, JUDGE_QUESTION,
                                     parse_constraint_edit, parse_verdict)

    rows = list(corpus_rows(WORLD, 400, seed=1, cfg=CorpusConfig()))
    by = {r: [x for x in rows if x["role"] == r] for r in ("judge", "critique", "edit", "decompose",
                                                           "refine")}
    assert all(JUDGE_QUESTION in x["prompt"][-1]["content"] for x in by["judge"])
    assert all(CRITIQUE_REQUEST in x["prompt"][-1]["content"] for x in by["critique"])
    assert all(parse_verdict(x["response"]) is not None for x in by["judge"] + by["critique"])
    assert all(x["response"].splitlines()[-1].startswith("Verdict: ") for x in by["critique"])
    assert any("Verdict: no" in x["prompt"][-1]["content"] for x in by["refine"])   # critiques
    for x in by["edit"]:
        text = x["prompt"][-1]["content"]
        assert any(req in text for req in EDIT_REQUESTS.values())
        old = text.split("Constraint: ", 1)[1].split("\n", 1)[0]
        assert parse_constraint_edit(x["response"], old) == x["response"]
    assert all(len(parse_decomposition(x["response"]).constraints) >= 1 for x in by["decompose"])


def test_held_out_set_is_fixed_by_seed():
    shipped = [json.loads(x) for x in EVAL_SET.read_text().splitlines()]
    again = eval_items(WORLD)
    assert len(shipped) == len(again) == 300
    assert [r["prompt"] for r in shipped] == [i.text for i in again]


def test_default_run_smoke(tmp_path):
    """The README's main command, reduced: a few pairs, a few steps, the real code path."""
    if not (BASE_MODEL / "config.json").exists():
        pytest.fail(f"{BASE_MODEL} is missing; rebuild it with configs/microworld_sft.py")
    cmd = [sys.executable, "-m", "musc_jax.train", "--config", "configs/microworld.py",
           f"--config.workdir={tmp_path}", "--config.build.data.num_seeds=32",
           "--config.build.pairs.shard_size=8", "--config.build.musc.max_new_tokens=64",
           "--config.eval.limit=20", "--config.eval.max_new_tokens=64",
           "--config.train.batch_size=4", "--config.train.epochs=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          cwd=str(BASE_MODEL.parents[3]))
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("eval_before.json", "eval_after.json"):
        d = json.loads((tmp_path / name).read_text())
        assert d["num_items"] == 20
        assert 0.0 <= d["prompt_level_strict"] <= 1.0
        assert 0.0 <= d["instruction_level_strict"] <= 1.0
    report = (tmp_path / "report.md").read_text()
    assert "prompt_level_strict" in report and (tmp_path / "report.png").stat().st_size > 1000
    stats = json.loads((tmp_path / "build" / "stats.json").read_text())
    assert stats["pairs"] >= 4, "too few pairs for one batch: the policy was not trained"
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "export" / "config.json").exists()
    assert json.loads((tmp_path / "config.json").read_text())["pipeline"]["recipe"] == "musc"

    # An ablation trains on these pairs without building again (what the experiment script does).
    again = tmp_path / "reuse"
    proc = subprocess.run([*cmd, f"--config.workdir={again}", "--config.pipeline.eval_before=False",
                           f"--config.pipeline.pairs={tmp_path / 'build' / 'pairs'}",
                           "--config.weights.source=dynamic"],
                          capture_output=True, text=True, timeout=600, cwd=str(BASE_MODEL.parents[3]))
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert not (again / "build").exists() and (again / "eval_after.json").exists()
    assert f"pairs: {stats['pairs']}" in (again / "report.md").read_text()


def test_pipeline_refuses_missing_given_pairs(tmp_path):
    from musc_jax.config import load_config_file
    from musc_jax.pipeline import run_pipeline
    config = load_config_file(str(BASE_MODEL.parents[3] / "configs" / "microworld.py"),
                              [f"--config.workdir={tmp_path}", f"--config.pipeline.pairs={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="pipeline.pairs=.*does not exist"):
        run_pipeline(config)
    assert not (tmp_path / "eval_before.json").exists()    # refused before the slow evaluation
    config = load_config_file(str(BASE_MODEL.parents[3] / "configs" / "microworld.py"),
                              [f"--config.workdir={tmp_path}", f"--config.pipeline.pairs={tmp_path}",
                               "--config.pipeline.iterations=2"])
    with pytest.raises(ValueError, match="set iterations=1"):
        run_pipeline(config)
