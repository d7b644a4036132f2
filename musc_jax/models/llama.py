"""One flax.nnx decoder for the Llama family: Llama 2/3.x, Mistral, Qwen2/2.5, Qwen3.

Switches come from ModelConfig: grouped-query attention, q/k/v biases (Qwen2), per-head q/k
RMSNorm (Qwen3), sliding-window attention (Mistral, Qwen when enabled), rope scaling, tied
embeddings. Every parameter carries `logical_axes` metadata that `musc_jax.sharding` maps to mesh
axes. Padding is expressed by `attention_mask`; positions are derived from it, so left and right
padding give the same logits on the real tokens.

Run options (DecoderLM arguments, `model.*` config keys): `attention` picks the kernel of
`musc_jax.models.attention`; `remat` a checkpoint policy per layer; `scan_layers` stacks the
layers' parameters on a leading axis and runs them as one lax.scan (one layer compiled).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from musc_jax.models import attention as attention_lib
from musc_jax.models.config import ConfigError, ModelConfig
from musc_jax.models.rope import apply_rope, inverse_frequencies, rope_cos_sin

# model.remat: what a layer keeps for the backward pass. full: only its input; dots_saveable:
# matmul outputs; save_qkv_proj: the q/k/v projections (named by checkpoint_name); none: all.
REMAT_POLICIES = ("full", "dots_saveable", "save_qkv_proj", "none")


def remat_policy_name(remat: bool | str | None) -> str:
    """The policy name for a `model.remat` value (True/False from older configs: full/none)."""
    if remat is True:
        return "full"
    if remat is False or remat is None:
        return "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"model.remat={remat!r}: choose one of {', '.join(REMAT_POLICIES)} "
                         f"(or true/false)")
    return remat


def _checkpoint(fn, policy: str):
    """`fn` wrapped by jax.checkpoint with the named policy (unchanged for 'none')."""
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots_saveable": jax.checkpoint_policies.dots_saveable,
        "save_qkv_proj": jax.checkpoint_policies.save_only_these_names(
            "query_proj", "key_proj", "value_proj"),
    }
    return jax.checkpoint(fn, policy=policies[policy])


class KVCache(NamedTuple):
    """Preallocated key/value cache for incremental decoding.

    keys/values: per layer [B, S, kv_heads, head_dim]; mask: [B, S] which slots hold real
    tokens; index: int32 scalar, the next slot to write (the same for every row, because prompts
    are left-padded); lengths: [B] count of real tokens seen per row (next rope position).
    """

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    mask: jax.Array
    index: jax.Array
    lengths: jax.Array


def _param(rngs: nnx.Rngs, shape, axes, dtype, std=0.02):
    return nnx.Param(jax.random.normal(rngs.params(), shape, dtype) * std, logical_axes=axes)


class RMSNorm(nnx.Module):
    """RMSNorm computed in float32 and cast back, as transformers does."""

    def __init__(self, dim: int, eps: float, axes=("norm",), param_dtype=jnp.float32):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=axes)
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * x.astype(dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = _param(rngs, (e, h, d), ("embed", "heads", "head_dim"), param_dtype)
        self.k_proj = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_proj = _param(rngs, (e, kv, d), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.o_proj = _param(rngs, (h, d, e), ("heads", "head_dim", "embed"), param_dtype)
        if cfg.attention_bias:
            self.q_bias = nnx.Param(jnp.zeros((h, d), param_dtype), logical_axes=("heads", "head_dim"))
            self.k_bias = nnx.Param(jnp.zeros((kv, d), param_dtype), logical_axes=("kv_heads", "head_dim"))
            self.v_bias = nnx.Param(jnp.zeros((kv, d), param_dtype), logical_axes=("kv_heads", "head_dim"))
        else:
            self.q_bias = self.k_bias = self.v_bias = None
        if cfg.qk_norm:
            self.q_norm = RMSNorm(d, cfg.rms_norm_eps, ("head_dim",), param_dtype)
            self.k_norm = RMSNorm(d, cfg.rms_norm_eps, ("head_dim",), param_dtype)
        else:
            self.q_norm = self.k_norm = None
        self.window = cfg.layer_window(layer)
        self.scale = d ** -0.5
        self.dtype = dtype

    def _project(self, x, kernel, bias, name):
        # One 2-D matmul [B*T, E] x [E, H*D]: XLA:CPU runs these faster than the 3-D einsum.
        b, t, e = x.shape
        w = kernel[...].astype(self.dtype)
        y = (x.reshape(b * t, e) @ w.reshape(e, -1)).reshape(b, t, *w.shape[1:])
        if bias is not None:
            y = y + bias[...].astype(self.dtype)
        return checkpoint_name(y, name)

    def qkv(self, x, cos, sin):
        """Queries [B, T, H, D] and keys/values [B, T, KV, D] of x [B, T, E], normed and roped."""
        q = self._project(x, self.q_proj, self.q_bias, "query_proj")
        k = self._project(x, self.k_proj, self.k_bias, "key_proj")
        v = self._project(x, self.v_proj, self.v_bias, "value_proj")
        return (*self.position(q, k, cos, sin), v)

    def position(self, q, k, cos, sin):
        """Projected queries [B, T, H, D] and keys [B, T, KV, D], normed (qk_norm) and roped."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def __call__(self, x, cos, sin, key_mask, q_slots, cache_kv=None, write_index=None,
                 attention: str = "einsum", mesh=None):
        """x [B, T, E]; key_mask [B, S] real key slots; q_slots [T] the cache slot of each query.

        Without a cache S == T and keys are this call's tokens. With a cache (k, v each
        [B, S, kv, D]) this call's keys are written at `write_index` and attention covers all S.
        `attention` is a resolved `musc_jax.models.attention` implementation (training and
        prefill; a call with a cache uses the einsum path). Returns (out [B, T, E], (k, v)).
        """
        q, k, v = self.qkv(x, cos, sin)
        if cache_kv is not None:
            ck, cv = cache_kv
            k = jax.lax.dynamic_update_slice(ck, k.astype(ck.dtype), (0, write_index, 0, 0))
            v = jax.lax.dynamic_update_slice(cv, v.astype(cv.dtype), (0, write_index, 0, 0))
        b, t, h, d = q.shape
        out = attention_lib.attend(q, k, v, key_mask, q_slots, window=self.window, scale=self.scale,
                                   impl=attention, self_keys=cache_kv is None, mesh=mesh)
        o = self.o_proj[...].astype(self.dtype)
        out = (out.reshape(b * t, h * d) @ o.reshape(h * d, -1)).reshape(b, t, -1)
        return out, (k, v)


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        e, m = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _param(rngs, (e, m), ("embed", "mlp"), param_dtype)
        self.up_proj = _param(rngs, (e, m), ("embed", "mlp"), param_dtype)
        self.down_proj = _param(rngs, (m, e), ("mlp", "embed"), param_dtype)
        self.dtype = dtype

    def __call__(self, x):
        # 2-D matmuls over the flattened [B*T, E] tokens (faster on XLA:CPU than 3-D dots).
        b, t, e = x.shape
        x = x.reshape(b * t, e)
        gate = x @ self.gate_proj[...].astype(self.dtype)
        up = x @ self.up_proj[...].astype(self.dtype)
        return ((jax.nn.silu(gate) * up) @ self.down_proj[...].astype(self.dtype)).reshape(b, t, e)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, layer, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, cos, sin, key_mask, q_slots, cache_kv=None, write_index=None,
                 attention: str = "einsum", mesh=None):
        a, kv = self.attn(self.input_norm(x), cos, sin, key_mask, q_slots, cache_kv, write_index,
                          attention, mesh)
        x = x + a
        x = x + self.mlp(self.post_attn_norm(x))
        return x, kv


