"""The run configuration: every key with its default, validation, and CLI loading.

Config files under `configs/` start from `base_config()` and change what they need; the result is
locked, so a misspelt key (in a file or on the command line) is an error that names it.
"""

from __future__ import annotations

from typing import Sequence

import ml_collections
from ml_collections import ConfigDict

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
        sort_window=0,      # > 0: sort each window of this many batches by length (less padding)
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
    c.checkpoint = ConfigDict(dict(every=0, keep=2, resume=True))  # every=0: only at the end
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


def _choice(c: ConfigDict, key: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"config {key}={value!r}: choose one of {', '.join(allowed)}")


def validate(c: ConfigDict) -> None:
    """Reject incompatible or impossible settings with a message saying what to change."""
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
    if not c.model.path:
        raise ValueError("config model.path is empty: set it to an HF model directory")
    if not c.data.train:
        raise ValueError("config data.train is empty: set it to a pairs dataset (Arrow dir or JSONL)")
    if c.loss.loss_type != "sigmoid" and c.loss.label_smoothing:
        raise ValueError(f"loss.label_smoothing={c.loss.label_smoothing} only applies to "
                         f"loss_type='sigmoid', not {c.loss.loss_type!r}")
    if c.objective == "preference":
        loss_config(c)  # its own checks: beta > 0, coefficients >= 0, not all zero
    if c.train.batch_size % c.optim.grad_accum:
        raise ValueError(f"train.batch_size={c.train.batch_size} is not divisible by "
                         f"optim.grad_accum={c.optim.grad_accum}")
    if c.data.max_prompt_length >= c.data.max_length:
        raise ValueError(f"data.max_prompt_length={c.data.max_prompt_length} must be below "
                         f"data.max_length={c.data.max_length}")
    if c.data.bucket <= 0:
        raise ValueError("data.bucket must be positive")
    if c.weights.source == "dynamic" and c.loss.a_tok == 0:
        raise ValueError("weights.source='dynamic' computes token weights, but loss.a_tok=0 never "
                         "uses them: set loss.a_tok > 0 or weights.source='uniform'")


def loss_config(c: ConfigDict) -> LossConfig:
    return LossConfig(beta=c.loss.beta, loss_type=c.loss.loss_type,
                      label_smoothing=c.loss.label_smoothing, a_seq=c.loss.a_seq,
                      a_tok=c.loss.a_tok, sft_weight=c.loss.sft_weight)


def load_config_file(path: str, overrides: Sequence[str] = ()) -> ConfigDict:
    """Load `path` (a .py file with get_config()) and apply `--config.a.b=value` style overrides.

    Used by notebooks and tests; the CLIs get the same behaviour from absl's config flags.
    """
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
