"""MuSC on Llama-3-8B(-Instruct): sequence DPO + token-weighted term (a_seq = 1, a_tok = 1).

    python -m musc_jax.train --config configs/llama3_8b_musc.py            # TPU v5p-64 (default)
    python -m musc_jax.train --config configs/llama3_8b_musc.py:h100x8     # one 8xH100 node
    # any key can still be overridden after the preset, e.g. --config.train.batch_size=128

Check memory first (no accelerator needed): python -m musc_jax.plan --config <the same>.

Weights are not shipped. Set the HF directory of the model (config.json + safetensors) with
`--config.model.path=/path` or the MUSC_MODEL_PATH environment variable, and the pairs dataset
(built with token weights by musc_jax.pairs) with `--config.data.train=/path` or MUSC_TRAIN_DATA.
Left empty, the trainer stops with "config model.path is empty". `model.preset` only tells the
planner (python -m musc_jax.plan) the model's shape while no config.json is at hand.

Hardware presets (the part after ':' is passed to get_config; configs are locked after loading,
so a preset cannot be a `--config.` key):

    v5p64   TPU v5p-64 slice: 64 TensorCores = 32 chips (JAX devices), 8 hosts, 95 GiB HBM each.
            mesh data=1 fsdp=32 tensor=1; 64 pairs per step = 2 pairs (4 sequences) per chip.
    h100x8  one node with 8 H100 80GB: mesh data=1 fsdp=8 tensor=1; 64 pairs per step in
            4 accumulated microbatches of 16 = 2 pairs per GPU.

Both presets train the same recipe (global batch 64 pairs, same per-device load), so switching
hardware does not change the optimisation. Settings and why:

* parameters float32, compute bfloat16: at DPO learning rates (5e-7) an update is ~1e-5 of a
  weight, below bfloat16's resolution (2^-8): bfloat16 parameters would silently not train.
  AdamW moments follow the parameters (float32).
* model.remat=True: without it every layer keeps its [rows, heads, T, T] attention matrices for
  the backward pass (about 4 GiB per layer at 4 x 2048 tokens), which fits on neither machine.
* reference.mode="precompute": reference log-probs are computed once before training (cached
  under <workdir>/ref_cache) instead of holding a second copy of the weights and running a
  second forward pass every step.
* data.max_length=2048 (prompt at most 1024): IFEval/FollowBench prompts are short; responses
  longer than the rest of the budget are an error (data.truncation="error") so nothing is cut
  silently; set "skip" to drop and count them.
"""

from __future__ import annotations

import os

from ml_collections import ConfigDict

from musc_jax.config import base_config
from musc_jax.losses import LossConfig

HARDWARE = {
    # name: (mesh, grad_accum, device memory GiB for the planner, devices, TPU topology for
    # `python -m musc_jax.plan --config.plan.aot=tpu`, "" where the hardware is no TPU)
    "v5p64": (dict(data=1, fsdp=32, tensor=1), 1, 95.0, 32, "v5p:2x4x4"),
    "h100x8": (dict(data=1, fsdp=8, tensor=1), 4, 80.0, 8, ""),
}
RECIPES = ("musc", "ecd", "spar")
GLOBAL_BATCH = 64  # pairs per optimizer step


def scale_out_config(model: str, recipe: str, hardware: str = "v5p64") -> ConfigDict:
    """A real-model preference run: `model` a ModelConfig preset name (llama3_8b, qwen2_7b),
    `recipe` musc | ecd | spar (its loss preset), `hardware` a key of HARDWARE."""
    if hardware not in HARDWARE:
        raise ValueError(f"unknown hardware preset {hardware!r}; choose one of {', '.join(HARDWARE)} "
                         f"(e.g. --config configs/{model}_{recipe}.py:h100x8)")
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    mesh, accum, memory, devices, topology = HARDWARE[hardware]
    c = base_config()
    c.workdir = f"runs/{model}_{recipe}_{hardware}"
    c.model.path = os.environ.get("MUSC_MODEL_PATH", "")
    c.model.param_dtype = "float32"
    c.model.compute_dtype = "bfloat16"
    c.model.remat = True
    c.model.scan_layers = True  # one layer compiled; the TPU AOT compile (docs/aot.md) measures it
    with c.unlocked():
        c.model.preset = model  # shape for musc_jax.plan when model.path has no config.json
    c.plan.hardware, c.plan.device_memory_gib, c.plan.devices = hardware, memory, devices
    c.plan.topology = topology
    c.data.train = os.environ.get("MUSC_TRAIN_DATA", "")
    c.data.max_length = 2048
    c.data.max_prompt_length = 1024
    c.data.truncation = "error"
    c.data.bucket = 128
    lc = LossConfig.preset(recipe)
    c.loss.beta, c.loss.a_seq, c.loss.a_tok, c.loss.sft_weight = lc.beta, lc.a_seq, lc.a_tok, lc.sft_weight
    c.reference.mode = "precompute"
    c.optim.lr = 5e-7
    c.optim.warmup_steps = 20
    c.optim.schedule = "cosine"
    c.optim.grad_accum = accum
    c.train.batch_size = GLOBAL_BATCH
    c.train.epochs = 1
    c.train.log_every = 10
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
    c.checkpoint.every = 200
    c.export.dtype = "bfloat16"
    return c


def get_config(hardware: str = "v5p64") -> ConfigDict:
    return scale_out_config("llama3_8b", "musc", hardware)
