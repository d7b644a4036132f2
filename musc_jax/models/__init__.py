"""Flax nnx ports of the Llama family and HF checkpoint conversion."""

from musc_jax.models.config import PRESETS, SUPPORTED_MODEL_TYPES, ConfigError, ModelConfig
from musc_jax.models.hf import (CheckpointError, from_pretrained, init_model, load_tokenizer,
                                save_pretrained)
from musc_jax.models.llama import DecoderLM, KVCache

__all__ = [
    "PRESETS", "SUPPORTED_MODEL_TYPES", "CheckpointError", "ConfigError", "DecoderLM", "KVCache",
    "ModelConfig", "from_pretrained", "init_model", "load_tokenizer", "save_pretrained",
]
