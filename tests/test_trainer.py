"""The Trainer end to end on a tiny model: metrics, checkpoints, export, resume, bad input."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from musc_jax.config import base_config
from musc_jax.metrics import NonFiniteError
from musc_jax.trainer import Trainer
from trainer_fixtures import model_dir, pairs_file, sft_file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return {"model": model_dir(root / "model"), "pairs": pairs_file(root / "pairs.jsonl", 16),
            "pairs_alt": pairs_file(root / "pairs_alt.jsonl", 16, alt=True),
            "sft": sft_file(root / "sft.jsonl", 16)}


def _config(tiny, workdir, **changes):
    c = base_config()
    c.model.path = str(tiny["model"])
    c.data.train = str(tiny["pairs"])
    c.data.max_length = 128
    c.data.max_prompt_length = 64
    c.workdir = str(workdir)
    c.train.batch_size = 4
    c.train.epochs = 2
    c.optim.lr = 1e-3
    c.loss.a_tok = 0.0
    c.checkpoint.every = 4
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def test_train_writes_metrics_checkpoints_and_export(tiny, tmp_path):
    t = Trainer(_config(tiny, tmp_path))
    assert t.total_steps == 8
    metrics = t.train()
    t.export()
    t.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == list(range(1, 9))
    for key in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "grad_norm", "lr"):
        assert key in train[0]
    assert abs(train[0]["loss"] - np.log(2)) < 1e-5  # policy == reference at step 0
    assert metrics["loss"] < train[0]["loss"]
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["optim"]["lr"] == t.config.optim.lr and saved["data"]["train"] == t.config.data.train
    assert 1 <= t.trace_count <= 2  # one compile per length bucket (64 or 128)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["4", "8"]
    assert any((tmp_path / "tensorboard").iterdir())
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    assert hf.config.vocab_size == t.model.config.vocab_size
    assert (tmp_path / "export" / "tokenizer_config.json").exists()


def test_no_recompilation_after_second_step(tiny, tmp_path):
    # data.max_buckets=1: every batch is padded to data.max_length (128), one shape.
    t = Trainer(_config(tiny, tmp_path, **{"data.max_buckets": 1, "train.max_steps": 5,
                                         "data.logits_windows": 1}))
    t.train()
    t.close()
    assert t.trace_count == 1, f"traced {t.trace_count} times with one bucket"


@pytest.mark.parametrize("changes", [
    {"reference.mode": "precompute"},
    {"reference.mode": "none"},
    {"loss.a_tok": 1.0, "weights.source": "uniform"},
    {"loss.a_tok": 1.0, "weights.source": "dynamic", "data.train": "pairs_alt"},
    {"optim.grad_accum": 2},
    {"loss.loss_type": "ipo"},
])
def test_variants_train(tiny, tmp_path, changes):
    changes = dict(changes)
    if changes.get("data.train") == "pairs_alt":
        changes["data.train"] = str(tiny["pairs_alt"])
    t = Trainer(_config(tiny, tmp_path, **{"train.max_steps": 3, **changes}))
    m = t.train()
    t.close()
    assert np.isfinite(m["loss"])


def test_precomputed_reference_equals_online(tiny, tmp_path):
    online = Trainer(_config(tiny, tmp_path / "a", **{"train.max_steps": 3, "train.shuffle": False}))
    pre = Trainer(_config(tiny, tmp_path / "b", **{"train.max_steps": 3, "train.shuffle": False,
                                                   "reference.mode": "precompute"}))
    m1, m2 = online.train(), pre.train()
    online.close()
    pre.close()
    assert abs(m1["loss"] - m2["loss"]) < 1e-5
    assert (tmp_path / "b" / "ref_cache").exists()
    # A second run reuses the cache (same model files and tokens).
    again = Trainer(_config(tiny, tmp_path / "c", **{"train.max_steps": 1, "reference.mode": "precompute",
                                                     "reference.cache_dir": str(tmp_path / "b" / "ref_cache")}))
    again.close()
    assert len(list((tmp_path / "b" / "ref_cache").iterdir())) == 1


def test_sft_objective(tiny, tmp_path):
    t = Trainer(_config(tiny, tmp_path, **{"objective": "sft", "data.train": str(tiny["sft"]),
                                            "train.max_steps": 6}))
    m = t.train()
    t.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert np.isfinite(m["loss"])


def test_nan_stops_with_step_and_metric(tiny, tmp_path):
    # A learning rate that blows the weights up (optim.lr=nan is refused by validation).
    t = Trainer(_config(tiny, tmp_path, **{"optim.lr": 1e9, "optim.clip_norm": 0.0,
                                            "train.max_steps": 4}))
    with pytest.raises(NonFiniteError, match=r"step [1-4]: loss"):
        t.train()
    t.close()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]


def test_bad_row_names_file_row_and_field(tiny, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = tiny["pairs"].read_text().splitlines()
    row = json.loads(rows[2])
    row["chosen"] = ""
    rows[2] = json.dumps(row)
    bad.write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 3: field 'chosen'"):
        Trainer(_config(tiny, tmp_path / "w", **{"data.train": str(bad)}))
    t = Trainer(_config(tiny, tmp_path / "w2", **{"data.train": str(bad), "data.on_error": "skip",
                                                  "train.max_steps": 1}))
    assert len(t.data.train_loader.examples) == 15
    t.close()


def test_unknown_config_key_is_named():
    c = base_config()
    c.lock()
    with pytest.raises(AttributeError, match="optim.lrr|lrr"):
        c.optim.lrr = 1.0


def test_incompatible_options_are_explained(tiny, tmp_path):
    with pytest.raises(ValueError, match="label_smoothing"):
        Trainer(_config(tiny, tmp_path, **{"loss.loss_type": "ipo", "loss.label_smoothing": 0.1}))
    with pytest.raises(ValueError, match="weights.source='dataset'"):
        Trainer(_config(tiny, tmp_path, **{"loss.a_tok": 1.0}))


def test_export_cli_writes_latest_checkpoint(tiny, tmp_path):
    from musc_jax.export import export_checkpoint
    c = _config(tiny, tmp_path, **{"train.max_steps": 2, "export.enabled": False})
    t = Trainer(c)
    t.train()
    expected = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t.params)}
    t.close()
    out = export_checkpoint(c, tmp_path / "exported")
    from musc_jax.models import from_pretrained
    from flax import nnx
    again = nnx.state(from_pretrained(out))
    got = {k: np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(again)}
    assert expected.keys() == got.keys()
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_cli_runs_with_overrides_and_names_unknown_keys(tiny, tmp_path):
    import subprocess
    import sys
    base = [sys.executable, "-m", "musc_jax.train", "--config", "configs/dpo.py",
            f"--config.model.path={tiny['model']}", f"--config.data.train={tiny['pairs']}",
            f"--config.workdir={tmp_path}", "--config.loss.a_tok=0", "--config.train.max_steps=2",
            "--config.train.batch_size=4", "--config.data.max_length=128",
            "--config.data.max_prompt_length=64"]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert (tmp_path / "export" / "config.json").exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    bad = subprocess.run(base + ["--config.optim.lrr=1"], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "lrr" in bad.stderr


EVAL_WITH_ACCUM = r"""
import json, pathlib
import numpy as np
from musc_jax.config import base_config
from musc_jax.trainer import Trainer

