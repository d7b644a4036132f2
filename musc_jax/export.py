"""python -m musc_jax.export --config configs/<x>.py [--config.export.out=DIR]

Writes the latest checkpoint of a run (`<workdir>/checkpoints`) as an HF directory that
transformers loads: config.json, safetensors and the tokenizer of `model.path`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from musc_jax.cli import define_config_flag, main_with_config

_CONFIG = define_config_flag()
log = logging.getLogger("musc_jax.export")


def export_checkpoint(config, out_dir: str | Path | None = None, step: int | None = None) -> Path:
    """Restore the run's checkpoint (latest, or `step`) and save it as an HF directory."""
    import jax.numpy as jnp
    from flax import nnx

    from musc_jax.checkpoint import Checkpointer
    from musc_jax.models import from_pretrained, load_tokenizer, save_pretrained
    from musc_jax.sharding import make_mesh, state_shardings

    mesh = make_mesh(**config.mesh)
    model = from_pretrained(config.model.path, dtype=jnp.dtype(config.model.param_dtype), mesh=mesh)
    graphdef, params = nnx.split(model)
    ckpt = Checkpointer(Path(config.workdir) / "checkpoints", every=1, keep=None)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(f"{ckpt.directory}: no checkpoint to export; train first")
    import jax
    from musc_jax.optim import make_optimizer
    # The checkpoint holds params and optimizer state; rebuild both shapes to read it.
    tx, _ = make_optimizer(config.optim, total_steps=1)
    abstract = {"params": jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                       params, state_shardings(params, mesh))}
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract["opt_state"] = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(tx.init, params))
    restored, _, step = ckpt.restore(abstract, step)
    state = restored["params"]
    ckpt.close()
    out = Path(out_dir or Path(config.workdir) / "export")
    save_pretrained(nnx.merge(graphdef, state), out, dtype=config.export.dtype or None,
                    tokenizer=load_tokenizer(config.model.tokenizer or config.model.path))
    log.info("exported step %d to %s", step, out)
    return out


if __name__ == "__main__":
    main_with_config(_CONFIG, lambda c: export_checkpoint(c))