def _layer_fn(graphdef, policy: str, attention: str, mesh, activation_sharding):
    """layer(state, x, cos, sin, key_mask, q_slots, cache_kv, write_index) -> (x, (k, v)) as a
    pure function of the layer's state, checkpointed with `policy`.

    The layer is rebuilt from its state inside the function (nnx.merge), so jax.checkpoint and
    lax.scan see plain arrays: no nnx Variable of an outer trace is touched inside (nnx.remat on
    a merged module failed under value_and_grad of an online-reference loss).
    """

    def call(state, x, cos, sin, key_mask, q_slots, cache_kv, write_index):
        if activation_sharding is not None:
            x = jax.lax.with_sharding_constraint(x, activation_sharding)
        layer = nnx.merge(graphdef, state)
        return layer(x, cos, sin, key_mask, q_slots, cache_kv, write_index, attention, mesh)

    return _checkpoint(call, policy)


def _stacked_layers(cfg: ModelConfig, *, dtype, param_dtype, rngs: nnx.Rngs) -> DecoderLayer:
    """One DecoderLayer whose parameters carry a leading [num_layers] axis (for lax.scan).

    Layers are drawn in the same order as the unscanned list, so a seed gives the same weights
    either way. The layer axis is unsharded (logical name None).
    """
    windows = {cfg.layer_window(i) for i in range(cfg.num_layers)}
    if len(windows) > 1:
        raise ConfigError("model.scan_layers=true needs the same attention window on every layer; "
                          "this config mixes sliding-window and full layers: set "
                          "model.scan_layers=false")
    layers = [DecoderLayer(cfg, i, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
              for i in range(cfg.num_layers)]
    graphdef, first = nnx.split(layers[0])
    states = [first] + [nnx.split(layer)[1] for layer in layers[1:]]

    def stack(*vs):
        axes = vs[0].get_metadata().get("logical_axes")
        out = vs[0].replace(jnp.stack([v[...] for v in vs]))
        if axes is not None:
            out.set_metadata(logical_axes=(None, *axes))
        return out

    stacked = jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, stacked)


def _layer_slice(state, i: int):
    return jax.tree.map(lambda a: a[i], state)


