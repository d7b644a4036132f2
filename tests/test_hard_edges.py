"""Bad input gets one clear message, nothing wrong is saved, a changed config is never reused
(issue 11). docs/results/hard_edges.md (scripts/hard_edges_table.py) shows the messages."""

import ast
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from musc_jax import config as config_lib
from musc_jax.config import base_config, load_config_file
from musc_jax.data.constraints import REGISTRY
from musc_jax.data.pairs_io import PairsFormatError, read_pairs
from musc_jax.errors import MissingFileError, UserError
from musc_jax.eval import ARG_TYPES, EvalDataError, load_eval_items
from musc_jax.metrics import NonFiniteError, drop_steps_after
from musc_jax.models.safetensors_io import SafetensorsError, TensorIndex, write_safetensors
from musc_jax.trainer import Trainer
from subproc import REPO
from trainer_fixtures import model_dir, pairs_file

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}


def cli(*args, env=None):
    """Run `python -m <args>` from the repo root; (returncode, stderr)."""
    p = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300,
                       cwd=REPO, env={**ENV, **(env or {})})
    return p.returncode, p.stderr


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard_edges")
    return {"model": model_dir(root / "model"), "pairs": pairs_file(root / "pairs.jsonl", 8)}


def _config(tiny, workdir, **changes):
    c = base_config()
    c.model.path, c.data.train, c.workdir = str(tiny["model"]), str(tiny["pairs"]), str(workdir)
    c.data.max_length, c.data.max_prompt_length, c.data.bucket = 128, 64, 128
    c.train.batch_size, c.train.max_steps = 4, 2
    c.optim.lr, c.loss.a_tok = 1e-3, 0.0
    c.export.enabled = False
    for key, value in changes.items():
        section, leaf = key.split(".") if "." in key else (None, key)
        (c[section] if section else c)[leaf] = value
    return c


# ---- config: keys, files, values (no model needed) ---------------------------------------------

def test_unknown_key_names_it_and_the_nearest_keys():
    with pytest.raises(UserError, match=r"unknown config key 'optim.lrr'; nearest valid keys: optim.lr"):
        load_config_file("configs/dpo.py", ["--config.optim.lrr=1"])
    with pytest.raises(UserError, match=r"'otpim.lr'.*optim.lr"):
        load_config_file("configs/dpo.py", ["--config.otpim.lr=1"])
    msg = config_lib.unknown_key_message(base_config(), "bogus_key")
    assert re.search(r"keys of the config: checkpoint, .*data, .*optim", msg), msg
    assert config_lib.unknown_key_message(base_config(), "optim.lr") is None


def test_typo_in_a_config_file_is_named(tmp_path):
    """A config file can add keys before the flag locks the config: a key that is not one of
    base_config's is refused by validation, named with the nearest valid key."""
    c = base_config()
    c.optim.lrr = 1e-4            # what `c.optim.lrr = ...` in a config file does
    with pytest.raises(UserError, match=r"optim\.lrr.*optim\.lr.*config file"):
        config_lib.check_known_keys(c)
    c = base_config()
    c.pipeline = {"recipe": "musc"}   # sections of their own (pipeline, eval, build) are allowed
    config_lib.check_known_keys(c)


def test_missing_config_file_and_bad_value():
    with pytest.raises(UserError, match=r"config file 'nope.py' not found"):
        load_config_file("nope.py")
    with pytest.raises(UserError, match=r"optim.lr=abc: could not convert"):
        load_config_file("configs/dpo.py", ["--config.optim.lr=abc"])


@pytest.mark.parametrize("key,value,match", [
    ("optim.lr", -1.0, "optim.lr=-1.0: must be a finite"),
    ("optim.lr", float("nan"), "optim.lr=nan"),
    ("train.batch_size", 0, "train.batch_size=0: must be >= 1"),
    ("train.epochs", -1, "train.epochs=-1"),
    ("checkpoint.keep", 0, "checkpoint.keep=0"),
    ("optim.b2", 1.0, r"optim.b2=1.0: must be in \[0, 1\)"),
    ("model.param_dtype", "fp32", "model.param_dtype='fp32': choose one of"),
    ("data.bucket", 0, "data.bucket=0"),
    ("mesh.fsdp", 0, "mesh.fsdp=0"),
    ("loss.beta", 0.0, "config loss: .*beta"),
])
def test_bad_values_are_named(key, value, match):
    c = base_config()
    c.model.path, c.data.train = "m", "d"
    section, leaf = key.split(".")
    c[section][leaf] = value
    with pytest.raises(UserError, match=match):
        config_lib.validate(c)


