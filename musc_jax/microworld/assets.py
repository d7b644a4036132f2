"""Where the microworld's shipped assets live inside the package."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
BASE_MODEL = ASSETS / "base_model"      # HF dir: config.json, model.safetensors, tokenizer
EVAL_SET = ASSETS / "eval.jsonl"        # the fixed held-out instructions
WORLD_SEED = 0                          # the lexicon
EVAL_SEED = 20261122                    # the held-out instructions
EVAL_PER_LEVEL = 60


def base_model_dir() -> Path:
    if not (BASE_MODEL / "config.json").exists():
        raise FileNotFoundError(
            f"{BASE_MODEL}: the microworld base model is missing; rebuild it with "
            "python -m musc_jax.sft --config configs/microworld_sft.py")
    return BASE_MODEL