def project_logits(h: jax.Array, w: jax.Array) -> jax.Array:
    """float32 logits [..., V] = h [..., E] @ w [E, V], as one 2-D matmul."""
    lead = h.shape[:-1]
    out = jnp.dot(h.reshape(-1, h.shape[-1]), w, preferred_element_type=jnp.float32)
    return out.reshape(*lead, w.shape[-1])


class DecoderLM(nnx.Module):
    """Causal LM of the Llama family.

    `model(input_ids, attention_mask)` -> float32 logits [B, T, vocab]. Generation uses
    `hidden_states(..., cache=...)` with a `KVCache` from `init_cache` and `logits(h)`.
    """

    def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, remat: bool | str = False, attention: str = "auto",
                 scan_layers: bool = False):
        """`remat`: a REMAT_POLICIES name (True = "full", False = "none"); `attention`: a
        `musc_jax.models.attention.IMPLEMENTATIONS` name; `scan_layers`: the layers' parameters
        are stacked on a leading axis and the forward pass is one lax.scan (compiles one layer)."""
        self.config = config
        self.dtype = dtype
        self.remat = remat_policy_name(remat)
        attention_lib.resolve(attention)  # reject an unknown name now
        self.attention = attention
        self.scan_layers = bool(scan_layers)
        # Sharding of [B, T, E] activations (set by the trainer on a mesh): without it, XLA may
        # gather the batch instead of the FSDP-sharded weights.
        self.activation_sharding = None
        self.embed = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype)
        if self.scan_layers:
            self.layers = _stacked_layers(config, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        else:
            self.layers = nnx.List([DecoderLayer(config, i, dtype=dtype, param_dtype=param_dtype,
                                                 rngs=rngs) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        if config.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = _param(rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), param_dtype)

    def init_cache(self, batch: int, max_len: int, dtype=None) -> KVCache:
        """An empty cache for `batch` rows and `max_len` slots (prompt + new tokens)."""
        c = self.config
        dtype = dtype or self.dtype
        shape = (batch, max_len, c.num_kv_heads, c.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers))
        return KVCache(keys=zeros, values=tuple(jnp.zeros(shape, dtype) for _ in range(c.num_layers)),
                       mask=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32),
                       lengths=jnp.zeros((batch,), jnp.int32))

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                      cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        """Final normed hidden states [B, T, E] and the updated cache (None without one)."""
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), jnp.int32)
        mask = attention_mask.astype(jnp.int32)
        base = cache.lengths if cache is not None else jnp.zeros((b,), jnp.int32)
        positions = jnp.maximum(base[:, None] + jnp.cumsum(mask, axis=-1) - 1, 0)
        cos, sin = rope_cos_sin(positions, inverse_frequencies(self.config))
        x = jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)
        if cache is None:
            key_mask, q_slots, write_index = mask, jnp.arange(t), None
        else:
            write_index = cache.index
            key_mask = jax.lax.dynamic_update_slice(cache.mask, mask.astype(bool), (0, write_index))
            q_slots = write_index + jnp.arange(t)
        impl = attention_lib.resolve(self.attention)
        mesh = self.activation_sharding.mesh if self.activation_sharding is not None else None
        new_k, new_v = [], []
        if self.scan_layers and cache is None:
            graphdef, state = nnx.split(self.layers)
            call = _layer_fn(graphdef, self.remat, impl, mesh, self.activation_sharding)

            def body(x, layer_state):
                return call(layer_state, x, cos, sin, key_mask, q_slots, None, None)[0], None

            x, _ = jax.lax.scan(body, x, state)
        else:
            if self.scan_layers:  # decoding: one slice of the stacked weights per layer
                graphdef, state = nnx.split(self.layers)
                layers = [(graphdef, _layer_slice(state, i)) for i in range(self.config.num_layers)]
            else:
                layers = [nnx.split(layer) for layer in self.layers]
            for i, (graphdef, state) in enumerate(layers):
                call = _layer_fn(graphdef, self.remat, impl, mesh, self.activation_sharding)
                cache_kv = (cache.keys[i], cache.values[i]) if cache is not None else None
                x, (k, v) = call(state, x, cos, sin, key_mask, q_slots, cache_kv, write_index)
                new_k.append(k)
                new_v.append(v)
        x = self.norm(x)
        if cache is None:
            return x, None
        new_cache = KVCache(keys=tuple(new_k), values=tuple(new_v), mask=key_mask,
                            index=cache.index + t, lengths=cache.lengths + mask.sum(-1))
        return x, new_cache

    def logits(self, h: jax.Array) -> jax.Array:
        """float32 logits [..., vocab] from hidden states [..., E]."""
        return project_logits(h, self.lm_head_weight())

    def lm_head_weight(self) -> jax.Array:
        """The output projection [E, V] in the compute dtype (the embedding's transpose if tied)."""
        if self.lm_head is None:
            return self.embed[...].astype(self.dtype).T
        return self.lm_head[...].astype(self.dtype)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        h, _ = self.hidden_states(input_ids, attention_mask)
        return self.logits(h)