def test_missing_paths_and_unwritable_workdir(tmp_path):
    c = base_config()
    c.model.path, c.data.train = str(tmp_path / "no_model"), str(tmp_path / "no.jsonl")
    with pytest.raises(MissingFileError, match=r"model.path=.*no_model.*no such directory"):
        config_lib.check_paths(c)
    c.model.path = str(tmp_path)
    with pytest.raises(MissingFileError, match="no config.json"):
        config_lib.check_paths(c)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingFileError, match=r"data.train=.*no.jsonl"):
        config_lib.check_paths(c)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # a directory under a file cannot be made, even by root
    with pytest.raises(UserError, match=r"workdir=.*a_file/run.*not writable"):
        config_lib.check_writable(blocker / "run")


def test_training_fingerprint_diff():
    a, b = base_config(), base_config()
    b.loss.beta, b.train.log_every, b.checkpoint.every = 0.5, 7, 3
    diff = config_lib.fingerprint_diff(config_lib.training_fingerprint(a),
                                       config_lib.training_fingerprint(b))
    assert diff == [f"loss.beta: {a.loss.beta!r} -> 0.5"]  # log_every, checkpoint.*: not training


# ---- data files ----------------------------------------------------------------------------------

def test_identical_chosen_rejected_is_an_error_or_a_counted_skip(tmp_path):
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "same", "rejected": "same"},
            {"prompt": "p", "chosen": "same", "rejected": "same", "rejected_prompt": "another p"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PairsFormatError, match=r"pairs.jsonl: line 2: field 'rejected': equals 'chosen'"):
        read_pairs(path)
    data = read_pairs(path, on_error="skip")
    assert len(data) == 2 and data.skipped == {"rejected: identical": 1}  # x' differs: kept


def test_truncated_safetensors_names_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    write_safetensors(path, {"w": np.ones((64, 64), np.float32)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SafetensorsError, match=rf"{path}: truncated: tensor 'w' ends at byte \d+ but "
                                               r"the file has \d+ bytes"):
        TensorIndex([path])
    path.write_bytes(b"\xff" * 8 + b"{}")
    with pytest.raises(SafetensorsError, match=rf"{path}: header of \d+ bytes runs past the end"):
        TensorIndex([path])


@pytest.mark.parametrize("line,field", [
    ({"prompt": "p", "constraints": [{"id": "length_constraints:number_words",
                                      "kwargs": {"num_words": "many", "relation": "at least"}}]},
     r"kwargs.num_words must be a int, got 'many'"),
    ({"prompt": "p", "constraints": [{"id": "keywords:existence", "kwargs": {"keywords": "sun"}}]},
     r"kwargs.keywords must be a list of strings"),
    ({"prompt": "p", "constraints": [{"id": "punctuation:no_comma", "kwargs": {"n": 1}}]},
     r"unknown argument 'n'"),
    ({"prompt": "p", "instruction_id_list": ["detectable_format:number_bullet_lists"],
      "kwargs": [{"num_bullets": True}]}, r"num_bullets must be a int"),
])
def test_eval_kwargs_types_checked_at_load(tmp_path, line, field):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"prompt": "ok", "constraints": []}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(EvalDataError, match=rf"{path}: line 2: field '(constraints|instruction_id_list)\[0\]': .*{field}"):
        load_eval_items(path)


def test_every_constraint_argument_has_a_type():
    names = {a for t in REGISTRY.values() for a in t.arg_names}
    assert names <= set(ARG_TYPES), f"add {sorted(names - set(ARG_TYPES))} to musc_jax.eval.ARG_TYPES"


def test_metrics_of_replayed_steps_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "split": "train"}) + "\n" for s in (1, 2, 3, 4))
                    + '{"step": 5, "spl')  # torn by a kill
    assert drop_steps_after(path, 2) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


# ---- the trainer ---------------------------------------------------------------------------------

def test_fewer_rows_than_one_batch(tiny, tmp_path):
    with pytest.raises(UserError, match=r"pairs.jsonl: 8 usable rows cannot fill one batch of "
                                        r"train.batch_size=16"):
        Trainer(_config(tiny, tmp_path, **{"train.batch_size": 16}))


def test_unwritable_workdir_fails_before_the_model_loads(tiny, tmp_path, monkeypatch):
    import musc_jax.trainer as trainer_mod
    monkeypatch.setattr(trainer_mod, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="not writable"):
        Trainer(_config(tiny, tmp_path / "f" / "w"))


