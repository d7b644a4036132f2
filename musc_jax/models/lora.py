"""LoRA: train low-rank adapters of the decoder's matrices; the base weights stay frozen.

For a kernel W whose input axes are I and output axes O, the adapted kernel is

    W' = W + (alpha / rank) * A @ B,     A [*lead, *I, rank],  B [*lead, rank, *O]

(`lead` is the stacked-layer axis of `model.scan_layers`, absent otherwise), so x @ W' = x @ W +
(alpha / rank) * (x @ A) @ B, as in PEFT's LoRA. A starts uniform in +-1/sqrt(fan_in) and B at
zero, so training starts from the base model exactly.

The adapters are a plain dict {parameter path: {"a", "b"}} beside the base `nnx.State`; the base is
never differentiated, so gradients and AdamW moments exist for the adapters only. The step
(`make_train_step`) has the trainer's signature step(adapter, opt_state, batch, base): the base
arrives where the full-fine-tuning step takes the reference, because with LoRA the reference *is*
the base (adapter off): `reference.mode=online` costs no second copy of the weights.

The adapted kernels are formed in the step (`merge`) and the model runs unchanged; the library
route (qwix's LoraProvider, as Tunix uses) intercepts `dot_general`/`einsum` calls whose operand
is a module parameter, which our decoder's cast-then-matmul kernels (`kernel[...].astype(dtype)`,
reshaped to 2-D) and scanned layers do not expose. Export merges with the same `merge`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from musc_jax.sharding import logical_to_spec

# Kernel name -> (number of input axes, number of output axes), after any leading stacked axes.
TARGETS: dict[str, tuple[int, int]] = {
    "q_proj": (1, 2), "k_proj": (1, 2), "v_proj": (1, 2), "o_proj": (2, 1),
    "gate_proj": (1, 1), "up_proj": (1, 1), "down_proj": (1, 1),
}

Adapter = dict[str, dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int
    alpha: float
    targets: tuple[str, ...]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, lora) -> "LoraConfig | None":
        """From `config.model.lora` (rank 0: no LoRA, None). Bad values raise ValueError."""
        rank = int(lora.rank)
        if rank == 0:
            return None
        targets = tuple(t.strip() for t in str(lora.targets).split(",") if t.strip())
        if rank < 0:
            raise ValueError(f"config model.lora.rank={rank}: must be >= 0 (0 = full fine-tuning)")
        if not float(lora.alpha) > 0:
            raise ValueError(f"config model.lora.alpha={lora.alpha}: must be > 0")
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise ValueError(f"config model.lora.targets={lora.targets!r}: unknown {unknown or 'empty'}; "
                             f"choose from {','.join(TARGETS)}")
        return cls(rank=rank, alpha=float(lora.alpha), targets=targets)


def _path_name(path) -> str:
    return "/".join(str(p) for p in path)


def targets_of(params: nnx.State, cfg: LoraConfig) -> dict[str, tuple[Any, nnx.Variable, int]]:
    """{path name: (path, variable, number of leading stacked axes)} of the adapted kernels."""
    out = {}
    for path, var in nnx.to_flat_state(params):
        name = str(path[-1])
        if name in cfg.targets:
            n_in, n_out = TARGETS[name]
            out[_path_name(path)] = (path, var, var.ndim - n_in - n_out)
    if not out:
        raise ValueError(f"model.lora.targets={','.join(cfg.targets)} matches no parameter")
    return out


def _factor_axes(var: nnx.Variable, lead: int, n_in: int):
    axes = var.get_metadata().get("logical_axes") or (None,) * var.ndim
    a = (*axes[:lead + n_in], None)
    b = (*axes[:lead], None, *axes[lead + n_in:])
    return a, b


def _factor_shapes(shape, lead: int, n_in: int, rank: int):
    return (*shape[:lead + n_in], rank), (*shape[:lead], rank, *shape[lead + n_in:])


def adapter_shardings(params: nnx.State, cfg: LoraConfig, mesh: Mesh) -> Adapter:
    """NamedShardings of the adapters: A follows its kernel's input axes, B its output axes."""
    out = {}
    for name, (path, var, lead) in targets_of(params, cfg).items():
        n_in = TARGETS[str(path[-1])][0]
        a_axes, b_axes = _factor_axes(var, lead, n_in)
        a_shape, b_shape = _factor_shapes(var.shape, lead, n_in, cfg.rank)
        out[name] = {"a": NamedSharding(mesh, logical_to_spec(a_axes, a_shape, mesh)),
                     "b": NamedSharding(mesh, logical_to_spec(b_axes, b_shape, mesh))}
    return out


