"""Train state, the compiled step, the loop, checkpoints and export.

`Trainer(config)` wires the pieces: mesh -> model (loaded straight into its sharding) -> data
loader -> reference -> optimizer -> compiled step (explicit in/out shardings, donated state) ->
loop with metrics, NaN guard, orbax checkpoints and resume -> HF export.

Before anything expensive the config is validated, its input paths checked, the workdir proved
writable, and an existing checkpoint's training config compared with this one (a resume of a
different run is refused, naming the keys; `checkpoint.fresh=True` starts over). Nothing
non-finite is saved or exported: before every checkpoint and at the end the parameters after the
latest update, and the loss they give on the latest batch, must be finite.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from ml_collections import ConfigDict

from musc_jax import config as config_lib
from musc_jax import distributed
from musc_jax.multiprocess import barrier
from musc_jax.checkpoint import Checkpointer, abstract_like
from musc_jax.errors import UserError
from musc_jax.metrics import MetricsWriter, NonFiniteError, check_finite
from musc_jax.models import from_pretrained, load_tokenizer, save_pretrained
from musc_jax.models import lora as lora_lib
from musc_jax.optim import make_optimizer
from musc_jax.sharding import make_mesh, state_shardings
from musc_jax.train_step import StepConfig, enable_compilation_cache, make_eval_step, make_train_step
from musc_jax.training_data import TrainingData, build_training_data

log = logging.getLogger(__name__)


def step_config(c: ConfigDict) -> StepConfig:
    return StepConfig(
        objective=c.objective,
        loss=config_lib.loss_config(c) if c.objective == "preference" else StepConfig().loss,
        reference=c.reference.mode if c.objective == "preference" else "none",
        weights=c.weights.source, weight_kind=c.weights.kind, w_max=c.weights.w_max,
        grad_accum=c.optim.grad_accum)


class Trainer:
    """One training run described by a validated config."""

    def __init__(self, config: ConfigDict, pair_loss: Callable | None = None):
        """`pair_loss` replaces `musc_jax.losses.preference_loss` (same signature), e.g. a loss
        defined in a notebook."""
        config_lib.validate(config)
        # Several processes: what one writes (checkpoints, the reference cache) all must read.
        distributed.check_shared_dir(config.workdir)
        if config.reference.cache_dir and config.reference.mode == "precompute":
            distributed.check_shared_dir(config.reference.cache_dir, "reference.cache_dir")
        config_lib.check_paths(config)
        self.config = c = config
        self.workdir = config_lib.check_writable(c.workdir)
        if c.checkpoint.fresh:
            self._discard_previous_run()
        # Opened before the model loads so that a refused resume costs nothing. Saves are forced
        # by the loop, so `every` only matters to orbax's own bookkeeping.
        self.checkpointer = Checkpointer(self.workdir / "checkpoints",
                                         every=c.checkpoint.every or 1, keep=c.checkpoint.keep)
        try:
            self._init(c, pair_loss)
        except BaseException:
            self.checkpointer.close()  # else orbax's cleanup thread prints a second traceback
            raise

    def _init(self, c: ConfigDict, pair_loss: Callable | None) -> None:
        resume_meta = self._resume_meta(c)
        self.mesh = make_mesh(**c.mesh)
        distributed.check_tensor_within_hosts(self.mesh.devices)
        dtype = jnp.dtype(c.model.param_dtype)
        compute = jnp.dtype(c.model.compute_dtype) if c.model.compute_dtype else dtype
        enable_compilation_cache(c.compilation_cache)
        self.model = from_pretrained(c.model.path, dtype=dtype, mesh=self.mesh,
                                     compute_dtype=compute, remat=c.model.remat,
                                     attention=c.model.attention, scan_layers=c.model.scan_layers)
        self.tokenizer = load_tokenizer(c.model.tokenizer or c.model.path, self.model.config.vocab_size)
        self.model.activation_sharding = NamedSharding(self.mesh, P(("data", "fsdp"), None, None))
        self.graphdef, params = nnx.split(self.model)
        self.param_shardings = state_shardings(params, self.mesh)
        self.params = params
        self.cfg = step_config(c)
        self.data: TrainingData = build_training_data(c, self.tokenizer, self.mesh,
                                                      self.graphdef, self.params, self.cfg)
        self.total_steps = self.data.total_steps
        # LoRA (model.lora.rank > 0): from here `params` are the adapters, the only trained
        # state; the base weights stay frozen in `base_params` (see musc_jax.models.lora).
        self.lora = lora_lib.LoraConfig.from_config(c.model.lora)
        self.base_params = self.base_shardings = None
        if self.lora is not None:
            self.base_params, self.base_shardings = self.params, self.param_shardings
            self.param_shardings = lora_lib.adapter_shardings(self.base_params, self.lora, self.mesh)
            init = functools.partial(lora_lib.init_adapter, cfg=self.lora, key=jax.random.key(c.seed))
            self.params = jax.jit(init, out_shardings=self.param_shardings)(self.base_params)
        self.tx, self.schedule = make_optimizer(c.optim, self.total_steps)
        # Moments follow their parameters' shardings; scalars (step counts) are replicated.
        replicated = NamedSharding(self.mesh, P())
        self.opt_shardings = optax.tree_utils.tree_map_params(
            self.tx, lambda _, sharding: sharding, jax.eval_shape(self.tx.init, self.params),
            self.param_shardings, transform_non_params=lambda _: replicated)
        self.opt_state = jax.jit(self.tx.init, out_shardings=self.opt_shardings)(self.params)
        # The reference is a separate copy: the policy's buffers are donated to each step.
        self.ref_params = (jax.tree.map(jnp.copy, self.params)
                           if self.cfg.reference == "online" else None)
        if self.lora is not None:  # the LoRA step takes the base there; adapter off = reference
            self.ref_params = self.base_params
        self.step = 0
        self.callbacks: list[Callable[["Trainer"], None]] = []  # called after every step
        self.trace_count = 0  # times the train step was traced (tests check: once per bucket)
        self._compile(pair_loss)
        if resume_meta is not None:
            if int(resume_meta.get("total_steps", self.total_steps)) != self.total_steps:
                raise UserError(
                    f"{self.checkpointer.directory}: the checkpoint's run has "
                    f"{resume_meta['total_steps']} steps, this one {self.total_steps} with the same "
                    f"config (did {c.data.train} change?); set --config.checkpoint.fresh=True to "
                    "start over in this workdir, or use another workdir")
            self._restore()

    # ---- compilation -------------------------------------------------------------------------

    def _compile(self, pair_loss: Callable | None) -> None:
        self._pair_loss = pair_loss
        self._train_steps: dict[int | None, Callable] = {}
        if self.lora is None:
            eval_fn = make_eval_step(self.graphdef, self.cfg, pair_loss)
        else:
            eval_fn = lora_lib.make_eval_step(self.graphdef, self.cfg, self.lora, pair_loss)
        replicated = NamedSharding(self.mesh, P())
        ref_sh = self.param_shardings if self.ref_params is not None else None
        if self.lora is not None:
            ref_sh = self.base_shardings
        self._ref_sharding = ref_sh
        # Eval batches have no microbatch axis: their rows lie on axis 0, where a training batch
        # with grad_accum > 1 has its microbatches.
        eval_sh = self.data.eval_batch_sharding
        self._eval_step = jax.jit(eval_fn, in_shardings=(self.param_shardings, eval_sh, ref_sh),
                                  out_shardings=replicated)

        def flat_eval(params, batch, ref_params):  # microbatches (grad_accum) as one batch
            if self.cfg.grad_accum > 1:
                batch = {k: v.reshape(-1, *v.shape[2:]) for k, v in batch.items()}
            return eval_fn(params, batch, ref_params)

        self._check_step = jax.jit(flat_eval)
        self._finite_leaves = jax.jit(lambda t: jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), t))

    def train_step_for(self, window: int | None) -> Callable:
        """The jitted train step whose LM head projects the last `window` positions (None =
        all): one per window the batches use (`data.logits_windows` bounds them per length)."""
        if window not in self._train_steps:
            cfg = dataclasses.replace(self.cfg, logits_window=window)
            if self.lora is None:
                step_fn = make_train_step(self.graphdef, cfg, self.tx, self.schedule, self._pair_loss)
            else:
                step_fn = lora_lib.make_train_step(self.graphdef, cfg, self.lora, self.tx,
                                                   self.schedule, self._pair_loss)

            def counted(*args):
                self.trace_count += 1
                return step_fn(*args)

            self._train_steps[window] = jax.jit(
                counted, in_shardings=(self.param_shardings, self.opt_shardings,
                                       self.data.batch_sharding, self._ref_sharding),
                out_shardings=(self.param_shardings, self.opt_shardings,
                               NamedSharding(self.mesh, P())),
                donate_argnums=(0, 1))
        return self._train_steps[window]

    # ---- checkpoints -------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        return {"params": self.params, "opt_state": self.opt_state}

    def _discard_previous_run(self) -> None:
        """checkpoint.fresh: remove what an earlier run left in the workdir (process 0)."""
        if jax.process_index() == 0:
            for name in ("checkpoints", "tensorboard", "export"):
                if (self.workdir / name).exists():
                    shutil.rmtree(self.workdir / name)
            for name in ("metrics.jsonl", "train_config.json"):
                (self.workdir / name).unlink(missing_ok=True)
            log.info("checkpoint.fresh: removed the earlier run's checkpoints and metrics in %s",
                     self.workdir)
        # No process may open the checkpoints before process 0 has removed them.
        barrier("checkpoint_fresh")

    def _resume_meta(self, c: ConfigDict) -> dict | None:
        """The latest checkpoint's metadata if this run continues it; refuses one made by a
        different training config (naming the keys), and a workdir with checkpoints when
        checkpoint.resume=False (it would overwrite them step by step)."""
        latest = self.checkpointer.latest_step()
        if latest is None:
            return None
        where = self.checkpointer.directory
        if not c.checkpoint.resume:
            raise UserError(f"{where} holds checkpoints (latest step {latest}) and "
                            "checkpoint.resume=False: set --config.checkpoint.fresh=True to "
                            "discard them, or resume=True to continue, or use another workdir")
        meta = self.checkpointer.read_meta(latest)
        stored = meta.get("config")
        if stored is None:
            log.warning("%s: checkpoint from before configs were stored; resuming unchecked", where)
            return meta
        diff = config_lib.fingerprint_diff(stored, config_lib.training_fingerprint(c))
        if diff:
            raise UserError(
                f"{where} (step {latest}) was trained with a different config; refusing to "
                f"resume it. Differing keys: {'; '.join(diff)}. Set --config.checkpoint.fresh=True "
                "to start over in this workdir (deletes its checkpoints and metrics), or use "
                "another --config.workdir")
        return meta

    def _save(self, force: bool = False) -> None:
        meta = {"step": self.step, "loader": self.data.train_loader.state(),
                "total_steps": self.total_steps,
                "config": config_lib.training_fingerprint(self.config)}
        self.checkpointer.save(self.step, self._state(), meta, force=force)

    def check_updated_state(self, batch) -> None:
        """Raise NonFiniteError unless the parameters after the latest update, and the loss they
        give on `batch` (the latest training batch), are finite. Run before every save and at
        the end, so the final update is checked too."""
        ok = jax.device_get(self._finite_leaves(self.params))
        bad = [jax.tree_util.keystr(path) for path, good in
               jax.tree_util.tree_leaves_with_path(ok) if not bool(good)]
        if bad:
            raise NonFiniteError(f"step {self.step}: parameters non-finite after the update "
                                 f"(first: {bad[0]}; {len(bad)} arrays); nothing saved. Lower "
                                 "optim.lr, check the data, or enable optim.clip_norm.")
        metrics = jax.device_get(self._check_step(self.params, batch, self.ref_params))
        check_finite(self.step, {"loss": float(metrics["loss"])}, keys=("loss",),
                     when="after the update")

    def _restore(self) -> None:
        state, meta, step = self.checkpointer.restore(abstract_like(self._state()))
        self.params, self.opt_state = state["params"], state["opt_state"]
        self.step = int(meta["step"])
        self.data.train_loader.restore(meta["loader"])
        log.info("resumed from %s at step %d", self.checkpointer.directory, step)

    # ---- the loop ----------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        """Run to `total_steps`; returns the last step's metrics (host floats)."""
        c = self.config
        if jax.process_index() == 0:   # what this run trained with, beside its metrics
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "train_config.json").write_text(c.to_json_best_effort(indent=1) + "\n")
        writer = MetricsWriter(self.workdir, self.total_steps, initial_step=self.step)
        last: dict[str, float] = {}
        pending = None  # (step, device metrics, start time): fetched one step late, no stall
        try:
            while self.step < self.total_steps:
                t0 = time.time()
                batch, window = self.data.next_train()
                self.params, self.opt_state, metrics = self.train_step_for(window)(
                    self.params, self.opt_state, batch, self.ref_params)
                self.step += 1
                if pending is not None:
                    last = self._report(writer, *pending)
                pending = (self.step, metrics, t0)
                due = (c.checkpoint.every and self.step % c.checkpoint.every == 0)
                if due or self.step == self.total_steps:
                    last = self._report(writer, *pending)  # never save a non-finite state
                    pending = None
                    self.check_updated_state(batch)
                    self._save(force=True)
                if c.train.eval_every and self.step % c.train.eval_every == 0:
                    self._eval(writer)
                for callback in self.callbacks:
                    callback(self)
            if pending is not None:
                last = self._report(writer, *pending)
            if self.data.eval_batches:
                last.update({f"eval/{k}": v for k, v in self._eval(writer).items()})
        finally:
            self.checkpointer.wait()
            writer.close()
        return last

    def _report(self, writer: MetricsWriter, step: int, metrics, t0: float) -> dict[str, float]:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(step, host)
        host["step_time_s"] = time.time() - t0
        host["tokens_per_s"] = host.get("tokens", 0.0) / max(host["step_time_s"], 1e-9)
        if step % self.config.train.log_every == 0 or step == self.total_steps:
            writer.write(step, host)
        return host

    def _eval(self, writer: MetricsWriter) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        for batch in self.data.eval_batches():
            m = jax.device_get(self._eval_step(self.params, batch, self.ref_params))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        means = {k: v / max(n, 1) for k, v in sums.items()}
        if means:
            writer.write(self.step, means, split="eval")
        return means

    # ---- results -----------------------------------------------------------------------------

    def current_model(self) -> nnx.Module:
        """The trained policy (with LoRA: the base with the adapters merged in)."""
        if self.lora is not None:
            return nnx.merge(self.graphdef, lora_lib.merge(self.base_params, self.params, self.lora))
        return nnx.merge(self.graphdef, self.params)

    def export(self, out_dir: str | Path | None = None) -> Path:
        """Write the trained policy as an HF directory (with the tokenizer)."""
        out = Path(out_dir or self.workdir / "export")
        dtype = self.config.export.dtype or None
        return save_pretrained(self.current_model(), out, dtype=dtype, tokenizer=self.tokenizer)

    def close(self) -> None:
        self.checkpointer.close()


def run(config: ConfigDict, pair_loss: Callable | None = None) -> dict[str, float]:
    """Train as the config says, export the result, return the final metrics."""
    trainer = Trainer(config, pair_loss)
    try:
        metrics = trainer.train()
        if config.export.enabled:
            trainer.export()
        return metrics
    finally:
        trainer.close()


def run_sft(config: ConfigDict) -> dict[str, float]:
    """Train `config` with the SFT objective; export and return the final metrics."""
    with config.unlocked():
        config.objective = "sft"
    return run(config)


def tree_bytes_per_device(tree: Any) -> dict[Any, int]:
    """Bytes of `tree`'s arrays held by each device (for memory checks and the planner)."""
    out: dict[Any, int] = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out