def test_final_update_is_checked_nothing_non_finite_saved(tiny, tmp_path):
    # A 1-step run: its only loss is computed before the update (finite, at the initial weights);
    # lr=1e9 blows the weights up in that last update, which used to be saved and exported.
    t = Trainer(_config(tiny, tmp_path, **{"optim.lr": 1e9, "train.max_steps": 1}))
    with pytest.raises(NonFiniteError, match=r"step 1: loss after the update = nan"):
        t.train()
    t.close()
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    record = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert record["step"] == 1 and np.isfinite(record["loss"])


def test_resume_refuses_a_different_config_and_fresh_starts_over(tiny, tmp_path):
    t = Trainer(_config(tiny, tmp_path))
    t.train()
    t.close()
    meta = t.checkpointer.read_meta(2)
    assert meta["config"]["loss.beta"] == t.config.loss.beta
    beta = re.escape(repr(t.config.loss.beta))
    with pytest.raises(UserError, match=rf"trained with a different config.*loss.beta: {beta} -> 0.5; "
                                        r"optim.lr: 0.001 -> 0.002.*checkpoint.fresh=True"):
        Trainer(_config(tiny, tmp_path, **{"loss.beta": 0.5, "optim.lr": 2e-3}))
    with pytest.raises(UserError, match=r"checkpoint.resume=False"):
        Trainer(_config(tiny, tmp_path, **{"checkpoint.resume": False}))
    # Same config: resumes at the end, nothing retrained. Keys that do not change training may differ.
    again = Trainer(_config(tiny, tmp_path, **{"train.log_every": 5}))
    assert again.step == 2
    again.close()
    fresh = Trainer(_config(tiny, tmp_path, **{"loss.beta": 0.5, "checkpoint.fresh": True}))
    assert fresh.step == 0
    fresh.train()
    fresh.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    assert fresh.checkpointer.read_meta(2)["config"]["loss.beta"] == 0.5


def test_non_finite_parameters_are_named(tiny, tmp_path):
    t = Trainer(_config(tiny, tmp_path))
    batch = t.data.next_train_batch()
    t.check_updated_state(batch)  # finite: passes
    leaves, treedef = jax.tree.flatten(t.params)
    leaves[0] = leaves[0].at[0].set(jnp.inf)
    t.params = jax.tree.unflatten(treedef, leaves)
    with pytest.raises(NonFiniteError, match=r"step 0: parameters non-finite after the update \(first: "):
        t.check_updated_state(batch)
    t.close()


# ---- the command line: one message, no traceback, --debug shows it -------------------------------

def test_cli_unknown_key_one_line_no_traceback():
    rc, err = cli("musc_jax.train", "--config", "configs/dpo.py", "--config.bogus_key=1")
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("musc_jax.train: error: --config.bogus_key=1: "
                                                   "unknown config key 'bogus_key'")


def test_cli_missing_config_file_and_debug_switches():
    rc, err = cli("musc_jax.export", "--config", "nope.py")
    assert rc == 2 and "Traceback" not in err and "config file 'nope.py' not found" in err
    rc, err = cli("musc_jax.export", "--config", "nope.py", "--debug")
    assert rc != 0 and "Traceback" in err
    rc, err = cli("musc_jax.export", "--config", "nope.py", env={"MUSC_DEBUG": "1"})
    assert rc != 0 and "Traceback" in err


def test_cli_export_without_checkpoint(tiny, tmp_path):
    rc, err = cli("musc_jax.export", "--config", "configs/dpo.py", f"--config.model.path={tiny['model']}",
                  f"--config.workdir={tmp_path}", "--out", str(tmp_path / "out"))
    assert rc == 1 and "Traceback" not in err and "Exception in thread" not in err
    assert f"{tmp_path}/checkpoints: no checkpoints" in err
    assert not (tmp_path / "checkpoints").exists()


def test_cli_usage_lines_name_real_keys():
    # Read, not imported: each CLI module defines the absl --config flag when imported.
    for name in ("export", "train", "sft"):
        doc = ast.get_docstring(ast.parse((REPO / "musc_jax" / f"{name}.py").read_text()))
        for key in re.findall(r"--config\.([a-z_.]+[a-z_])", doc):
            if key != "a.b":
                assert config_lib.unknown_key_message(base_config(), key) is None, (name, key)
