"""Hugging Face directory <-> nnx model: config.json + safetensors, loaded lazily per tensor.

`HF_KEY_TABLE` style: `key_table(cfg)` lists, for every HF tensor name, our parameter path and the
layout change between HF's torch layout and ours. Loading builds the model abstractly (no weights
allocated), then reads one tensor at a time from a memory map, converts it to the requested dtype
and puts it straight into its target sharding, so no host ever holds a whole float32 copy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from musc_jax.models.config import ConfigError, ModelConfig, config_from_hf, config_to_hf
from musc_jax.models.llama import DecoderLM
from musc_jax.models.safetensors_io import TensorIndex, write_safetensors
from musc_jax.sharding import LOGICAL_RULES, state_shardings, variable_sharding

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Tensors that some HF checkpoints carry but that hold no learned weight.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """An HF directory whose weights do not match the model its config describes."""


@dataclass(frozen=True)
class Layout:
    """A layout change between an HF tensor and our parameter.

    to_ours / to_hf map arrays (numpy views, so memory maps stay lazy); hf_shape gives the HF
    shape for our parameter shape.
    """

    to_ours: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: Callable[[tuple[int, ...]], tuple[int, ...]]


SAME = Layout(lambda a, s: a, lambda a: a, lambda s: s)
# torch Linear weight [out, in] <-> our kernel [in, out]
LINEAR = Layout(lambda a, s: a.T, lambda a: a.T, lambda s: s[::-1])
# q/k/v weight [heads*head_dim, embed] <-> our kernel [embed, heads, head_dim]
IN_HEADS = Layout(lambda a, s: a.T.reshape(s), lambda a: a.reshape(a.shape[0], -1).T,
                  lambda s: (s[1] * s[2], s[0]))
# o weight [embed, heads*head_dim] <-> our kernel [heads, head_dim, embed]
OUT_HEADS = Layout(lambda a, s: a.T.reshape(s), lambda a: a.reshape(-1, a.shape[-1]).T,
                   lambda s: (s[2], s[0] * s[1]))
# q/k/v bias [heads*head_dim] <-> ours [heads, head_dim]
BIAS_HEADS = Layout(lambda a, s: a.reshape(s), lambda a: a.reshape(-1), lambda s: (s[0] * s[1],))


def key_table(cfg: ModelConfig) -> list[tuple[str, tuple[Any, ...], Layout]]:
    """(HF tensor name, our state path, layout) for every parameter of a model with `cfg`."""
    table: list[tuple[str, tuple[Any, ...], Layout]] = [("model.embed_tokens.weight", ("embed",), SAME)]
    for i in range(cfg.num_layers):
        hf, us = f"model.layers.{i}", ("layers", i)
        for p in ("q", "k", "v"):
            table.append((f"{hf}.self_attn.{p}_proj.weight", us + ("attn", f"{p}_proj"), IN_HEADS))
            if cfg.attention_bias:
                table.append((f"{hf}.self_attn.{p}_proj.bias", us + ("attn", f"{p}_bias"), BIAS_HEADS))
        table.append((f"{hf}.self_attn.o_proj.weight", us + ("attn", "o_proj"), OUT_HEADS))
        if cfg.qk_norm:
            table.append((f"{hf}.self_attn.q_norm.weight", us + ("attn", "q_norm", "scale"), SAME))
            table.append((f"{hf}.self_attn.k_norm.weight", us + ("attn", "k_norm", "scale"), SAME))
        for p in ("gate", "up", "down"):
            table.append((f"{hf}.mlp.{p}_proj.weight", us + ("mlp", f"{p}_proj"), LINEAR))
        table.append((f"{hf}.input_layernorm.weight", us + ("input_norm", "scale"), SAME))
        table.append((f"{hf}.post_attention_layernorm.weight", us + ("post_attn_norm", "scale"), SAME))
    table.append(("model.norm.weight", ("norm", "scale"), SAME))
    if not cfg.tie_word_embeddings:
        table.append(("lm_head.weight", ("lm_head",), LINEAR))
    return table


def read_config(path: Path) -> ModelConfig:
    """ModelConfig from `path/config.json`, with errors that name the file."""
    file = path / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no config.json; an HF model directory needs one")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: malformed JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: expected a JSON object")
    return config_from_hf(data, source=str(file))


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of an HF directory; pickled weights are refused."""
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{index}: malformed index ({e!r}); expected a 'weight_map'") from e
        return [path / f for f in sorted(set(weight_map.values()))]
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    pickled = [p.name for p in path.iterdir() if p.suffix in _PICKLED_SUFFIXES]
    if pickled:
        raise CheckpointError(
            f"{path}: only pickled weights ({', '.join(pickled)}); pickle files can run arbitrary "
            "code when loaded, so musc_jax refuses them. Convert them to safetensors first, e.g. "
            "transformers' AutoModelForCausalLM.from_pretrained(dir).save_pretrained(dir, "
            "safe_serialization=True), in an environment you trust.")
    raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} found")