model, pairs, root = map(pathlib.Path, PATHS)
c = base_config()
c.model.path, c.data.train, c.data.eval, c.workdir = str(model), str(pairs), str(pairs), str(root)
c.data.max_length, c.data.max_prompt_length = 128, 64
c.train.batch_size, c.optim.grad_accum, c.loss.a_tok = 4, 2, 0.0
c.mesh.data, c.mesh.fsdp = 2, 1
t = Trainer(c)
sums, n = {}, 0
for batch in t.data.eval_batches():  # [B, T], rows over the 2 devices; no microbatch axis
    m = t._eval_step(t.params, batch, t.ref_params)
    sums = {k: sums.get(k, 0.0) + float(v) for k, v in m.items()}
    n += 1
t.close()
print(json.dumps({k: v / n for k, v in sums.items()}))
"""


def test_eval_step_with_grad_accum_on_a_mesh(tiny, tmp_path):
    # Eval batches are [B, T] even when training batches are [A, B/A, T]: the compiled eval step
    # must take rows on axis 0 (it used to expect the microbatch layout and refused the batch).
    from subproc import run_python
    paths = [str(tiny["model"]), str(tiny["pairs"]), str(tmp_path / "w")]
    out = run_python(EVAL_WITH_ACCUM.replace("PATHS", repr(paths)), devices=2)
    means = json.loads(out.strip().splitlines()[-1])
    assert abs(means["loss"] - np.log(2)) < 1e-5  # policy == reference before any step
    assert abs(means["rewards/margins"]) < 1e-6


def test_logits_windows_train_exactly_like_the_full_projection(tiny, tmp_path):
    """data.logits_windows > 1 (the LM head skips prompt-only positions) trains the same model
    as 1 (every position), with one compiled step per window used."""
    runs = {}
    for parts in (1, 8):
        t = Trainer(_config(tiny, tmp_path / str(parts), **{
            "data.logits_windows": parts, "data.max_buckets": 1, "train.max_steps": 4,
            "checkpoint.every": 0}))
        t.train()
        windows, traces = set(t._train_steps), t.trace_count
        params = jax.device_get(t.params)
        t.close()
        lines = [json.loads(x) for x in (tmp_path / str(parts) / "metrics.jsonl").read_text().splitlines()]
        runs[parts] = ([x["loss"] for x in lines if x["split"] == "train"], params, windows, traces)
    (loss1, p1, w1, n1), (loss8, p8, w8, n8) = runs[1], runs[8]
    assert w1 == {None} and n1 == 1
    assert any(w is not None for w in w8) and n8 == len(w8)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
