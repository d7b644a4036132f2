"""The run configuration: every key with its default, validation, and CLI loading.

Config files under `configs/` start from `base_config()` and change what they need; the result is
locked, so a misspelt key (in a file or on the command line) is an error that names it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import ml_collections
from ml_collections import ConfigDict

from musc_jax.errors import MissingFileError, UserError
from musc_jax.losses import LOSS_TYPES, LossConfig
from musc_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from musc_jax.models.llama import REMAT_POLICIES
from musc_jax.optim import SCHEDULES

OBJECTIVES = ("preference", "sft")
REFERENCE_MODES = ("online", "precompute", "none")
WEIGHT_SOURCES = ("dataset", "dynamic", "uniform")
WEIGHT_KINDS = ("kl", "bikl", "prob_diff")
TRUNCATION = ("error", "skip", "truncate")
ON_ERROR = ("error", "skip")


def base_config() -> ConfigDict:
    """All keys a run understands, with defaults (a MuSC preference run)."""
    c = ConfigDict()
    c.workdir = "runs/default"
    # Compiled steps are kept here across runs and resumes ("" = off); see
    # train_step.enable_compilation_cache.
    c.compilation_cache = "~/.cache/musc_jax/jax"
    c.seed = 0
    c.objective = "preference"

    c.model = ConfigDict(dict(
        path="",            # HF directory (config.json + safetensors); tokenizer from the same dir
        tokenizer="",       # another directory for the tokenizer, if different
        param_dtype="float32",
        compute_dtype="",   # "" = same as param_dtype
        # full | dots_saveable | save_qkv_proj | none; true/false (older configs) = full/none
        remat=ml_collections.FieldReference(False, field_type=object),
        attention="auto",   # auto | xla | cudnn | splash | einsum (musc_jax.models.attention)
        scan_layers=False,  # stack the layers and lax.scan them (one layer compiled)
        preset="",          # a ModelConfig preset name: the planner's model when model.path has none
    ))
    # LoRA (musc_jax.models.lora): rank 0 = full fine-tuning. With rank > 0 only the adapters
    # train; the reference is the base model (adapter off), so it costs no second weight copy.
    c.model.lora = ConfigDict(dict(rank=0, alpha=16.0,
                                   targets="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"))
    c.data = ConfigDict(dict(
        train="",           # pairs dataset (Arrow dir, JSONL file or shard dir); SFT rows for objective=sft
        eval="",
        on_error="error",   # malformed rows: "error" names file/row/field; "skip" counts and logs them
        max_length=512,
        max_prompt_length=256,
        truncation="error",  # too-long rows: "error", "skip" (counted) or "truncate"
        bucket=64,          # sequence lengths are padded to multiples of this
        max_buckets=8,      # at most this many padded lengths, geometric (few compiled shapes); 0 = all
        sort_window=0,      # > 0: sort each window of this many batches by length (less padding)
        # n > 1: the LM head projects only the last k/n of a batch's positions, the smallest k
        # that holds every response (prompt positions cost no vocabulary FLOPs; same values),
        # at the price of up to n compiled steps per padded length. Pays off for long prompts
        # and long runs; 1 = every position, one step per length.
        logits_windows=1,
    ))
    lc = LossConfig.preset("musc")
    c.loss = ConfigDict(dict(beta=lc.beta, loss_type=lc.loss_type, label_smoothing=lc.label_smoothing,
                             a_seq=lc.a_seq, a_tok=lc.a_tok, sft_weight=lc.sft_weight))
    c.weights = ConfigDict(dict(
        source="dataset",   # "dataset" (static, stored with the pairs), "dynamic" (in the step), "uniform"
        kind="kl",          # contrast statistic for dynamic weights
        w_max=2.0,
    ))
    c.reference = ConfigDict(dict(
        mode="online",      # "online" (frozen copy), "precompute" (once, cached on disk), "none"
        cache_dir="",       # "" = <workdir>/ref_cache
    ))
    c.optim = ConfigDict(dict(
        lr=5e-6, warmup_steps=0, schedule="cosine", final_lr_ratio=0.0, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0, grad_accum=1,
    ))
    c.train = ConfigDict(dict(
        batch_size=8,       # global batch of pairs (or SFT rows) per optimizer step
        epochs=1,
        max_steps=-1,       # > 0 caps the run
        log_every=1,
        eval_every=0,       # 0 = evaluate only at the end (when data.eval is set)
        shuffle=True,
    ))
    c.mesh = ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # every=0: only at the end. resume: continue from the workdir's latest checkpoint (refused,
    # naming the keys, when it was made by a different training config). fresh: delete the
    # workdir's checkpoints, metrics and export first and start again from step 0.
    c.checkpoint = ConfigDict(dict(every=0, keep=2, resume=True, fresh=False))
    c.export = ConfigDict(dict(enabled=True, dtype=""))           # HF dir at <workdir>/export
    # python -m musc_jax.plan: the hardware a config targets; aot="tpu" compiles its steps for
    # `topology` with libtpu (musc_jax.aot).
    c.plan = ConfigDict(dict(hardware="", devices=0, device_memory_gib=0.0, topology="", aot=""))
    c.distributed = ConfigDict(dict(
        coordinator="",     # host:port; "" = auto-detect (TPU pod, SLURM) or single process
        num_processes=0,
        process_id=-1,
    ))
    return c


DTYPES = ("float32", "bfloat16", "float16")
# Keys that do not change what a run computes (only speed, memory, logging or where output
# goes): a resumed run may differ from its checkpoint in these. Every other key of the
# TRAINING_SECTIONS must match, or the resume is refused.
TRAINING_SECTIONS = ("objective", "seed", "model", "data", "loss", "weights", "reference",
                     "optim", "train")
# model.scan_layers is not among them: it changes the checkpoint's parameter tree (stacked).
NOT_TRAINING_KEYS = ("model.remat", "model.attention", "data.eval", "data.logits_windows",
                     "train.log_every", "train.eval_every", "reference.cache_dir")
PATH_KEYS = ("model.path", "model.tokenizer", "data.train")


def _choice(c: ConfigDict, key: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise UserError(f"config {key}={value!r}: choose one of {', '.join(map(repr, allowed))}")


def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise UserError(f"config {key}={value!r}: {need}")


def _check_numbers(c: ConfigDict) -> None:
    """Ranges of the numeric keys (types are enforced by the locked ConfigDict)."""
    o, t, d = c.optim, c.train, c.data
    _check(math.isfinite(o.lr) and o.lr >= 0, "optim.lr", o.lr, "must be a finite number >= 0")
    for key in ("warmup_steps", "weight_decay", "clip_norm"):
        v = o[key]
        _check(math.isfinite(v) and v >= 0, f"optim.{key}", v, "must be a finite number >= 0")
    for key in ("b1", "b2"):
        _check(0 <= o[key] < 1, f"optim.{key}", o[key], "must be in [0, 1)")
    _check(o.eps > 0, "optim.eps", o.eps, "must be > 0")
    _check(0 <= o.final_lr_ratio <= 1, "optim.final_lr_ratio", o.final_lr_ratio, "must be in [0, 1]")
    _check(o.grad_accum >= 1, "optim.grad_accum", o.grad_accum, "must be >= 1")
    _check(t.batch_size >= 1, "train.batch_size", t.batch_size, "must be >= 1")
    _check(t.epochs >= 0, "train.epochs", t.epochs, "must be >= 0")
    _check(t.epochs > 0 or t.max_steps > 0, "train.epochs", t.epochs,
           "is 0, so train.max_steps must be > 0 to train at all")
    _check(t.log_every >= 1, "train.log_every", t.log_every, "must be >= 1")
    _check(t.eval_every >= 0, "train.eval_every", t.eval_every, "must be >= 0 (0 = at the end)")
    _check(d.max_length >= 2, "data.max_length", d.max_length, "must be >= 2")
    _check(d.max_prompt_length >= 1, "data.max_prompt_length", d.max_prompt_length, "must be >= 1")
    _check(d.bucket >= 1, "data.bucket", d.bucket, "must be >= 1")
    _check(d.max_buckets >= 0, "data.max_buckets", d.max_buckets,
           "must be >= 0 (0 = every multiple of data.bucket, 1 = always pad to data.max_length)")
    _check(d.sort_window >= 0, "data.sort_window", d.sort_window, "must be >= 0")
    _check(d.logits_windows >= 1, "data.logits_windows", d.logits_windows,
           "must be >= 1 (1 = the LM head projects every position)")
    _check(c.checkpoint.every >= 0, "checkpoint.every", c.checkpoint.every, "must be >= 0 (0 = at the end)")
    _check(c.checkpoint.keep >= 1, "checkpoint.keep", c.checkpoint.keep, "must be >= 1")
    _check(c.weights.w_max > 0, "weights.w_max", c.weights.w_max, "must be > 0")
    for axis, size in c.mesh.items():
        _check(size == -1 or size >= 1, f"mesh.{axis}", size, "must be >= 1, or -1 for the rest")


def check_known_keys(c: ConfigDict) -> None:
    """A key that a config *file* added to one of base_config's sections is a typo: the flag
    locks the config only after get_config() returns, so the file could add it silently.
    Sections the base does not have (pipeline, eval, build, ...) belong to their own code."""
    base = flatten(to_dict(base_config()))
    for key in sorted(flatten(to_dict(c))):
        section = key.split(".")[0]
        if key not in base and any(k.startswith(section + ".") or k == section for k in base):
            raise UserError((unknown_key_message(base_config(), key) or key) +
                            " (set in the config file: fix the spelling there)")


def validate(c: ConfigDict) -> None:
    """Reject incompatible or impossible settings with a message saying what to change."""
    check_known_keys(c)
    _choice(c, "objective", c.objective, OBJECTIVES)
    _choice(c, "reference.mode", c.reference.mode, REFERENCE_MODES)
    _choice(c, "weights.source", c.weights.source, WEIGHT_SOURCES)
    _choice(c, "weights.kind", c.weights.kind, WEIGHT_KINDS)
    _choice(c, "data.truncation", c.data.truncation, TRUNCATION)
    _choice(c, "data.on_error", c.data.on_error, ON_ERROR)
    _choice(c, "loss.loss_type", c.loss.loss_type, LOSS_TYPES)
    _choice(c, "optim.schedule", c.optim.schedule, SCHEDULES)
    _choice(c, "model.attention", c.model.attention, ATTENTION_IMPLEMENTATIONS)
    if not isinstance(c.model.remat, bool):
        _choice(c, "model.remat", c.model.remat, REMAT_POLICIES)
    _choice(c, "model.param_dtype", c.model.param_dtype, DTYPES)
    _choice(c, "model.compute_dtype", c.model.compute_dtype, ("",) + DTYPES)
    _choice(c, "export.dtype", c.export.dtype, ("",) + DTYPES)
    if not c.model.path:
        raise UserError("config model.path is empty: set it to an HF model directory")
    if not c.data.train:
        raise UserError("config data.train is empty: set it to a pairs dataset (Arrow dir or JSONL)")
    _check_numbers(c)
    if c.loss.loss_type != "sigmoid" and c.loss.label_smoothing:
        raise UserError(f"loss.label_smoothing={c.loss.label_smoothing} only applies to "
                        f"loss_type='sigmoid', not {c.loss.loss_type!r}")
    if c.objective == "preference":
        try:
            loss_config(c)  # its own checks: beta > 0, coefficients >= 0, not all zero
        except ValueError as e:
            raise UserError(f"config loss: {e}") from None
    if c.train.batch_size % c.optim.grad_accum:
        raise UserError(f"train.batch_size={c.train.batch_size} is not divisible by "
                        f"optim.grad_accum={c.optim.grad_accum}")
    if c.data.max_prompt_length >= c.data.max_length:
        raise UserError(f"data.max_prompt_length={c.data.max_prompt_length} must be below "
                        f"data.max_length={c.data.max_length}")
    if c.weights.source == "dynamic" and c.loss.a_tok == 0:
        raise UserError("weights.source='dynamic' computes token weights, but loss.a_tok=0 never "
                        "uses them: set loss.a_tok > 0 or weights.source='uniform'")


def check_paths(c: ConfigDict) -> None:
    """The inputs a run reads exist (checked before the model loads)."""
    model = Path(c.model.path)
    if not model.is_dir():
        raise MissingFileError(f"config model.path={c.model.path!r}: no such directory; set it to "
                               "an HF model directory (config.json + safetensors)")
    if not (model / "config.json").is_file():
        raise MissingFileError(f"config model.path={c.model.path!r}: no config.json in it; is it an "
                               "HF model directory?")
    if c.model.tokenizer and not Path(c.model.tokenizer).is_dir():
        raise MissingFileError(f"config model.tokenizer={c.model.tokenizer!r}: no such directory")
    for key in ("data.train", "data.eval"):
        value = c.data[key.split(".")[1]]
        if value and not Path(value).exists():
            raise MissingFileError(f"config {key}={value!r}: no such file or directory")


def check_writable(directory: str | os.PathLike, key: str = "workdir") -> Path:
    """Create `directory` if needed and prove a file can be written there; a UserError otherwise."""
    path = Path(directory)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_test_"):
            pass
    except OSError as e:
        raise UserError(f"config {key}={str(directory)!r} is not writable ({e.strerror or e}); "
                        f"choose another directory with --config.{key}=...") from None
    return path


def training_fingerprint(c: ConfigDict) -> dict[str, Any]:
    """The flattened keys that decide what a run trains (paths made absolute): stored in every
    checkpoint so a resume can tell whether it continues the same run."""
    flat = flatten(to_dict(c))
    out = {}
    for key, value in flat.items():
        if key.split(".")[0] not in TRAINING_SECTIONS or key in NOT_TRAINING_KEYS:
            continue
        if key in PATH_KEYS and value:
            value = os.path.realpath(value)
        out[key] = value
    return out


def fingerprint_diff(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each training key that differs. A key only one side has (added to
    musc_jax since the checkpoint was written) is not compared."""
    return [f"{k}: {stored[k]!r} -> {current[k]!r}" for k in sorted(stored.keys() & current.keys())
            if stored[k] != current[k]]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def unknown_key_message(c: ConfigDict, dotted: str) -> str | None:
    """None if `dotted` names a key of `c`; else a message naming it and the nearest valid keys."""
    node, seen = c, []
    for part in dotted.split("."):
        if not isinstance(node, (ConfigDict, dict)):
            return (f"config key {'.'.join(seen)!r} is a value ({type(node).__name__}), not a "
                    f"section, so it has no key {part!r}")
        if part not in node:
            known = sorted(flatten(to_dict(c)) if isinstance(c, ConfigDict) else flatten(c))
            near = difflib.get_close_matches(dotted, known, n=3, cutoff=0.6)
            if not near:  # a misspelt section: compare the last part with every key's last part
                near = [k for k in known if difflib.get_close_matches(part, [k.split(".")[-1]], cutoff=0.75)][:3]
            if not near:
                near = [".".join(seen + [k]) for k in sorted(node.keys())][:12]
                return f"unknown config key {dotted!r}; keys of {'.'.join(seen) or 'the config'}: {', '.join(near)}"
            return f"unknown config key {dotted!r}; nearest valid keys: {', '.join(near)}"
        node = node[part]
        seen.append(part)
    return None


