"""Ahead-of-time compilation of a config's train and generation steps for a TPU slice, on a CPU.

With libtpu installed (`pip install -e .[tpu-aot]`), `jax.experimental.topologies` describes the
devices of a TPU slice that is not attached; a step jitted with explicit shardings and lowered on
sharded `ShapeDtypeStruct`s compiles for it for real. The compiled program reports the per-chip
memory the TPU compiler assigned (`memory_analysis`) and its own cost model (`cost_analysis`:
flops and estimated seconds). `python -m musc_jax.plan --config X --config.plan.aot=tpu` prints
both; MaxText checks configs the same way before they reach a pod.

Two compiles per config, because `cost_analysis` counts the body of a while loop once:
* the real program (what training runs): memory comes from it;
* a loop-free program: layers unrolled (`model.scan_layers` off where the model has it), the
  collective-matmul (windowed einsum) loops off, the vocabulary projection in one chunk.
  FLOPs and the estimated time come from it (for a deep model or a long sequence, from three
  small such compiles extended to the real layer count and sequence: see compile_train). Its
  time is the compiler's estimate, not a measurement: the implied MFU is labelled as such.
The splash-attention kernels are Pallas custom calls the compiler has no cost for: their FLOPs
are counted from the loop-free HLO (`kernel_flops`) and added, at the chip's peak, to the time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
import os
import re
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

# Several processes on one machine may load libtpu only to compile (no chip is opened).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

GiB = 2 ** 30
# Peak dense bf16 FLOP/s per chip (vendor figures), keyed by the topology name's prefix.
PEAK_FLOPS = {"v4": 275e12, "v5e": 197e12, "v5litepod": 197e12, "v5p": 459e12, "v6e": 918e12}
# Compiler options that remove loops the cost model would count once (see module docstring).
LOOP_FREE_OPTIONS = {"xla_tpu_enable_windowed_einsum_for_all_gather": False,
                     "xla_tpu_enable_windowed_einsum_for_reduce_scatter": False}


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: str) -> list:
    """The devices of TPU slice `topology` (e.g. "v5p:2x2x2"), compiled for without hardware."""
    if not libtpu_available():
        raise ValueError("plan.aot=tpu needs libtpu: pip install -e '.[tpu-aot]' (CPU machines too)")
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)


def peak_flops(topology: str) -> float:
    kind = topology.split(":")[0]
    if kind not in PEAK_FLOPS:
        raise ValueError(f"no peak FLOP/s known for TPU {kind!r} (topology {topology!r}); "
                         f"known: {', '.join(PEAK_FLOPS)}")
    return PEAK_FLOPS[kind]


@dataclasses.dataclass
class CompileStats:
    """What one compiled program reports, per chip."""

    argument: int
    output: int
    alias: int
    temp: int
    code: int
    flops: float
    bytes_accessed: float
    est_seconds: float
    compile_s: float
    kernel_flops: float = 0.0  # Pallas attention kernels (no cost model): see kernel_flops()

    @property
    def total(self) -> int:
        """Bytes a chip holds while the program runs: inputs, outputs not aliased to (donated)
        inputs, temporaries and the program itself."""
        return self.argument + self.output - self.alias + self.temp + self.code


def compile_stats(lowered, compiler_options: dict | None = None,
                  attention: "AttentionDims | None" = None) -> CompileStats:
    """Compile `lowered` and read its memory and cost analyses (with `attention`, also the
    FLOPs of its splash-attention kernels: see kernel_flops)."""
    t0 = time.time()
    compiled = lowered.compile(compiler_options=compiler_options or None)
    seconds = time.time() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    return CompileStats(
        argument=int(m.argument_size_in_bytes), output=int(m.output_size_in_bytes),
        alias=int(m.alias_size_in_bytes), temp=int(m.temp_size_in_bytes),
        code=int(m.generated_code_size_in_bytes), flops=float(cost.get("flops", 0.0)),
        bytes_accessed=float(cost.get("bytes accessed", 0.0)),
        est_seconds=float(cost.get("optimal_seconds", 0.0)), compile_s=seconds,
        kernel_flops=kernel_flops(compiled.as_text(), attention) if attention else 0.0)


@dataclasses.dataclass(frozen=True)
class AttentionDims:
    """What one splash call sees per chip: rows (sequences), query heads, T, head_dim, window."""

    rows: int
    heads: int
    seq: int
    head_dim: int
    window: int | None = None


def attention_dims(config, model_cfg, num_devices: int) -> AttentionDims:
    """Per-chip dimensions of the train step's attention calls (rows of one microbatch over
    data x fsdp; heads over tensor when it divides them, as musc_jax.models.attention does)."""
    from musc_jax.memory_plan import resolve_mesh
    c = config
    mesh = resolve_mesh(c.mesh, num_devices)
    pref = c.objective == "preference"
    rows = int(c.train.batch_size) * (2 if pref else 1) // int(c.optim.grad_accum) // mesh.rows
    t = mesh.tensor
    h, kv = model_cfg.num_heads, model_cfg.num_kv_heads
    heads = h // t if t > 1 and h % t == 0 and kv % t == 0 else h
    return AttentionDims(rows, heads, int(c.data.max_length), model_cfg.head_dim,
                         model_cfg.layer_window(0))


# Matmuls of T x T x D per (row, head) in each splash kernel: forward QK^T and PV; the dq kernel
# recomputes QK^T and forms dP = dO V^T and dQ = dS K; the dkv kernel recomputes QK^T and forms
# dP, dV = P^T dO and dK = dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}
_SPLASH_CALL = re.compile(r"^\s*(?:ROOT )?%splash_m[hq]a_(fwd|dq|dkv)\S* = .*custom-call\(")


def active_block_fraction(t: int, window: int | None) -> float:
    """Share of the splash kernel's [block, block] tiles of a T x T causal (sliding-window)
    mask that are not fully masked: the tiles it computes."""
    from musc_jax.models.attention import _splash_block
    b = _splash_block(t)
    n = t // b
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    active = j <= i                                   # a key tile at or before the query tile
    if window is not None:                            # its nearest key still inside the window
        active &= (i * b) - (j * b + b - 1) < window
    return float(active.sum()) / (n * n)


def splash_calls(hlo_text: str) -> dict[str, int]:
    """How many splash kernel calls of each phase (fwd, dq, dkv) a compiled HLO text holds."""
    calls = {k: 0 for k in _SPLASH_MATMULS}
    for line in hlo_text.splitlines():
        m = _SPLASH_CALL.match(line)
        if m:
            calls[m.group(1)] += 1
    return calls


def kernel_flops(hlo_text: str, dims: AttentionDims) -> float:
    """FLOPs of the splash-attention calls in a compiled program's HLO.

    Pallas kernels reach XLA as custom calls without a cost estimate (jax 0.10's splash kernel
    gives none), so `cost_analysis` counts them as zero. Each call does its phase's matmuls over
    the tiles the causal mask leaves: matmuls x 2 rows heads T T D x active_block_fraction.
    Calls inside a while loop are counted once, as `cost_analysis` counts them: use a
    loop-free program."""
    per_matmul = (2 * dims.rows * dims.heads * dims.seq * dims.seq * dims.head_dim
                  * active_block_fraction(dims.seq, dims.window))
    return float(sum(_SPLASH_MATMULS[k] * n for k, n in splash_calls(hlo_text).items()) * per_matmul)


# ----------------------------------------------------------------------------- abstract state

def _sds(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_model(config, model_cfg):
    """The decoder the trainer would build for `config` on a TPU, as shapes only
    (model.attention=auto resolves for the TPU, not for this machine's backend)."""
    from musc_jax.models import attention, hf
    c = config
    dtype = jnp.dtype(c.model.param_dtype)
    compute = jnp.dtype(c.model.compute_dtype) if c.model.compute_dtype else dtype
    return hf._abstract_model(model_cfg, dtype, compute, c.model.remat,
                              attention=attention.resolve(c.model.attention, "tpu"),
                              scan_layers=bool(c.model.scan_layers))


@dataclasses.dataclass
class TrainProgram:
    """A config's train step, jitted with the trainer's shardings, and abstract arguments."""

    fn: Any
    args: tuple
    tokens_per_chip: int
    num_params: int


def abstract_batch(config, step_cfg, mesh, rows: int, seq: int) -> dict:
    """ShapeDtypeStructs of the batch the loader feeds the step (see musc_jax.data.batching)."""
    accum = int(config.optim.grad_accum)
    lead = (accum,) if accum > 1 else ()
    spec = P(*([None] * len(lead)), ("data", "fsdp"), None)
    sh = NamedSharding(mesh, spec)
    shape = (*lead, rows // accum, seq)

    def arr(dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sh)

    if step_cfg.objective == "sft":
        return {"ids": arr(jnp.int32), "mask": arr(jnp.int32), "response_mask": arr(jnp.float32)}
    sides = ["chosen", "rejected"]
    if step_cfg.weights == "dynamic" and step_cfg.loss.a_tok:
        sides += ["chosen_alt", "rejected_alt"]
    batch = {}
    for s in sides:
        batch.update({f"{s}_ids": arr(jnp.int32), f"{s}_mask": arr(jnp.int32),
                      f"{s}_response_mask": arr(jnp.float32)})
    if step_cfg.reference == "precompute":
        batch.update(ref_chosen_token_logps=arr(jnp.float32), ref_rejected_token_logps=arr(jnp.float32))
    if step_cfg.weights == "dataset" and step_cfg.loss.a_tok:
        batch.update(chosen_weights=arr(jnp.float32), rejected_weights=arr(jnp.float32))
    return batch


def train_program(config, model_cfg, devices) -> TrainProgram:
    """The trainer's train step for `config` on `devices` (musc_jax.trainer builds the same)."""
    from musc_jax.optim import make_optimizer
    from musc_jax.sharding import make_mesh, state_shardings
    from musc_jax.train_step import make_train_step
    from musc_jax.trainer import step_config
    c = config
    mesh = make_mesh(**c.mesh, devices=devices)
    model = abstract_model(c, model_cfg)
    model.activation_sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None))
    graphdef, state = nnx.split(model)
    param_sh = state_shardings(state, mesh)
    params = _sds(state, param_sh)
    cfg = step_config(c)
    tx, schedule = make_optimizer(c.optim, 1000)
    replicated = NamedSharding(mesh, P())
    opt_abstract = jax.eval_shape(tx.init, params)
    opt_sh = optax.tree_utils.tree_map_params(
        tx, lambda _, s: s, opt_abstract, param_sh, transform_non_params=lambda _: replicated)
    opt = _sds(opt_abstract, opt_sh)
    rows = int(c.train.batch_size) * (2 if cfg.objective == "preference" else 1)
    seq = int(c.data.max_length)
    batch = abstract_batch(c, cfg, mesh, rows // (2 if cfg.objective == "preference" else 1), seq)
    ref = params if cfg.reference == "online" else None
    step = make_train_step(graphdef, cfg, tx, schedule)
    fn = jax.jit(step, in_shardings=(param_sh, opt_sh, jax.tree.map(lambda x: x.sharding, batch),
                                     param_sh if ref is not None else None),
                 out_shardings=(param_sh, opt_sh, replicated), donate_argnums=(0, 1))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(state))
    return TrainProgram(fn=fn, args=(params, opt, batch, ref),
                        tokens_per_chip=rows * seq // len(devices), num_params=n)


@contextlib.contextmanager
def _logits_chunk(chunk: int):
    """Score in vocabulary-projection chunks of `chunk` positions while compiling for costs."""
    from musc_jax import scoring, train_step
    original = train_step.response_token_logps
    train_step.response_token_logps = functools.partial(scoring.response_token_logps, chunk=chunk)
    try:
        yield
    finally:
        train_step.response_token_logps = original


def loop_free_costs(config, model_cfg, devices, layers: int | None = None,
                    chunk: int | None = None) -> CompileStats:
    """FLOPs and estimated time of the loop-free train step of `model_cfg` with `layers` layers,
    the vocabulary projected in chunks of `chunk` positions (default: one chunk, no loop)."""
    cfg = model_cfg if layers is None else dataclasses.replace(model_cfg, num_layers=layers)
    with _logits_chunk(chunk or int(config.data.max_length)):
        lf = train_program(_loop_free_config(config), cfg, devices)
        return compile_stats(lf.fn.lower(*lf.args), LOOP_FREE_OPTIONS,
                             attention_dims(config, cfg, len(devices)))


# Chunk lengths of the two cost compiles that stand for the one-chunk vocabulary projection of a
# long sequence (see compile_train).
COST_CHUNKS = (128, 256)


def compile_train(config, model_cfg, devices, base_layers: tuple[int, int] = (1, 2),
                  costs: bool = True, cost_chunks: tuple[int, int] = COST_CHUNKS
                  ) -> tuple[CompileStats, CompileStats | None, TrainProgram]:
    """(real program's stats, loop-free costs (None unless `costs`), the program).

    The loop-free program would unroll every layer and project the whole sequence onto the
    vocabulary at once; both make its compile slow and memory-hungry on a big model (4 unrolled
    Llama-3-8B layers: over 20 minutes and 18 GB here; one layer with its 2048 x 128256 logits in
    one piece: over 17 GB, where the same layer with 128-position chunks compiles in 1.5 GB).
    The costs are affine in the layer count (the layers are identical) and, since
    `cost_analysis` counts a loop body once, in the chunk length of the vocabulary projection
    (its loop body's work is proportional to the chunk; the rest of the program does not
    depend on it). So above the larger of `base_layers` layers and for sequences longer than the
    larger of `cost_chunks`, the costs come from three small compiles: (lo layers, chunk c1),
    (hi layers, c1), (lo layers, c2), extended to the real layer count and to one chunk of the
    whole sequence (tests/test_aot.py checks the rule against a direct compile)."""
    prog = train_program(config, model_cfg, devices)
    real = compile_stats(prog.fn.lower(*prog.args))
    if not costs:
        return real, None, prog
    n, seq = model_cfg.num_layers, int(config.data.max_length)
    lo, hi = base_layers if n > base_layers[1] else (n, n)
    c1, c2 = cost_chunks if seq > cost_chunks[1] else (seq, seq)
    a = loop_free_costs(config, model_cfg, devices, lo, c1)
    b = loop_free_costs(config, model_cfg, devices, hi, c1) if hi != lo else None
    d = loop_free_costs(config, model_cfg, devices, lo, c2) if c2 != c1 else None
    if d is not None and d.flops < a.flops:
        raise RuntimeError(f"loop-free cost compiles: {c2}-position logits chunks counted fewer "
                           f"FLOPs ({d.flops:.3e}) than {c1}-position ones ({a.flops:.3e}); the "
                           "compiler unrolled one chunk loop and not the other, so the costs "
                           "cannot be extended to one chunk")

    def ext(field: str) -> float:
        x = getattr(a, field)
        by_layer = 0.0 if b is None else (getattr(b, field) - x) / (hi - lo) * (n - lo)
        by_chunk = 0.0 if d is None else (getattr(d, field) - x) / (c2 - c1) * (seq - c1)
        return x + by_layer + by_chunk

    costs = dataclasses.replace(
        a, flops=ext("flops"), bytes_accessed=ext("bytes_accessed"),
        est_seconds=ext("est_seconds"), kernel_flops=ext("kernel_flops"),
        compile_s=sum(s.compile_s for s in (a, b, d) if s is not None))
    return real, costs, prog


def _loop_free_config(config):
    c = config.copy_and_resolve_references()
    with c.unlocked():
        if "scan_layers" in c.model:
            c.model.scan_layers = False
    return c


# ------------------------------------------------------------------------------- generation

def compile_generate(config, model_cfg, devices, prompt_len: int = 1024,
                     new_tokens: int = 1024) -> CompileStats:
    """The sampling loop of musc_jax.generate (prefill + while-loop decode) for one batch of
    `train.batch_size` prompts on the config's mesh; memory only (the decode loop is a while loop)."""
    from musc_jax import generate as gen
    from musc_jax.models.llama import KVCache
    from musc_jax.sharding import batch_sharding, logical_to_spec, make_mesh, state_shardings
    c = config
    mesh = make_mesh(**c.mesh, devices=devices)
    model = abstract_model(c, model_cfg)
    graphdef, state = nnx.split(model)
    params = _sds(state, state_shardings(state, mesh))
    b = int(c.train.batch_size)
    kv = NamedSharding(mesh, logical_to_spec(("batch", "length", "kv_heads", "head_dim"),
                                             (b, 1, model_cfg.num_kv_heads, model_cfg.head_dim), mesh))
    cache_spec = KVCache(keys=(kv,) * model_cfg.num_layers, values=(kv,) * model_cfg.num_layers,
                         mask=batch_sharding(mesh, 2), index=NamedSharding(mesh, P()),
                         lengths=batch_sharding(mesh, 1))
    st = gen._Static(max_new_tokens=new_tokens, greedy=False, use_top_k=False, use_top_p=True)
    fn = gen._compiled(graphdef, st, mesh, cache_spec)

    def arr(shape, dtype, sharding=None):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding or NamedSharding(mesh, P()))

    ids = arr((b, prompt_len), jnp.int32, batch_sharding(mesh, 2))
    args = (params, ids, ids, arr((b,), jnp.bool_, batch_sharding(mesh, 1)), arr((), jnp.uint32),
            arr((gen._EOS_SLOTS,), jnp.int32), arr((), jnp.int32), arr((), jnp.float32),
            arr((), jnp.int32), arr((), jnp.float32))
    return compile_stats(fn.lower(*args))


