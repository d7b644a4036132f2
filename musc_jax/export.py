"""python -m musc_jax.export --config configs/<x>.py [--config.a.b=value ...] [--out=DIR] [--step=N]

Writes the latest checkpoint (or `--step`) of a run (`<workdir>/checkpoints`) as an HF directory
that transformers loads: config.json, safetensors and the tokenizer of `model.path`. The output
goes to `--out` (default `<workdir>/export`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from absl import flags

from musc_jax.cli import define_config_flag, main_with_config

_CONFIG = define_config_flag()
_OUT = flags.DEFINE_string("out", None, "Output HF directory (default: <workdir>/export).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
log = logging.getLogger("musc_jax.export")


def export_checkpoint(config, out_dir: str | Path | None = None, step: int | None = None) -> Path:
    """Restore the run's checkpoint (latest, or `step`) and save it as an HF directory."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from musc_jax import config as config_lib
    from musc_jax.checkpoint import Checkpointer
    from musc_jax.errors import MissingFileError, UserError
    from musc_jax.models import from_pretrained, load_tokenizer, save_pretrained
    from musc_jax.models import lora as lora_lib
    from musc_jax.optim import make_optimizer
    from musc_jax.sharding import make_mesh, state_shardings

    directory = Path(config.workdir) / "checkpoints"
    if not directory.is_dir():  # checked before orbax creates it or the model loads
        raise MissingFileError(f"{directory}: no checkpoints (config workdir={config.workdir!r}); "
                               "train first, or point --config.workdir at a trained run")
    ckpt = Checkpointer(directory, every=1, keep=None)
    try:  # closed on every path: orbax's cleanup thread otherwise prints a second traceback
        steps = ckpt.manager.all_steps()
        if not steps:
            raise MissingFileError(f"{directory}: no complete checkpoint to export; train first")
        if step is not None and step not in steps:
            raise UserError(f"{directory}: no checkpoint for step {step}; steps: {sorted(steps)}")
        step = max(steps) if step is None else step
        stored = ckpt.read_meta(step).get("config") or {}
        model_keys = {k: v for k, v in config_lib.training_fingerprint(config).items()
                      if k.startswith("model.")}
        diff = config_lib.fingerprint_diff(stored, model_keys)
        if diff:
            raise UserError(f"{directory} (step {step}) was trained from another model: "
                            f"{'; '.join(diff)}; export with the run's own config")
        mesh = make_mesh(**config.mesh)
        model = from_pretrained(config.model.path, dtype=jnp.dtype(config.model.param_dtype),
                                mesh=mesh)
        graphdef, params = nnx.split(model)
        # With LoRA the checkpoint holds the adapters; the base weights come from model.path.
        lora = lora_lib.LoraConfig.from_config(config.model.lora)
        trained, trained_sh = params, state_shardings(params, mesh)
        if lora is not None:
            trained = jax.eval_shape(lambda p: lora_lib.init_adapter(p, lora, jax.random.key(0)), params)
            trained_sh = lora_lib.adapter_shardings(params, lora, mesh)
        # The checkpoint holds params and optimizer state; rebuild both shapes to read it.
        tx, _ = make_optimizer(config.optim, total_steps=1)
        abstract = {"params": jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            trained, trained_sh)}
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        abstract["opt_state"] = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            jax.eval_shape(tx.init, trained))
        restored, _, step = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    out = Path(out_dir or Path(config.workdir) / "export")
    final = restored["params"] if lora is None else lora_lib.merge(params, restored["params"], lora)
    save_pretrained(nnx.merge(graphdef, final), out, dtype=config.export.dtype or None,
                    tokenizer=load_tokenizer(config.model.tokenizer or config.model.path))
    log.info("exported step %d to %s", step, out)
    return out


if __name__ == "__main__":
    main_with_config(_CONFIG, lambda c: export_checkpoint(c, _OUT.value, _STEP.value))
