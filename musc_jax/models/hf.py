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
from musc_jax.errors import MissingFileError, UserError
from musc_jax.models.safetensors_io import TensorIndex, write_safetensors
from musc_jax.multiprocess import barrier
from musc_jax.sharding import LOGICAL_RULES, state_shardings, variable_sharding

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Tensors that some HF checkpoints carry but that hold no learned weight.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(UserError):
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


def key_table(cfg: ModelConfig, scan_layers: bool = False
              ) -> list[tuple[str, tuple[Any, ...], Layout, int | None]]:
    """(HF tensor name, our state path, layout, layer) for every parameter of a model with `cfg`.

    With `scan_layers` the layers' parameters are stacked: every layer's tensor maps to the same
    path and `layer` is its index on the leading axis; otherwise `layer` is None.
    """
    table: list[tuple[str, tuple[Any, ...], Layout, int | None]] = []

    def add(name, path, layout, layer=None):
        table.append((name, path, layout, layer))

    add("model.embed_tokens.weight", ("embed",), SAME)
    for i in range(cfg.num_layers):
        hf, us, at = f"model.layers.{i}", ("layers",) if scan_layers else ("layers", i), i if scan_layers else None
        for p in ("q", "k", "v"):
            add(f"{hf}.self_attn.{p}_proj.weight", us + ("attn", f"{p}_proj"), IN_HEADS, at)
            if cfg.attention_bias:
                add(f"{hf}.self_attn.{p}_proj.bias", us + ("attn", f"{p}_bias"), BIAS_HEADS, at)
        add(f"{hf}.self_attn.o_proj.weight", us + ("attn", "o_proj"), OUT_HEADS, at)
        if cfg.qk_norm:
            add(f"{hf}.self_attn.q_norm.weight", us + ("attn", "q_norm", "scale"), SAME, at)
            add(f"{hf}.self_attn.k_norm.weight", us + ("attn", "k_norm", "scale"), SAME, at)
        for p in ("gate", "up", "down"):
            add(f"{hf}.mlp.{p}_proj.weight", us + ("mlp", f"{p}_proj"), LINEAR, at)
        add(f"{hf}.input_layernorm.weight", us + ("input_norm", "scale"), SAME, at)
        add(f"{hf}.post_attention_layernorm.weight", us + ("post_attn_norm", "scale"), SAME, at)
    add("model.norm.weight", ("norm", "scale"), SAME)
    if not cfg.tie_word_embeddings:
        add("lm_head.weight", ("lm_head",), LINEAR)
    return table


def read_config(path: Path) -> ModelConfig:
    """ModelConfig from `path/config.json`, with errors that name the file."""
    file = path / "config.json"
    if not file.is_file():
        raise MissingFileError(f"{file}: no config.json; an HF model directory needs one")
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
    raise MissingFileError(f"{path}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} found")


def _abstract_model(cfg: ModelConfig, dtype, compute_dtype=None, remat: bool | str = False,
                    attention: str = "auto", scan_layers: bool = False) -> DecoderLM:
    return nnx.eval_shape(lambda: DecoderLM(cfg, dtype=compute_dtype or dtype, param_dtype=dtype,
                                            rngs=nnx.Rngs(0), remat=remat, attention=attention,
                                            scan_layers=scan_layers))


def _names_list(names) -> str:
    names = sorted(names)
    shown = ", ".join(names[:10])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