# ----------------------------------------------------------------------------------- report

@dataclasses.dataclass
class AotReport:
    topology: str
    chips: int
    tokens_per_chip: int
    num_params: int
    real: CompileStats
    costs: CompileStats | None   # None: the loop-free cost compiles were skipped (memory only)
    generate: CompileStats | None
    peak: float

    @property
    def flops(self) -> float:
        """FLOPs per step per chip: the compiler's count plus the Pallas attention kernels'."""
        return self.costs.flops + self.costs.kernel_flops

    @property
    def est_seconds(self) -> float:
        """The compiler's estimated step time plus the attention kernels at the chip's peak
        (the compiler has no cost for them; at peak, like its own roofline `optimal_seconds`)."""
        return self.costs.est_seconds + self.costs.kernel_flops / self.peak

    @property
    def flops_per_token(self) -> float:
        return self.flops / self.tokens_per_chip

    @property
    def est_us_per_token(self) -> float:
        return self.est_seconds / self.tokens_per_chip * 1e6

    @property
    def est_mfu(self) -> float:
        """6 N FLOPs per token (model FLOPs, no recomputation) over the estimated step time."""
        if self.est_seconds <= 0:
            return float("nan")
        return 6 * self.num_params * self.tokens_per_chip / self.est_seconds / self.peak

    def summary_line(self) -> str:
        head = (f"aot: topology={self.topology} tokens_per_chip={self.tokens_per_chip} "
                f"total_gib={self.real.total / GiB:.2f} compile_s={self.real.compile_s:.0f} ")
        if self.costs is None:
            return head + "flops_per_token=skipped est_us_per_token=skipped est_mfu=skipped"
        return head + (f"flops_per_token={self.flops_per_token / 1e9:.4g}G "
                       f"est_us_per_token={self.est_us_per_token:.4g} est_mfu={self.est_mfu:.3f}")


