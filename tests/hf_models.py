"""Tiny random Hugging Face models of each supported family, saved locally (no hub access)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "llama3": (transformers.LlamaConfig, dict(
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})),
    "mistral": (transformers.MistralConfig, dict(sliding_window=5, head_dim=16)),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=1)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32)),
}


def make_hf_model(family: str, out_dir: Path, seed: int = 0, dtype=torch.float32, **overrides):
    """Build a random tiny HF model of `family`, save it to `out_dir`, return the torch model."""
    cls, extra = FAMILIES[family]
    cfg = cls(**{**BASE, **extra, **overrides})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    # Random (not zero/one) norms and biases so that every parameter's mapping is exercised.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir)
    return model


def sharp_hf_and_ours(family: str, out_dir: Path, **overrides):
    """A tiny HF model of `family` with its LM head scaled 8x (sharp logits: no near-ties for a
    greedy argmax to flip on between frameworks), saved to `out_dir`, and ours loaded from it.
    Returns (hf torch model, our model)."""
    from musc_jax.models import from_pretrained

    hf = make_hf_model(family, out_dir, **overrides)
    with torch.no_grad():
        hf.lm_head.weight.mul_(8.0)
    hf.save_pretrained(out_dir)
    return hf, from_pretrained(out_dir)
