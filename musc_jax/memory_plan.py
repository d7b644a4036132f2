"""Per-device memory estimate of a training run, before any device is touched.

`plan_config(config)` answers "does this config fit?" for the config's mesh: parameters,
optimizer state, the online reference copy, gradients and the train step's activations (with and
without `model.remat`), per device. `python -m musc_jax.plan` prints it.

Where the numbers come from:

* Parameters: the decoder is built abstractly (`nnx.eval_shape`, no memory) so every parameter's
  shape, dtype and `logical_axes` are the real ones; each is cut by `musc_jax.sharding`'s rules
  exactly as the trainer places it (a dimension the mesh axis does not divide stays replicated).
* Optimizer state: `musc_jax.optim.make_optimizer`'s own `init`, evaluated abstractly. AdamW's
  mu and nu take their parameter's dtype and sharding (as the trainer places them); step
  counters are replicated scalars.
* Gradients: one parameter-shaped tree in the parameter dtype (two with gradient accumulation:
  the running sum and the microbatch's).
* Activations: an analytic model of what the compiled step keeps alive at its peak, term by term
  (`activation_terms`), for the rows one device sees: 2 x pairs (chosen and rejected are
  concatenated) per microbatch, at `data.max_length` (the longest bucket). Without remat every
  layer keeps its residuals (hidden states, q/k/v, MLP intermediates and the float32 attention
  probabilities the kernel materialises: all [T, T] for `einsum`, for `xla` only each 128-query
  block's keys up to the block's end (about half for long sequences), none for the flash
  kernels `splash`/`cudnn`; see `score_positions`); with remat a layer keeps only its input and
  recomputes the rest during its backward pass. The vocabulary projection runs in chunks of 128
  positions (`musc_jax.scoring`) and each chunk is recomputed in the backward pass
  (`jax.checkpoint`), so no [rows, T, vocab] logits are kept, only a chunk's working set; the
  online reference's forward keeps nothing (stop-gradient) but holds one layer's and one chunk's
  working set. With FSDP the weights a layer uses are all-gathered in the compute dtype; without
  remat XLA may keep every layer's gathered copy for the backward pass (counted: an upper bound).
  The multiplicities (how many tensors of each kind are alive) are a `Profile`: `ACCELERATOR`
  (what a fusing TPU/GPU compiler keeps; not yet checked on an accelerator) is the default;
  `XLA_CPU` is the same model with the multiplicities read off XLA:CPU's buffer assignment of
  the real train step, which the tests use to check the model's structure (its scaling with
  layers, batch, sequence, heads, vocabulary and mesh) against `compiled.memory_analysis()`.

The model shape comes from `<model.path>/config.json` when that file exists, else from the
`ModelConfig` preset named by the config's `model.preset` key (real-model configs ship without
weights and set it; see configs/llama3_8b_musc.py); `model_preset=` / `--model_preset` names one
explicitly for any config.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from musc_jax.models.attention import causal_block
from musc_jax.models.config import ModelConfig
from musc_jax.sharding import LOGICAL_RULES, MESH_AXES, logical_to_spec

GiB = 2 ** 30
SCORE_CHUNK = 128  # musc_jax.scoring.DEFAULT_CHUNK: positions per vocabulary-projection chunk


# ---------------------------------------------------------------------------------------- mesh

@dataclasses.dataclass(frozen=True)
class MeshShape:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    @property
    def size(self) -> int:
        return self.data * self.fsdp * self.tensor

    @property
    def rows(self) -> int:
        """Devices the batch rows are split over (("data", "fsdp"))."""
        return self.data * self.fsdp

    @property
    def shape(self) -> dict[str, int]:  # what `logical_to_spec` reads from a mesh
        return {"data": self.data, "fsdp": self.fsdp, "tensor": self.tensor}

    def __str__(self) -> str:
        return f"data={self.data} fsdp={self.fsdp} tensor={self.tensor} ({self.size} devices)"


def resolve_mesh(mesh: Mapping[str, int], num_devices: int | None = None) -> MeshShape:
    """The config's mesh sizes, with a -1 entry resolved against `num_devices`."""
    sizes = [int(mesh[a]) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one size may be -1")
    if -1 in sizes:
        if not num_devices:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} has a -1 size: give the device "
                             "count (--num_devices) or set every mesh size")
        known = math.prod(s for s in sizes if s != -1)
        if num_devices % known:
            raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if any(s < 1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive, got {dict(zip(MESH_AXES, sizes))}")
    out = MeshShape(*sizes)
    if num_devices and out.size != num_devices:
        raise ValueError(f"mesh {out} needs {out.size} devices, not {num_devices}")
    return out


# ---------------------------------------------------------------------------------- parameters

@dataclasses.dataclass(frozen=True)
class ParamInfo:
    path: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...] | None
    itemsize: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.itemsize