def format_report(r: AotReport, plan=None) -> str:
    """The report; with `plan` (a musc_jax.memory_plan.MemoryPlan of the same config) the
    planner's per-device figures beside the compiler's."""
    def g(n):
        return f"{n / GiB:8.2f} GiB"

    m = r.real
    lines = [
        f"TPU ahead-of-time compile for {r.topology} ({r.chips} chips), per chip:",
        "  train step (the real program; memory from the TPU compiler):",
        f"    arguments {g(m.argument)}   outputs {g(m.output)}   aliased (donated) {g(m.alias)}",
        f"    temporaries {g(m.temp)}   code {g(m.code)}   total {g(m.total)}",
        f"    compile time here {m.compile_s:.0f} s",
    ]
    if plan is not None:
        lines.append(f"    planner ({plan.profile.name} profile): persistent {g(plan.persistent)}   "
                     f"total {g(plan.total())}   (compiler / planner = "
                     f"{m.total / max(plan.total(), 1):.2f})")
    if r.costs is None:
        lines.append("  train step costs: skipped (--aot_costs=false: memory only)")
    else:
        lines += _cost_lines(r)
    if r.generate is not None:
        lines.append(format_generation(r))
    lines.append(r.summary_line())
    return "\n".join(lines)


def _cost_lines(r: AotReport) -> list[str]:
    k = r.costs.kernel_flops
    return [
        "  train step costs (loop-free compile: layers unrolled, collective matmul off, one "
        "logits chunk; above 2 layers and 256 positions extended from 1- and 2-layer compiles "
        "with 128- and 256-position logits chunks):",
        f"    compiler FLOPs {r.costs.flops:.3e} per step, estimated time {r.costs.est_seconds:.3f} s",
        f"    + splash-attention kernels (no compiler cost; counted from the HLO, at peak): "
        f"{k:.3e} FLOPs, {k / r.peak:.3f} s",
        f"    = {r.flops_per_token / 1e9:.1f} G FLOPs per token (6N = {6 * r.num_params / 1e9:.1f} G; "
        f"N = {r.num_params / 1e9:.2f} B params), {r.est_us_per_token:.1f} us per token per chip",
        f"    MFU implied by the estimate (6N tokens / est. time / "
        f"{r.peak / 1e12:.0f} TFLOP/s): {r.est_mfu:.3f} (compiler's part alone, kernels as "
        f"free: {r.costs.flops / r.tokens_per_chip / 1e9:.1f} G per token, "
        f"MFU {6 * r.num_params * r.tokens_per_chip / max(r.costs.est_seconds, 1e-30) / r.peak:.3f})",
    ]


