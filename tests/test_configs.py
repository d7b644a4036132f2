"""Every shipped config loads and is valid; a pipeline refuses a bad value before its first
(slow) evaluation; the recipe configs say what the README says they do."""

from __future__ import annotations

from pathlib import Path

import pytest

from musc_jax.config import load_config_file
from musc_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))


def _load(name: str, *overrides: str):
    return load_config_file(str(REPO / "configs" / name), list(overrides))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_a_pipeline_config_passes_the_early_check(name):
    from musc_jax.pipeline import check_pipeline_config
    c = _load(name)
    if "pipeline" in c and "build" in c:   # microworld_sft has its own sft_pipeline section
        check_pipeline_config(c)


def test_recipe_configs_set_what_the_readme_says():
    mw = _load("microworld.py")
    assert mw.build.pairs.method == "musc" and mw.build.musc.negativity_filter == "none"
    assert mw.loss.a_seq == 1.0 and mw.loss.a_tok == 1.0 and mw.model.lora.rank == 0
    lora = _load("microworld_lora.py")
    assert lora.model.lora.rank == 16 and lora.model.lora.alpha == 32 and lora.optim.lr == 1e-3
    assert lora.build.musc.negativity_filter == "none"   # the default's pairs, adapters only
    one = _load("microworld_one_model.py")
    m = one.build.musc
    assert (m.decomposer, m.composer, m.freetext_edit) == ("self", "self", "policy")
    assert one.pipeline.recipe == "musc_one_model"
    spar = _load("microworld_spar.py")
    assert spar.build.pairs.method == "spar" and spar.build.spar.judge == "self"
    assert spar.pipeline.train_refiner and spar.pipeline.iterations == 3
    ecd = _load("microworld_ecd.py")
    assert ecd.build.pairs.method == "ecd" and ecd.build.ecd.checker == "verifier"
    smol = _load("smollm2_musc.py")
    assert smol.build.musc.negativity_filter == "none" and smol.reference.mode == "precompute"
    assert smol.eval.data.endswith("ifeval_dev.jsonl") and smol.eval.limit == 0


@pytest.mark.parametrize("override, message", [
    ("--config.optim.grad_accum=5", r"train.batch_size=16 is not divisible by optim.grad_accum=5"),
    ("--config.loss.beta=0", r"config loss: .*beta"),
    ("--config.build.musc.decomposer=oracle", r"^config build.musc: musc.decomposer='oracle'"),
    ("--config.build.weights.kind=magic", r"^config build.weights.kind='magic': choose one of"),
    ("--config.build.pairs.method=magic", r"^config build.pairs.method='magic': choose one of"),
])
def test_pipeline_refuses_a_bad_value_before_the_first_evaluation(tmp_path, override, message):
    """A training or pair-building mistake used to surface only when the pipeline reached that
    stage, after the evaluation and (for training) the whole pair build."""
    from musc_jax.pipeline import run_pipeline
    c = _load("microworld.py", f"--config.workdir={tmp_path}", override)
    with pytest.raises(UserError, match=message):
        run_pipeline(c)
    assert not (tmp_path / "eval_before.json").exists()


def test_spar_sections_are_checked_before_the_first_evaluation(tmp_path):
    from musc_jax.pipeline import run_pipeline
    for override, message in [
            ("--config.build.spar.judge=oracle", r"^config build.spar: spar judge must be one of"),
            ("--config.pipeline.refiner_lr=-1.0", r"^the SPaR refiner's training .*optim.lr=-1.0")]:
        c = _load("microworld_spar.py", f"--config.workdir={tmp_path}", override)
        with pytest.raises(UserError, match=message):
            run_pipeline(c)
        assert not (tmp_path / "eval_before.json").exists()
