"""Mesh construction and the one table that maps logical axis names to mesh axes.

Parameters carry `logical_axes` metadata (e.g. ("embed", "heads", "head_dim")); `LOGICAL_RULES`
says which mesh axis each logical name is sharded over. FSDP shards `embed` over `fsdp`; tensor
parallelism shards `heads`/`kv_heads`/`mlp`/`vocab` over `tensor`; the batch is sharded over
("data", "fsdp"). A dimension that the mesh axis does not divide is replicated instead.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("length", None),
)


def make_mesh(data: int = 1, fsdp: int = -1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh; one size may be -1 for "the rest of the devices"."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))}: at most one may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh sizes {dict(zip(MESH_AXES, sizes))} do not divide "
                             f"{len(devices)} devices")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"found {len(devices)}; set one size to -1 to use the rest")
    # Auto axes: we place inputs and parameters explicitly and let GSPMD propagate the rest.
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(axes: Iterable[str | None] | None, shape: Sequence[int] | None = None,
                    mesh: Mesh | None = None,
                    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> P:
    """PartitionSpec for logical `axes`; with `shape` and `mesh`, undivisible dims are replicated."""
    if axes is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no rule; known: {', '.join(table)}")
        target = table.get(name) if name is not None else None
        members = (target,) if isinstance(target, str) else tuple(target or ())
        members = tuple(m for m in members if m not in used)
        if mesh is not None and shape is not None and members:
            size = int(np.prod([mesh.shape[m] for m in members]))
            if shape[i] % size:
                members = ()
        used.update(members)
        spec.append(None if not members else members[0] if len(members) == 1 else members)
    return P(*spec)


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules=LOGICAL_RULES) -> NamedSharding:
    """The NamedSharding of one parameter from its `logical_axes` metadata."""
    axes = var.get_metadata().get("logical_axes")
    return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules))


def state_shardings(state: nnx.State, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.State:
    """A tree like `state` whose leaves are NamedShardings (replicated where no axes are named)."""
    def one(x):
        if isinstance(x, nnx.Variable):
            return x.replace(variable_sharding(x, mesh, rules))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of a [B, ...] batch array: rows over ("data", "fsdp"), the rest replicated."""
    return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_RULES) -> nnx.Module:
    """Place every parameter of `model` on `mesh` as the rules say (in place; returns model)."""
    state = nnx.state(model)
    shardings = state_shardings(state, mesh, rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model