def init_adapter(params: nnx.State, cfg: LoraConfig, key: jax.Array, dtype=jnp.float32) -> Adapter:
    """Fresh adapters: A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PEFT's default), B = 0."""
    out = {}
    for i, (name, (path, var, lead)) in enumerate(sorted(targets_of(params, cfg).items())):
        n_in = TARGETS[str(path[-1])][0]
        a_shape, b_shape = _factor_shapes(var.shape, lead, n_in, cfg.rank)
        bound = 1.0 / math.sqrt(math.prod(var.shape[lead:lead + n_in]))
        a = jax.random.uniform(jax.random.fold_in(key, i), a_shape, dtype, -bound, bound)
        out[name] = {"a": a, "b": jnp.zeros(b_shape, dtype)}
    return out


def delta(a: jax.Array, b: jax.Array, lead: int, scale: float) -> jax.Array:
    """scale * A @ B in the kernel's layout [*lead, *I, *O] (float32)."""
    ls, rank = a.shape[:lead], a.shape[-1]
    i_shape, o_shape = a.shape[lead:-1], b.shape[lead + 1:]
    a2 = a.reshape(*ls, math.prod(i_shape), rank).astype(jnp.float32)
    b2 = b.reshape(*ls, rank, math.prod(o_shape)).astype(jnp.float32)
    return (scale * (a2 @ b2)).reshape(*ls, *i_shape, *o_shape)


def merge(params: nnx.State, adapter: Adapter, cfg: LoraConfig) -> nnx.State:
    """The base parameters with every adapted kernel replaced by W + scale * A @ B (in W's dtype).
    Traceable; the base is read, never changed."""
    flat = []
    for path, var in nnx.to_flat_state(params):
        name = _path_name(path)
        if name in adapter:
            lead = var.ndim - sum(TARGETS[str(path[-1])])
            d = delta(adapter[name]["a"], adapter[name]["b"], lead, cfg.scale)
            var = var.replace((var[...].astype(jnp.float32) + d).astype(var.dtype))
        flat.append((path, var))
    return nnx.from_flat_state(flat)


def num_params(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


# ------------------------------------------------------------------------------------- steps

def make_train_step(graphdef, step_cfg, lora: LoraConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, pair_loss: Callable | None = None) -> Callable:
    """step(adapter, opt_state, batch, base) -> (adapter, opt_state, metrics).

    The loss is musc_jax.train_step's, on the merged parameters, with the base as the reference
    (online) and gradients for the adapters only; `step_cfg.grad_accum` microbatches are summed
    by a scan over the batch's leading axis, as in the full fine-tuning step."""
    from musc_jax.train_step import _opt_count, make_loss_fn
    loss_fn = make_loss_fn(graphdef, step_cfg, pair_loss)

    def adapter_loss(adapter, batch, base):
        return loss_fn(merge(base, adapter, lora), batch, base)

    grad_fn = jax.value_and_grad(adapter_loss, has_aux=True)

    def accumulate(adapter, batch, base):
        if step_cfg.grad_accum == 1:
            (_, metrics), grads = grad_fn(adapter, batch, base)
            return grads, metrics

        def micro(carry, mb):
            (_, m), g = grad_fn(adapter, mb, base)
            return jax.tree.map(jnp.add, carry, (g, m)), None

        first = jax.tree.map(lambda x: x[0], batch)
        shapes = jax.eval_shape(lambda: grad_fn(adapter, first, base))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[1], shapes[0][1]))
        (grads, metrics), _ = jax.lax.scan(micro, zeros, batch)
        n = step_cfg.grad_accum
        tokens = metrics["tokens"]
        grads, metrics = jax.tree.map(lambda x: x / n, (grads, metrics))
        metrics["tokens"] = tokens
        return grads, metrics

    def step(adapter, opt_state, batch, base):
        grads, metrics = accumulate(adapter, batch, base)
        updates, opt_state = tx.update(grads, opt_state, adapter)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = schedule(_opt_count(opt_state))
        return optax.apply_updates(adapter, updates), opt_state, metrics

    return step


def make_eval_step(graphdef, step_cfg, lora: LoraConfig, pair_loss: Callable | None = None) -> Callable:
    """step(adapter, batch, base) -> metrics."""
    from musc_jax.train_step import make_loss_fn
    loss_fn = make_loss_fn(graphdef, step_cfg, pair_loss)

    def step(adapter, batch, base):
        return loss_fn(merge(base, adapter, lora), batch, base)[1]

    return step