def from_pretrained(path: str | Path, dtype=jnp.float32, mesh: Mesh | None = None,
                    rules=LOGICAL_RULES, compute_dtype=None, remat: bool | str = False,
                    attention: str = "auto", scan_layers: bool = False) -> DecoderLM:
    """Load an HF Llama-family directory into a DecoderLM with parameters in `dtype`.

    With `mesh`, each parameter is created directly in the sharding that `rules` give it (each
    device reads only its own slice from disk). `compute_dtype` (default `dtype`) is the dtype of
    activations and matmuls; `remat` is the layers' checkpoint policy (`llama.REMAT_POLICIES`,
    True = "full"); `attention` the kernel (`attention.IMPLEMENTATIONS`); `scan_layers` stacks
    the layers' parameters (each HF layer tensor becomes one slice of the stacked parameter).
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingFileError(f"{path}: model directory not found")
    cfg = read_config(path)
    files = weight_files(path)
    index = TensorIndex(files)
    model = _abstract_model(cfg, dtype, compute_dtype, remat, attention, scan_layers)
    graphdef, state = nnx.split(model)
    flat = dict(nnx.to_flat_state(state))
    table = key_table(cfg, scan_layers)

    expected = {name for name, _, _, _ in table}
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
    stacked: dict[tuple, list[tuple[str, Layout]]] = {}
    for name, our_path, layout, layer in table:
        var = flat[our_path]
        shape = tuple(var.shape) if layer is None else tuple(var.shape[1:])
        want = layout.hf_shape(shape)
        found = index.shape(name)
        if tuple(found) != tuple(want):
            raise CheckpointError(f"{index.entries[name][0]}: tensor {name!r} has shape {tuple(found)}, "
                                  f"expected {tuple(want)} from config.json")
        if layer is not None:
            stacked.setdefault(our_path, []).append((name, layout))
            continue
        view = layout.to_ours(index.get(name), shape)
        if mesh is None:
            value = jax.device_put(np.array(view, dtype=np_dtype, order="C"))
        else:
            sharding = variable_sharding(var, mesh, rules)
            value = jax.make_array_from_callback(
                shape, sharding, lambda idx, v=view: np.array(v[idx], dtype=np_dtype, order="C"))
        var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)
        del view
    for our_path, names in stacked.items():
        _load_stacked(flat[our_path], names, index, np_dtype, mesh, rules)
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _load_stacked(var, names: list[tuple[str, Layout]], index: TensorIndex, np_dtype, mesh,
                  rules) -> None:
    """Fill a stacked [layers, ...] parameter from one HF tensor per layer (lazily, per slice)."""
    shape = tuple(var.shape)

    def rows(idx=None):
        idx = idx or (slice(None),) * len(shape)
        layers = range(shape[0])[idx[0]]
        return np.stack([np.array(names[i][1].to_ours(index.get(names[i][0]), shape[1:])[idx[1:]],
                                  dtype=np_dtype) for i in layers])

    if mesh is None:
        value = jax.device_put(rows())
    else:
        value = jax.make_array_from_callback(shape, variable_sharding(var, mesh, rules), rows)
    var.set_value(value) if hasattr(var, "set_value") else setattr(var, "value", value)


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
    table = key_table(cfg, getattr(model, "scan_layers", False))
    first = flat[table[0][1]]
    np_dtype = np.dtype(jnp.dtype(dtype or first.dtype))
    limit = _parse_size(max_shard_size)

    shards: list[list[tuple[str, tuple, Layout, int | None]]] = [[]]
    size = 0
    for entry in table:
        full = flat[entry[1]].shape
        nbytes = math.prod(full if entry[3] is None else full[1:]) * np_dtype.itemsize
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
        for name, our_path, layout, layer in shard:
            value = flat[our_path][...]
            arr = _to_host(value if layer is None else value[layer]).astype(np_dtype)
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
    # The others may read the directory next (the pipeline's after-training eval loads it).
    barrier(f"save_pretrained {out}")
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
               rules=LOGICAL_RULES, **options) -> DecoderLM:
    """A randomly initialised model, created directly in its sharding when `mesh` is given.

    `options` go to DecoderLM (remat, attention, scan_layers); a seed gives the same weights
    with and without scan_layers."""
    if mesh is None:
        return DecoderLM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed), **options)
    graphdef, state = nnx.split(_abstract_model(cfg, dtype, **options))

    def make():
        return nnx.state(DecoderLM(cfg, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(seed),
                                   **options))

    state = jax.jit(make, out_shardings=state_shardings(state, mesh, rules))()
    return nnx.merge(graphdef, state)
