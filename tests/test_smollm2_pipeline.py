"""Smoke test of the SmolLM2 MuSC job (configs/smollm2_musc.py), the same path at a tiny size.

Real weights, real tokenizer and chat template, generated instructions, IFEval dev items: eval
before, MuSC pairs written by SmolLM2 itself, static KL token weights, precomputed reference,
DPO + token-weighted training, eval after, report and the trained model as an HF directory.
Sizes are cut to a few prompts and a few tokens so it runs in seconds plus compilation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SMOL_DIR = REPO / ".models" / "smollm2-135m-instruct"
needs_model = pytest.mark.skipif(
    not (SMOL_DIR / "model.safetensors").is_file(),
    reason="SmolLM2 not converted: run `bash scripts/get_smollm2.sh` (scripts/setup.sh does)")


def _tiny(config, workdir: Path):
    c = config
    c.workdir = str(workdir)
    c.eval.limit = 2
    c.eval.max_new_tokens = 8
    c.eval.batch_size = 2
    c.build.data.num_seeds = 4
    c.build.pairs.shard_size = 4
    c.build.musc.max_new_tokens = 8
    c.build.weights.max_length = 192
    c.build.weights.max_prompt_length = 160
    c.data.max_length = 192
    c.data.max_prompt_length = 160
    c.data.bucket = 32
    c.train.batch_size = 2
    c.optim.grad_accum = 1
    c.train.epochs = 1
    c.train.max_steps = 1
    c.optim.lr = 1e-4            # one step must visibly move the weights
    c.optim.warmup_steps = 0
    c.model.scan_layers = True   # one layer compiled instead of 30
    return c


@needs_model
def test_smollm2_musc_pipeline_end_to_end(tmp_path):
    from musc_jax.config import config_module
    from musc_jax.models import from_pretrained
    from musc_jax.pipeline import run_pipeline

    cfg = config_module(str(REPO / "configs" / "x.py"), "smollm2_musc.py").get_config()
    assert cfg.model.path == str(SMOL_DIR) and cfg.build.data.source == "instructions"
    assert Path(cfg.eval.data).name == "ifeval_dev.jsonl"
    out = run_pipeline(_tiny(cfg, tmp_path))

    for name in ("eval_before.json", "eval_after.json", "report.md", "report.png", "config.json"):
        assert (tmp_path / name).is_file(), name
    before = json.loads((tmp_path / "eval_before.json").read_text())
    for k in ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose",
              "instruction_level_loose"):
        assert 0.0 <= before[k] <= 1.0
    assert before["num_items"] == 2 and out["after"]["num_items"] == 2
    assert "SmolLM2-135M-Instruct: musc" in (tmp_path / "report.md").read_text()

    # the pairs: SmolLM2's answers to generated instructions, x' differs from x, weights stored
    from musc_jax.data.pairs_io import read_pairs
    rows = read_pairs(tmp_path / "build" / "pairs")
    assert len(rows) == out["stats"]["pairs"] >= 1
    r = rows[0]
    assert r["prompt"][0]["content"] != r["rejected_prompt"][0]["content"]
    assert r["meta"]["seed"]["source"] == "instructions"
    assert len(r["chosen_weights"]) > 0

    # the trained model: an HF directory with tokenizer and chat template, different weights
    export = tmp_path / "export"
    assert (export / "config.json").is_file() and (export / "tokenizer.json").is_file()
    tok_cfg = json.loads((export / "tokenizer_config.json").read_text())
    assert tok_cfg.get("chat_template") or (export / "chat_template.jinja").is_file()
    import jax.numpy as jnp
    base = from_pretrained(str(SMOL_DIR), dtype=jnp.float32)
    trained = from_pretrained(str(export), dtype=jnp.float32)
    ids = jnp.asarray([[1, 504, 3458, 282, 4273, 30]])
    diff = float(np.max(np.abs(np.asarray(base(ids)) - np.asarray(trained(ids)))))
    assert np.isfinite(diff) and diff > 1e-4