def _abstract_model(cfg: ModelConfig, dtype, compute_dtype=None, remat: bool = False) -> DecoderLM:
    return nnx.eval_shape(lambda: DecoderLM(cfg, dtype=compute_dtype or dtype, param_dtype=dtype,
                                            rngs=nnx.Rngs(0), remat=remat))


def _names_list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:10])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def from_pretrained(path: str | Path, dtype=jnp.float32, mesh: Mesh | None = None,
                    rules=LOGICAL_RULES, compute_dtype=None, remat: bool = False) -> DecoderLM:
    """Load an HF Llama-family directory into a DecoderLM with parameters in `dtype`.

    With `mesh`, each parameter is created directly in the sharding that `rules` give it (each
    device reads only its own slice from disk). `compute_dtype` (default `dtype`) is the dtype of
    activations and matmuls; `remat` recomputes each layer's activations in the backward pass.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: model directory not found")
    cfg = read_config(path)
    files = weight_files(path)
    index = TensorIndex(files)
    model = _abstract_model(cfg, dtype, compute_dtype, remat)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    table = key_table(cfg)

    expected = {name for name, _, _ in table}
    available = {n for n in index.names() if not n.endswith(_IGNORED_SUFFIXES)}
    if cfg.tie_word_embeddings:
        available.discard("lm_head.weight")  # some tied checkpoints store the copy anyway
    missing, unexpected = expected - available, available - expected
    if missing:
        raise CheckpointError(f"{path}: missing tensors for {cfg.model_type} config: {_names_list(missing)}")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected tensors not used by a {cfg.model_type} model: "
                              f"{_names_list(unexpected)}")

    np_dtype = np.dtype(jnp.dtype(dtype))
    for name, our_path, layout in table:
        var = flat[our_path]
        shape = tuple(var.shape)
        want = layout.hf_shape(shape)
        found = index.shape(name)
        if tuple(found) != tuple(want):
            raise CheckpointError(f"{index.entries[name][0]}: tensor {name!r} has shape {tuple(found)}, "
                                  f"expected {tuple(want)} from config.json")
        view = layout.to_ours(index.get(name), shape)
        if mesh is None:
            value = jax.device_put(np.array(view, dtype=np_dtype, order="C"))
        else:
            sharding = variable_sharding(var, mesh, rules)
            value = jax.make_array_from_callback(
                shape, sharding, lambda idx, v=view: np.array(v[idx], dtype=np_dtype, order="C"))
        var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)
        del view
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _to_host(x: jax.Array) -> np.ndarray:
    """One parameter as a numpy array on this host (gathered across processes if needed)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = size.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * units[unit])
    return int(s)


def save_pretrained(model: DecoderLM, out_dir: str | Path, max_shard_size: int | str = "2GB",
                    dtype=None, tokenizer=None) -> Path:
    """Write `model` as an HF directory (config.json + safetensors, sharded above the limit).

    `dtype` converts the weights (default: their own dtype). Every process must call this when
    parameters span hosts; only process 0 writes. The tokenizer, if given, is saved beside.
    """
    out = Path(out_dir)
    cfg: ModelConfig = model.config
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    table = key_table(cfg)
    first = flat[table[0][1]]
    np_dtype = np.dtype(jnp.dtype(dtype or first.dtype))
    limit = _parse_size(max_shard_size)

    shards: list[list[tuple[str, tuple, Layout]]] = [[]]
    size = 0
    for entry in table:
        nbytes = math.prod(flat[entry[1]].shape) * np_dtype.itemsize
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes

    writer = jax.process_index() == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    names = ([WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        tensors = {}
        for name, our_path, layout in shard:
            arr = _to_host(flat[our_path][...]).astype(np_dtype)
            tensors[name] = np.ascontiguousarray(layout.to_hf(arr))
            weight_map[name] = fname
            total += tensors[name].nbytes
        if writer:
            write_safetensors(out / fname, tensors)
        del tensors
    if writer:
        if len(shards) > 1:
            (out / WEIGHTS_INDEX_NAME).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        hf_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[np_dtype.name]
        (out / "config.json").write_text(json.dumps(config_to_hf(cfg, hf_dtype), indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(out)
    return out


def load_tokenizer(path: str | Path, vocab_size: int | None = None):
    """The tokenizer (with its chat template) stored in an HF directory.

    With `vocab_size` (the model's), a tokenizer that can emit ids the model has no embedding for
    is refused here: inside the jitted model such ids would silently read NaN embeddings.
    """
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ConfigError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
            f"{vocab_size}; use the tokenizer the model was trained with (model.tokenizer) or "
            f"resize the model's embeddings")
    return tokenizer


def init_model(cfg: ModelConfig, seed: int = 0, dtype=jnp.float32, mesh: Mesh | None = None,
               rules=LOGICAL_RULES) -> DecoderLM:
    """A randomly initialised model, created directly in its sharding when `mesh` is given."""
    if mesh is None:
        return DecoderLM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(_abstract_model(cfg, dtype))

    def make():
        return nnx.state(DecoderLM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed)))

    state = jax.jit(make, out_shardings=state_shardings(state, mesh, rules))()
    return nnx.merge(graphdef, state)