def config_from(cls, cfg: Any, name: str = ""):
    """`cfg` as dataclass `cls`: an instance passes through; a mapping (dict, ConfigDict) is
    converted. An unknown key or a value the dataclass rejects is a UserError naming it (and the
    config section `name`, e.g. "build.musc", when given)."""
    if isinstance(cfg, cls):
        return cfg
    if cfg is None:
        return cls()
    where = f"config {name}: " if name else ""
    items = dict(cfg.items())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
        raise UserError(f"{where}unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):  # ConfigDict gives lists for tuple fields
        if f.name in items and isinstance(items[f.name], list):
            items[f.name] = tuple(items[f.name])
    try:
        return cls(**items)
    except UserError:
        raise
    except (TypeError, ValueError) as e:   # the dataclass's own check of a value
        raise UserError(f"{where}{e}") from None


def loss_config(c: ConfigDict) -> LossConfig:
    return LossConfig(beta=c.loss.beta, loss_type=c.loss.loss_type,
                      label_smoothing=c.loss.label_smoothing, a_seq=c.loss.a_seq,
                      a_tok=c.loss.a_tok, sft_weight=c.loss.sft_weight)


def load_config_file(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Load `path` (a .py file with get_config()) and apply `--config.a.b=value` style overrides.

    Used by notebooks and tests; the CLIs get the same behaviour from absl's config flags. A
    missing file, an unknown key or a bad value raises a UserError saying which.
    """
    try:
        if not Path(path.split(":", 1)[0]).is_file():  # ml_collections defers this error
            raise FileNotFoundError(path)
        return read_config_file(path, overrides)
    except Exception as e:  # noqa: BLE001 - explained below, with the cause chained
        from musc_jax.cli import explain_flag_error
        raise UserError(explain_flag_error([f"--config={path}", *overrides], e)) from e


def read_config_file(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """`load_config_file` without the explanation: the raw absl / ml_collections exception."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    argv = ["prog", f"--config={path}", *overrides]
    # The override flags are read from `sys_argv` when the config flag is defined.
    config_flags.DEFINE_config_file("config", path, flag_values=fv, lock_config=True, sys_argv=argv)
    fv(argv)
    return fv.config


def to_dict(c: ConfigDict) -> dict:
    return ml_collections.ConfigDict(c).to_dict()


def config_module(config_file: str, sibling: str):
    """The config module `sibling` (a file beside `config_file`), so one config file can build on
    another's functions without configs/ being a package."""
    import importlib.util
    from pathlib import Path

    path = Path(config_file).with_name(sibling)
    spec = importlib.util.spec_from_file_location(f"musc_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
