"""Model configuration for the Llama-family decoder, with named presets and HF config conversion."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from musc_jax.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# HF config fields we derive ourselves; everything else is kept verbatim in `extra` so that a
# save round trip preserves token ids, generation defaults and the like.
_DERIVED_HF_KEYS = {
    "model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings",
    "tie_word_embeddings", "attention_bias", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types", "hidden_act", "mlp_bias", "torch_dtype", "dtype",
    "transformers_version", "attention_dropout", "pretraining_tp", "use_cache", "initializer_range",
}

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


class ConfigError(UserError):
    """A model config that we cannot build a model from (the message names the file and field)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and switches of one decoder of the Llama family.

    `sliding_layers[i]` says whether layer i uses the sliding window (Mistral: all layers when
    `sliding_window` is set; Qwen2/3: the layers the HF config marks). `rope_scaling` is a sorted
    tuple of (key, value) pairs so that the config stays hashable (it is static under jit).
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    model_type: str = "llama"
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        rope_type = self.rope_dict.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope scaling {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_layers:
            raise ConfigError("sliding_layers must have one entry per layer")

    @property
    def rope_dict(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    @property
    def extra_dict(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.extra}

    def layer_window(self, layer: int) -> int | None:
        """The sliding-window size of `layer`, or None for full attention."""
        if self.sliding_window is None:
            return None
        if self.sliding_layers is None or self.sliding_layers[layer]:
            return self.sliding_window
        return None

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        e, h, kv, d, m, v = (self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim,
                             self.intermediate_size, self.vocab_size)
        attn = e * h * d + 2 * e * kv * d + h * d * e
        if self.attention_bias:
            attn += h * d + 2 * kv * d
        if self.qk_norm:
            attn += 2 * d
        layer = attn + 3 * e * m + 2 * e
        total = self.num_layers * layer + v * e + e
        if not self.tie_word_embeddings:
            total += e * v
        return total

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"model preset {name!r} (model.preset / --model_preset) is unknown; "
                              f"choose one of {', '.join(sorted(PRESETS))}")
        return dataclasses.replace(PRESETS[name], **overrides)


def _rope_tuple(rope: Mapping[str, Any] | None) -> tuple[tuple[str, Any], ...] | None:
    if not rope:
        return None
    rope = {k: v for k, v in rope.items() if k not in ("rope_theta", "type") and v is not None}
    if "rope_type" not in rope and "type" in (rope or {}):
        rope["rope_type"] = rope.pop("type")
    if rope.get("rope_type", "default") == "default" and len(rope) <= 1:
        return None
    return tuple(sorted(rope.items()))


def config_from_hf(d: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
    """Build a ModelConfig from an HF `config.json` dict; errors name the field and the file."""
    model_type = d.get("model_type")
    if model_type is None:
        raise ConfigError(f"{source}: missing field 'model_type'")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(
            f"{source}: unsupported model_type {model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads"):
        if not isinstance(d.get(key), int):
            raise ConfigError(f"{source}: field {key!r} must be an integer, found {d.get(key)!r}")
    if d.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: hidden_act {d.get('hidden_act')!r} is not supported (only 'silu')")
    if d.get("mlp_bias"):
        raise ConfigError(f"{source}: mlp_bias=true is not supported")

    heads = d["num_attention_heads"]
    head_dim = d.get("head_dim") or d["hidden_size"] // heads
    # transformers 5 writes `rope_parameters` (theta inside); older files use rope_theta/rope_scaling.
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope = dict(rope)
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    theta = rope.get("rope_theta") or d.get("rope_theta") or 10000.0

    n_layers = d["num_hidden_layers"]
    window = d.get("sliding_window")
    sliding_layers = None
    if model_type in ("qwen2", "qwen3"):
        layer_types = d.get("layer_types")
        if layer_types:
            sliding_layers = tuple(t == "sliding_attention" for t in layer_types)
        elif d.get("use_sliding_window"):
            first_full = d.get("max_window_layers", n_layers)
            sliding_layers = tuple(i >= first_full for i in range(n_layers))
        if not d.get("use_sliding_window") and not (sliding_layers and any(sliding_layers)):
            window, sliding_layers = None, None
        elif sliding_layers is not None and not any(sliding_layers):
            window, sliding_layers = None, None
    elif model_type == "mistral":
        sliding_layers = None
    else:
        window = None

    attention_bias = bool(d.get("attention_bias", model_type == "qwen2"))
    if model_type == "qwen2":
        attention_bias = True  # Qwen2 always has q/k/v biases (and none on o_proj)
    extra = tuple(sorted((k, json.dumps(v)) for k, v in d.items() if k not in _DERIVED_HF_KEYS))
    fields = dict(
        vocab_size=d["vocab_size"],
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_layers=n_layers,
        num_heads=heads,
        num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        model_type=model_type,
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        rope_scaling=_rope_tuple(rope),
        max_position_embeddings=d.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        attention_bias=attention_bias,
        qk_norm=model_type == "qwen3",
        sliding_window=window,
        sliding_layers=sliding_layers,
        extra=extra,
    )
    try:
        return ModelConfig(**fields)
    except ConfigError as e:  # a shape the model cannot take: name the file it came from
        raise ConfigError(f"{source}: {e}") from None


def config_to_hf(cfg: ModelConfig, dtype: str = "float32") -> dict[str, Any]:
    """The HF `config.json` dict for `cfg` (loads with transformers' AutoConfig)."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    rope.update(cfg.rope_dict)
    d: dict[str, Any] = dict(cfg.extra_dict)
    d.update(
        model_type=cfg.model_type,
        architectures=[_ARCHITECTURES[cfg.model_type]],
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        hidden_act="silu",
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        rope_parameters=rope,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        dtype=dtype,
    )
    if cfg.model_type in ("llama", "qwen3"):
        d["attention_bias"] = cfg.attention_bias
    if cfg.model_type == "llama":
        d["mlp_bias"] = False
    if cfg.model_type == "mistral":
        d["sliding_window"] = cfg.sliding_window
    if cfg.model_type in ("qwen2", "qwen3"):
        d["use_sliding_window"] = cfg.sliding_window is not None
        d["sliding_window"] = cfg.sliding_window
        if cfg.sliding_window is not None:
            flags = cfg.sliding_layers or (True,) * cfg.num_layers
        else:
            flags = (False,) * cfg.num_layers
        d["layer_types"] = ["sliding_attention" if f else "full_attention" for f in flags]
        d["max_window_layers"] = next((i for i, f in enumerate(flags) if f), cfg.num_layers)
    return d


PRESETS: dict[str, ModelConfig] = {
    # A few-layer model for unit tests.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=16),
    # The 32M-parameter benchmark model of DESIGN section 9.
    "bench_32m": ModelConfig(vocab_size=8192, hidden_size=512, intermediate_size=1408,
                             num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64),
    # Shapes of the public checkpoints (weights come from their HF directories).
    "llama3_8b": ModelConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                             num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128,
                             rope_theta=500000.0, max_position_embeddings=8192),
    "qwen2_7b": ModelConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                            num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128,
                            model_type="qwen2", attention_bias=True, rms_norm_eps=1e-6,
                            rope_theta=1000000.0, max_position_embeddings=32768),
}