@functools.lru_cache(maxsize=8)
def abstract_params(model_cfg: ModelConfig, param_dtype: str = "float32") -> nnx.State:
    """The decoder's parameter state as shapes only (no memory), with its logical-axes metadata.

    Cached per (config, dtype): callers must not modify the returned state."""
    from musc_jax.models.llama import DecoderLM
    model = nnx.eval_shape(lambda: DecoderLM(model_cfg, dtype=jnp.dtype(param_dtype),
                                             param_dtype=jnp.dtype(param_dtype), rngs=nnx.Rngs(0)))
    return nnx.state(model, nnx.Param)


def param_infos(state: nnx.State) -> list[ParamInfo]:
    out = []
    for path, var in nnx.to_flat_state(state):
        axes = var.get_metadata().get("logical_axes")
        out.append(ParamInfo("/".join(map(str, path)), tuple(var.shape),
                             tuple(axes) if axes is not None else None,
                             jnp.dtype(var.dtype).itemsize))
    return out


def shard_shape(shape: tuple[int, ...], axes, mesh: MeshShape,
                rules=LOGICAL_RULES) -> tuple[int, ...]:
    """The per-device block of an array with `shape` and logical `axes` (the trainer's rules)."""
    spec = logical_to_spec(axes, shape, mesh, rules)
    out = []
    for i, dim in enumerate(shape):
        entry = spec[i] if i < len(spec) else None
        members = (entry,) if isinstance(entry, str) else tuple(entry or ())
        out.append(dim // math.prod(mesh.shape[m] for m in members))
    return tuple(out)


def shard_factor(info: ParamInfo, mesh: MeshShape, rules=LOGICAL_RULES) -> int:
    """How many pieces a parameter is cut into (1 = replicated on every device)."""
    return math.prod(info.shape) // math.prod(shard_shape(info.shape, info.axes, mesh, rules))


def params_bytes_per_device(infos: list[ParamInfo], mesh: MeshShape, rules=LOGICAL_RULES) -> int:
    return sum(i.nbytes // shard_factor(i, mesh, rules) for i in infos)


def optimizer_bytes_per_device(state: nnx.State, mesh: MeshShape, optim_cfg,
                               rules=LOGICAL_RULES) -> tuple[int, dict[str, Any]]:
    """Per-device bytes of the optimizer state that `musc_jax.optim.make_optimizer` creates.

    Parameter-like leaves (moments) are sharded like their parameter; the rest (step counters)
    are replicated. Also returns {"moment_dtypes": ..., "leaves": n}.
    """
    import optax

    from musc_jax.optim import make_optimizer
    tx, _ = make_optimizer(optim_cfg, total_steps=1000)
    opt = jax.eval_shape(tx.init, state)
    factors = jax.tree.map(
        lambda v: v.replace(shard_factor(ParamInfo("", tuple(v.shape), _axes(v), 1), mesh, rules)),
        state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    records: list[tuple[bool, int, str]] = []

    def param_like(leaf, factor):
        records.append((True, _nbytes(leaf) // int(factor), str(leaf.dtype)))
        return leaf

    def other(leaf):
        records.append((False, _nbytes(leaf), str(leaf.dtype)))
        return leaf

    optax.tree_utils.tree_map_params(tx, param_like, opt, factors, transform_non_params=other)
    dtypes = sorted({d for is_param, _, d in records if is_param})
    return sum(b for _, b, _ in records), {"moment_dtypes": dtypes, "leaves": len(records)}


def _axes(var):
    axes = var.get_metadata().get("logical_axes")
    return tuple(axes) if axes is not None else None


def _nbytes(x) -> int:
    return math.prod(x.shape) * jnp.dtype(x.dtype).itemsize


# --------------------------------------------------------------------------------- activations

@dataclasses.dataclass(frozen=True)
class Profile:
    """How many tensors of each kind the compiled train step keeps alive at its peak.

    Saved per layer for the backward pass (no remat): `hidden` [R, T, E] (layer input, the two
    norm outputs, the residual after attention), `q_out` [R, T, H, D] (rotated queries, attention
    output), `kv` [R, T, K, D] (rotated keys, values), `probs` float32 [R, H, T, T'] (the
    attention probabilities where the kernel materialises them; T' from `score_positions`),
    `mlp` [R, T, M] (gate, up, their product). A layer's backward working set: `grad_probs`
    float32 [R, H, T, T'], `grad_mlp` [R, T, M], `grad_hidden` float32 [R, T, E] (plus, with
    remat, the layer's recomputed residuals). `logits` float32 [R, T, V] kept for the backward
    pass (0: the scoring loop recomputes each chunk), `chunks` float32 [R, 128, V] alive at
    once. `update` parameter-sized temporaries of the optimizer update beyond the gradients.
    `remat_honored`: whether the compiler's schedule really frees the residuals of a
    rematerialised layer. `auto_attention`: the kernel `model.attention="auto"` runs on this
    platform (`musc_jax.models.attention.resolve`; cudnn on GPU keeps what splash keeps).
    """

    name: str
    hidden: float = 4.0
    q_out: float = 2.0
    kv: float = 2.0
    probs: float = 1.0
    mlp: float = 3.0
    grad_probs: float = 1.0
    grad_mlp: float = 2.0
    grad_hidden: float = 2.0
    logits: float = 0.0
    chunks: float = 2.0
    update: float = 1.0
    remat_honored: bool = True
    auto_attention: str = "splash"


ACCELERATOR = Profile("accelerator")
# XLA:CPU (jax 0.10), counted in the buffer assignment of the real train step (the values live
# at its peak, the last layer's MLP backward, on 8 simulated devices: meshes 8x1x1 and 1x8x1,
# T = 256 and 512). Per layer it keeps 6 [R, T, E]: the residual after attention and the layer
# output, and per RMSNorm its float32 normalised input and its scaled output; 2 [R, T, H, D]:
# the queries (sliced per 128-query block) and the attention output; k and v (plus the key
# slices of the causal blocks, `key_slice_positions`); the probabilities twice (softmax output
# and its copy in the PV matmul's layout); 5 [R, T, M]: gate, up, sigmoid(gate), silu(gate), the
# product. The backward working set at the peak: 2 [R, T, M] and one [R, T, E] gradient. Its
# schedule does not free rematerialised residuals (remat changes the measured peak by a few
# percent only). The update holds the gradients and one parameter-sized temporary (AdamW's new
# moments and parameters overwrite the donated buffers): the peak of a 16-token step.
XLA_CPU = Profile("xla_cpu", hidden=6.0, q_out=2.0, kv=2.0, probs=2.0, mlp=5.0, grad_probs=1.0,
                  grad_mlp=2.0, grad_hidden=1.0, logits=0.0, chunks=1.0, update=1.0,
                  remat_honored=False, auto_attention="xla")
PROFILES = {p.name: p for p in (ACCELERATOR, XLA_CPU)}


@dataclasses.dataclass(frozen=True)
class LocalDims:
    """Model dimensions as one device sees them (heads/kv_heads/mlp/vocab cut by `tensor`)."""

    layers: int
    embed: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int


def local_dims(model_cfg: ModelConfig, mesh: MeshShape) -> LocalDims:
    t = mesh.tensor

    def cut(n):  # the rules shard these over "tensor" when it divides them, else replicate
        return n // t if n % t == 0 else n

    return LocalDims(model_cfg.num_layers, model_cfg.hidden_size, cut(model_cfg.num_heads),
                     cut(model_cfg.num_kv_heads), model_cfg.head_dim, cut(model_cfg.intermediate_size),
                     cut(model_cfg.vocab_size))


@dataclasses.dataclass(frozen=True)
class Workload:
    """What one device computes per microbatch."""

    rows: int               # sequences per device per microbatch (2 x pairs for preference)
    seq: int                # tokens per sequence (the longest bucket)
    compute_bytes: int      # itemsize of the compute dtype
    reference: str = "precompute"  # "online" | "precompute" | "none"
    grad_accum: int = 1
    dynamic_weights: bool = False
    batch_arrays: int = 6   # [examples, T] arrays in a batch (ids, masks, response masks, ...)
    rows_per_example: int = 2  # chosen + rejected; 1 for SFT
    attention: str = "auto"  # model.attention ("auto": the profile's platform decides)

    @property
    def examples(self) -> int:
        """Pairs (or SFT rows) per device per microbatch."""
        return self.rows // self.rows_per_example


def attention_kernel(w: Workload, p: Profile) -> str:
    """The attention implementation the step runs: `model.attention`, "auto" resolved as on the
    profile's platform."""
    return p.auto_attention if w.attention == "auto" else w.attention


def score_positions(seq: int, kernel: str) -> int:
    """(query, key) pairs per row and head whose float32 probabilities `kernel` materialises.

    einsum: all T x T. xla (`musc_jax.models.attention.xla_attention`): each `causal_block(T)`-query
    block sees the keys up to its end, so for n blocks (n + 1) / 2n of T x T (an upper bound
    with sliding windows). splash / cudnn (flash kernels): none; they keep per-row softmax
    statistics only.
    """
    if kernel in ("splash", "cudnn"):
        return 0
    blk = causal_block(seq)
    if kernel == "einsum" or seq <= blk:
        return seq * seq
    return sum((min(s + blk, seq) - s) * min(s + blk, seq) for s in range(0, seq, blk))


def key_slice_positions(seq: int, kernel: str) -> int:
    """Key positions the xla kernel copies out as per-block slices of k (and again of v): every
    block but the last reads keys [0, block end)."""
    blk = causal_block(seq)
    if kernel != "xla" or seq <= blk:
        return 0
    return sum(s + blk for s in range(0, seq, blk) if s + blk < seq)


def layer_residual_bytes(d: LocalDims, w: Workload, p: Profile) -> int:
    """Bytes one layer keeps for its backward pass without remat."""
    r, t, c = w.rows, w.seq, w.compute_bytes
    kernel = attention_kernel(w, p)
    scores = r * d.heads * score_positions(t, kernel)
    probs = p.probs * scores * 4
    if c != 4:  # the probabilities are cast to the compute dtype for the PV matmul
        probs += scores * c
    kv_positions = p.kv * t + 2 * key_slice_positions(t, kernel)
    return int(p.hidden * r * t * d.embed * c + p.q_out * r * t * d.heads * d.head_dim * c
               + kv_positions * r * d.kv_heads * d.head_dim * c + probs + p.mlp * r * t * d.mlp * c)


def layer_grad_bytes(d: LocalDims, w: Workload, p: Profile) -> int:
    """The gradient buffers of one layer's backward pass."""
    r, t, c = w.rows, w.seq, w.compute_bytes
    scores = r * d.heads * score_positions(t, attention_kernel(w, p))
    return int(p.grad_probs * scores * 4 + p.grad_mlp * r * t * d.mlp * c
               + p.grad_hidden * r * t * d.embed * 4)


def layer_forward_bytes(d: LocalDims, rows: int, seq: int, c: int, kernel: str = "einsum") -> int:
    """One layer's forward working set when nothing is kept (online reference, reference
    precompute, dynamic token weights)."""
    return int(rows * d.heads * score_positions(seq, kernel) * (4 + c) + 3 * rows * seq * d.mlp * c
               + 2 * rows * seq * d.embed * 4)


def chunk_bytes(d: LocalDims, rows: int, seq: int) -> int:
    """One float32 [rows, chunk, vocab] block of the chunked vocabulary projection."""
    return rows * min(SCORE_CHUNK, max(seq - 1, 1)) * d.vocab * 4


def padded_positions(seq: int) -> int:
    """Positions the chunk loop covers: T-1 predictions padded to a multiple of the chunk."""
    n = max(seq - 1, 1)
    c = min(SCORE_CHUNK, n)
    return -(-n // c) * c


def activation_terms(d: LocalDims, w: Workload, p: Profile, remat: bool,
                     gathered_layer_bytes: int = 0, gathered_head_bytes: int = 0) -> dict[str, int]:
    """Bytes alive at the backward pass's peak beyond parameters, optimizer state and gradients.

    `gathered_layer_bytes`: one layer's weights in the compute dtype as a device holds them
    inside the layer (after the FSDP all-gather or dtype cast; 0 when neither happens);
    `gathered_head_bytes` the same for the output projection used by every chunk.
    """
    r, t, c = w.rows, w.seq, w.compute_bytes
    resid = layer_residual_bytes(d, w, p)
    honored = remat and p.remat_honored
    return {
        "saved_residuals": d.layers * (r * t * d.embed * c if honored else resid),
        # Backward of one layer: its activation gradients, its weight gradients before the FSDP
        # reduce-scatter (full size, compute dtype), and its recomputed residuals under remat.
        "working_set": layer_grad_bytes(d, w, p) + gathered_layer_bytes + (resid if honored else 0),
        # Kept logits (none: chunks are recomputed), the chunk loop's working set, and the
        # embedding lookup's output (the gather and its out-of-range select).
        "logits": int(p.logits * r * padded_positions(t) * d.vocab * 4
                      + p.chunks * chunk_bytes(d, r, t) + 2 * r * t * d.embed * c),
        "gathered_weights": (d.layers * gathered_layer_bytes if not remat
                             else min(2, d.layers) * gathered_layer_bytes) + gathered_head_bytes,
    }


def forward_only_bytes(d: LocalDims, w: Workload, gathered_layer_bytes: int = 0,
                       gathered_head_bytes: int = 0, kernel: str = "einsum") -> int:
    """Peak of the step's forward-only work (online reference, dynamic token weights).

    Neither depends on the policy's forward pass, so a memory-aware schedule runs them while no
    residuals are held: their peak is one layer's and a few chunks' working set, not stacked on
    the backward pass's.
    """
    r, t, c = w.rows, w.seq, w.compute_bytes
    peaks = [0]
    if w.reference == "online":
        peaks.append(layer_forward_bytes(d, r, t, c, kernel) + 2 * chunk_bytes(d, r, t)
                     + 2 * r * t * d.embed * c)
    if w.dynamic_weights:  # per side: x and x' hidden states, two log-softmax chunks at once
        peaks.append(layer_forward_bytes(d, w.examples, t, c, kernel) + 4 * w.examples * t * d.embed * c
                     + 4 * chunk_bytes(d, w.examples, t))
    return max(peaks) + (gathered_layer_bytes + gathered_head_bytes if max(peaks) else 0)


# ----------------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class MemoryPlan:
    model_source: str
    model_cfg: ModelConfig
    num_params: int
    mesh: MeshShape
    param_dtype: str
    compute_dtype: str
    workload: Workload
    profile: Profile
    params: int
    optimizer: int
    moment_dtypes: list[str]
    reference_params: int
    gradients: int
    batch: int
    update_temps: int
    activations: dict[bool, dict[str, int]]   # remat -> terms of the backward pass's peak
    forward_only: int                          # peak of the reference / dynamic-weight forwards
    precompute_pass: int                       # one-off peak of the reference precompute (0 if unused)
    remat: bool                                # what the config selects

    @property
    def persistent(self) -> int:
        return self.params + self.optimizer + self.reference_params + self.batch

    def step_temporaries(self, remat: bool) -> int:
        """The step's temporaries at its peak: the largest of the backward pass's peak, the
        forward-only (reference) peak and the optimizer update's peak."""
        backward = self.gradients + sum(self.activations[remat].values())
        return max(backward, self.forward_only, self.gradients + self.update_temps)

    def total(self, remat: bool | None = None) -> int:
        remat = self.remat if remat is None else remat
        return max(self.persistent + self.step_temporaries(remat), self.precompute_pass)

    def fits(self, device_bytes: float, remat: bool | None = None) -> bool:
        return self.total(remat) <= device_bytes


def model_config_for(config, preset: str | None = None) -> tuple[ModelConfig, str]:
    """(ModelConfig, where it came from). In order: the `preset` argument (a ModelConfig preset
    name), `<model.path>/config.json` if that file exists, the config's own `model.preset` key."""
    from musc_jax.models.config import PRESETS
    from musc_jax.models.hf import read_config
    if preset:
        return ModelConfig.preset(preset), f"preset {preset!r}"
    path = str(config.model.get("path", "") or "")
    if path and (Path(path) / "config.json").is_file():
        return read_config(Path(path)), f"{Path(path) / 'config.json'}"
    preset = str(config.model.get("preset", "") or "")
    if preset:
        return ModelConfig.preset(preset), f"preset {preset!r} (model.preset)"
    where = f"{path}/config.json not found" if path else "model.path is empty"
    raise ValueError(f"cannot tell the model's shape: {where} and the config has no model.preset; "
                     f"set model.path to an HF directory or name a preset with --model_preset "
                     f"(known: {', '.join(sorted(PRESETS))})")


def workload_for(config, mesh: MeshShape) -> Workload:
    c = config
    accum = int(c.optim.grad_accum)
    micro = int(c.train.batch_size) // accum
    if micro % mesh.rows:
        raise ValueError(f"train.batch_size={c.train.batch_size} / optim.grad_accum={accum} = "
                         f"{micro} rows per microbatch is not divisible by mesh data x fsdp = {mesh.rows}")
    pref = c.objective == "preference"
    reference = c.reference.mode if pref else "none"
    compute = c.model.compute_dtype or c.model.param_dtype
    dynamic = pref and c.weights.source == "dynamic" and c.loss.a_tok > 0
    arrays = 6 if pref else 3
    if reference == "precompute":
        arrays += 2
    if pref and c.loss.a_tok and c.weights.source == "dataset":
        arrays += 2
    if dynamic:
        arrays += 6
    per_dev = micro // mesh.rows
    return Workload(rows=per_dev * (2 if pref else 1), seq=int(c.data.max_length),
                    compute_bytes=jnp.dtype(compute).itemsize,
                    reference=reference, rows_per_example=2 if pref else 1,
                    grad_accum=accum, dynamic_weights=dynamic, batch_arrays=arrays,
                    attention=str(c.model.get("attention", "auto") or "auto"))


def plan(model_cfg: ModelConfig, mesh: MeshShape, workload: Workload, optim_cfg,
         param_dtype: str = "float32", compute_dtype: str | None = None, remat: bool = False,
         profile: Profile = ACCELERATOR, model_source: str = "", precompute_rows: int = 0,
         rules=LOGICAL_RULES, lora_params: int = 0) -> MemoryPlan:
    """The per-device memory plan of one training configuration.

    `lora_params` > 0 (LoRA adapters' parameter count): only the adapters have AdamW moments and
    an update (counted unsharded, an upper bound: float32, a few hundred MB at most for 8B
    models); the reference is the base itself (no copy); the kernel-sized gradient that the
    adapters' gradients come from is still counted (musc_jax.models.lora forms W + A @ B)."""
    compute_dtype = compute_dtype or param_dtype
    state = abstract_params(model_cfg, param_dtype)
    infos = param_infos(state)
    params = params_bytes_per_device(infos, mesh, rules)
    optimizer, opt_info = optimizer_bytes_per_device(state, mesh, optim_cfg, rules)
    d = local_dims(model_cfg, mesh)
    c_bytes = jnp.dtype(compute_dtype).itemsize
    # Weights inside a layer in the compute dtype: FSDP gathers them; a dtype cast copies them.
    gather = mesh.fsdp > 1 or c_bytes != jnp.dtype(param_dtype).itemsize
    full_after_tensor = {i.path: math.prod(i.shape) * c_bytes
                         // (shard_factor(i, MeshShape(1, 1, mesh.tensor), rules)) for i in infos}
    layer_w = sum(v for k, v in full_after_tensor.items() if k.startswith("layers/0/"))
    head = full_after_tensor.get("lm_head") or full_after_tensor.get("embed", 0)
    grads = params * (2 if workload.grad_accum > 1 else 1)
    if lora_params:
        optimizer, grads = 8 * lora_params, grads + 4 * lora_params
    batch = workload.batch_arrays * workload.examples * workload.seq * 4 * workload.grad_accum
    lw, hw = (layer_w, head) if gather else (0, 0)
    acts = {r: activation_terms(d, workload, profile, r, lw, hw) for r in (False, True)}
    kernel = attention_kernel(workload, profile)
    pre = 0
    if workload.reference == "precompute" and precompute_rows:
        # Before training (no optimizer state yet): params + one forward over one side's rows.
        pre = params + (layer_w if gather else 0) + (head if gather else 0) + \
            precompute_rows * workload.seq * d.embed * c_bytes * 2 + \
            layer_forward_bytes(d, precompute_rows, workload.seq, c_bytes, kernel) + \
            2 * chunk_bytes(d, precompute_rows, workload.seq)
    return MemoryPlan(
        model_source=model_source, model_cfg=model_cfg, num_params=sum(math.prod(i.shape) for i in infos),
        mesh=mesh, param_dtype=param_dtype, compute_dtype=compute_dtype, workload=workload,
        profile=profile, params=params, optimizer=optimizer, moment_dtypes=opt_info["moment_dtypes"],
        reference_params=params if workload.reference == "online" and not lora_params else 0,
        gradients=grads, batch=batch,
        update_temps=int(profile.update * (4 * lora_params if lora_params else params)),
        activations=acts,
        forward_only=forward_only_bytes(d, workload, lw, hw, kernel),
        precompute_pass=pre, remat=remat)


def plan_config(config, num_devices: int | None = None, profile: Profile = ACCELERATOR,
                model_preset: str | None = None) -> MemoryPlan:
    """The plan of a loaded run config (its model, mesh, batch, sequence length, dtypes, remat).

    `model_preset` (a ModelConfig preset name) overrides where the model's shape comes from."""
    model_cfg, source = model_config_for(config, model_preset)
    mesh = resolve_mesh(config.mesh, num_devices)
    work = workload_for(config, mesh)
    pre_rows = int(config.train.batch_size) // mesh.rows if work.reference == "precompute" else 0
    lora_params = 0
    if "lora" in config.model and int(config.model.lora.rank) > 0:
        from musc_jax.models import lora
        cfg = lora.LoraConfig.from_config(config.model.lora)
        state = abstract_params(model_cfg, config.model.param_dtype)
        lora_params = lora.num_params(jax.eval_shape(
            lambda p: lora.init_adapter(p, cfg, jax.random.key(0)), state))
    return plan(model_cfg, mesh, work, config.optim, param_dtype=config.model.param_dtype,
                compute_dtype=config.model.compute_dtype or None,
                remat=config.model.remat not in (False, None, "none"),  # a policy name or a bool
                profile=profile, model_source=source, precompute_rows=pre_rows,
                lora_params=lora_params)


# ------------------------------------------------------------------------------------- report

def _gib(n: float) -> str:
    return f"{n / GiB:9.2f}"


def format_plan(p: MemoryPlan, device_memory_gib: float | None = None, headroom: float = 0.1) -> str:
    """A table of the plan, remat off and on, and the verdict for `device_memory_gib`."""
    w, m = p.workload, p.model_cfg
    lines = [
        f"model      {m.model_type}: {p.num_params / 1e9:.2f} B parameters, {m.num_layers} layers, "
        f"hidden {m.hidden_size}, mlp {m.intermediate_size}, heads {m.num_heads}/{m.num_kv_heads} "
        f"(kv), vocab {m.vocab_size}  [{p.model_source}]",
        f"dtypes     parameters {p.param_dtype}, compute {p.compute_dtype}, "
        f"AdamW moments {'/'.join(p.moment_dtypes)}",
        f"mesh       {p.mesh}",
        f"per device {w.examples} {'pairs' if w.rows_per_example == 2 else 'examples'} = "
        f"{w.rows} rows x {w.seq} tokens per microbatch"
        + (f", grad_accum {w.grad_accum}" if w.grad_accum > 1 else "")
        + f"; reference {w.reference}; activation profile {p.profile.name}",
        "",
        f"{'per-device memory (GiB)':44s}{'remat off':>10s}{'remat on':>10s}",
    ]

    def row(label, a, b=None):
        lines.append(f"  {label:42s}{_gib(a)} {_gib(a if b is None else b)}")

    row("parameters", p.params)
    row("optimizer state (AdamW mu + nu)", p.optimizer)
    row("reference parameters (online mode)", p.reference_params)
    row("batch", p.batch)
    row("gradients", p.gradients)
    names = {"saved_residuals": f"activations: saved residuals ({m.num_layers} layers)",
             "working_set": "activations: backward working set (1 layer)",
             "logits": "activations: logits chunks + embedding out",
             "gathered_weights": "activations: gathered/cast weights"}
    for k, label in names.items():
        row(label, p.activations[False][k], p.activations[True][k])
    row("optimizer update temporaries", p.update_temps)
    if p.forward_only:
        row("reference/dynamic-weight forward peak", p.forward_only)
    row("step temporaries at peak", p.step_temporaries(False), p.step_temporaries(True))
    if p.precompute_pass:
        row("one-off reference precompute pass peak", p.precompute_pass)
    row("PEAK TOTAL", p.total(False), p.total(True))
    chosen = "on" if p.remat else "off"
    if device_memory_gib:
        usable = device_memory_gib * (1 - headroom)
        lines.append("")
        for r in (False, True):
            verdict = "fits" if p.total(r) <= usable * GiB else "DOES NOT FIT"
            mark = "  <- config (model.remat=%s)" % p.remat if r == p.remat else ""
            lines.append(f"  remat {'on ' if r else 'off'}: {p.total(r) / GiB:.2f} GiB of {usable:.1f} "
                         f"usable ({device_memory_gib:g} GiB less {headroom:.0%} headroom): "
                         f"{verdict}{mark}")
    else:
        lines.append(f"\nconfig runs with remat {chosen}: {p.total() / GiB:.2f} GiB per device")
    return "\n".join(lines)


def plan_summary(p: MemoryPlan, device_memory_gib: float | None = None,
                 headroom: float = 0.1) -> dict[str, Any]:
    """The plan's key numbers (GiB) as a flat dict, for JSON output and tests."""
    g = lambda n: round(n / GiB, 3)  # noqa: E731
    out: dict[str, Any] = {
        "model_source": p.model_source, "num_params": p.num_params, "mesh": p.mesh.shape,
        "rows_per_device": p.workload.rows, "seq": p.workload.seq, "reference": p.workload.reference,
        "param_dtype": p.param_dtype, "compute_dtype": p.compute_dtype,
        "moment_dtypes": p.moment_dtypes, "profile": p.profile.name, "remat": p.remat,
        "params_gib": g(p.params), "optimizer_gib": g(p.optimizer),
        "reference_params_gib": g(p.reference_params), "gradients_gib": g(p.gradients),
        "batch_gib": g(p.batch), "precompute_pass_gib": g(p.precompute_pass),
        "forward_only_gib": g(p.forward_only),
    }
    for r in (False, True):
        key = "remat" if r else "no_remat"
        out[f"activations_{key}_gib"] = {k: g(v) for k, v in p.activations[r].items()}
        out[f"total_{key}_gib"] = g(p.total(r))
    if device_memory_gib:
        usable = device_memory_gib * (1 - headroom) * GiB
        out["device_memory_gib"] = device_memory_gib
        out["usable_gib"] = g(usable)
        out["fits_no_remat"] = p.total(False) <= usable
        out["fits_remat"] = p.total(True) <= usable
        out["fits"] = p.total() <= usable
    return out