def format_generation(r: AotReport) -> str:
    g = r.generate
    return (f"  generation (prefill + decode loop): total {g.total / GiB:.2f} GiB "
            f"(temporaries {g.temp / GiB:.2f} GiB), compile {g.compile_s:.0f} s")


def aot_report(config, model_cfg, generation: bool = True,
               on_train: Callable[[AotReport], None] | None = None,
               costs: bool = True) -> AotReport:
    """Compile the config's train step (and generation loop) for its TPU topology.
    `on_train` is called with the train step's report before the generation loop compiles;
    `costs=False` skips the loop-free cost compiles (FLOPs, estimated time: the slow part)."""
    topology = str(config.plan.get("topology", "") or "")
    if not topology:
        raise ValueError("plan.aot=tpu needs plan.topology (a TPU slice such as v5p:2x4x4); the "
                         "TPU presets of configs/llama3_8b_*.py set it, e.g. <config>.py:v5p64")
    devices = topology_devices(topology)
    real, cost, prog = compile_train(config, model_cfg, devices, costs=costs)
    report = AotReport(topology=topology, chips=len(devices), tokens_per_chip=prog.tokens_per_chip,
                       num_params=prog.num_params, real=real, costs=cost, generate=None,
                       peak=peak_flops(topology))
    if on_train is not None:
        on_train(report)
    if generation:
        report.generate = compile_generate(config, model_cfg, devices)
    return report
