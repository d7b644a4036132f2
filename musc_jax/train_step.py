"""The jitted train and eval steps: policy forward, reference, token weights, loss, update.

Pure functions of (params, opt_state, batch, ref_params). `Trainer` compiles them with explicit
in/out shardings and donated state. Batches are dicts of [B, T] arrays (see
`musc_jax.data.batching`); with gradient accumulation every array has a leading [A] microbatch
axis and the step scans over it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from musc_jax.losses import LossConfig, preference_loss, sft_loss
from musc_jax.scoring import compute_contrast_stats, contrast_weights, response_token_logps


@dataclass(frozen=True)
class StepConfig:
    """What the step computes (static under jit)."""

    objective: str = "preference"       # "preference" | "sft"
    loss: LossConfig = LossConfig()
    reference: str = "online"           # "online" | "precompute" | "none"
    weights: str = "dataset"            # "dataset" | "dynamic" | "uniform"
    weight_kind: str = "kl"
    w_max: float = 2.0
    grad_accum: int = 1
    # The LM head projects only the last this many positions (no response token before them:
    # the trainer sets it per batch from `logits_window`); None = every position.
    logits_window: int | None = None


def _forward_logps(graphdef, params, ids, mask, response_mask, window: int | None = None):
    """Teacher-forced per-token log-probs [B, T] of the response tokens (0 elsewhere)."""
    return response_token_logps(nnx.merge(graphdef, params), ids, mask, response_mask,
                                window=window)


def _pair_inputs(batch):
    ids = jnp.concatenate([batch["chosen_ids"], batch["rejected_ids"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    resp = jnp.concatenate([batch["chosen_response_mask"], batch["rejected_response_mask"]])
    return ids, mask, resp


def _dynamic_weights(graphdef, params, batch, cfg: StepConfig):
    """MuSC token weights from the current policy, under stop-gradient (DESIGN 5.2)."""
    model = nnx.merge(graphdef, jax.lax.stop_gradient(params))
    out = []
    for side in ("chosen", "rejected"):
        stats = compute_contrast_stats(
            model, batch[f"{side}_ids"], batch[f"{side}_mask"], batch[f"{side}_alt_ids"],
            batch[f"{side}_alt_mask"], batch[f"{side}_response_mask"],
            batch[f"{side}_alt_response_mask"], cfg.weight_kind)
        out.append(contrast_weights(stats, batch[f"{side}_response_mask"], cfg.w_max))
    return out


def preference_loss_fn(graphdef, cfg: StepConfig, pair_loss: Callable = preference_loss) -> Callable:
    """loss(params, batch, ref_params) -> (loss, metrics) for one (micro)batch.

    `pair_loss` has the signature of `musc_jax.losses.preference_loss`; swap it to try a new loss.
    """

    def loss(params, batch, ref_params):
        ids, mask, resp = _pair_inputs(batch)
        b = batch["chosen_ids"].shape[0]
        policy = _forward_logps(graphdef, params, ids, mask, resp, cfg.logits_window)
        if cfg.reference == "online":
            ref = jax.lax.stop_gradient(
                _forward_logps(graphdef, ref_params, ids, mask, resp, cfg.logits_window))
        elif cfg.reference == "precompute":
            ref = jnp.concatenate([batch["ref_chosen_token_logps"], batch["ref_rejected_token_logps"]]) * resp
        else:
            ref = jnp.zeros_like(policy)
        weights = (None, None)
        if cfg.loss.a_tok != 0:
            if cfg.weights == "dataset":
                weights = (batch["chosen_weights"], batch["rejected_weights"])
            elif cfg.weights == "dynamic":
                weights = tuple(_dynamic_weights(graphdef, params, batch, cfg))
            else:
                weights = (batch["chosen_response_mask"], batch["rejected_response_mask"])
        value, metrics = pair_loss(
            policy[:b], policy[b:], ref[:b], ref[b:], resp[:b], resp[b:], weights[0], weights[1],
            cfg=cfg.loss)
        metrics["tokens"] = jnp.sum(mask).astype(jnp.float32)
        return value, metrics

    return loss


def sft_loss_fn(graphdef, window: int | None = None) -> Callable:
    """Token-mean negative log-likelihood of the response tokens."""

    def loss(params, batch, ref_params=None):
        resp = batch["response_mask"]
        logps = _forward_logps(graphdef, params, batch["ids"], batch["mask"], resp, window)
        n = jnp.maximum(jnp.sum(resp), 1.0)
        value = -jnp.sum(logps) / n
        metrics = {"loss": value, "loss/sft": jnp.mean(sft_loss(logps, resp)),
                   "tokens": jnp.sum(batch["mask"]).astype(jnp.float32)}
        return value, metrics

    return loss


def make_loss_fn(graphdef, cfg: StepConfig, pair_loss: Callable | None = None) -> Callable:
    if cfg.objective == "sft":
        return sft_loss_fn(graphdef, cfg.logits_window)
    return preference_loss_fn(graphdef, cfg, pair_loss or preference_loss)


def make_train_step(graphdef, cfg: StepConfig, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, pair_loss: Callable | None = None) -> Callable:
    """step(params, opt_state, batch, ref_params) -> (params, opt_state, metrics)."""
    loss_fn = make_loss_fn(graphdef, cfg, pair_loss)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(params, opt_state, batch, ref_params):
        if cfg.grad_accum == 1:
            (_, metrics), grads = grad_fn(params, batch, ref_params)
        else:
            def micro(carry, mb):
                (_, m), g = grad_fn(params, mb, ref_params)
                return jax.tree.map(jnp.add, carry, (g, m)), None

            zero_g = jax.tree.map(jnp.zeros_like, params)
            first = jax.tree.map(lambda x: x[0], batch)
            zero_m = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                                  jax.eval_shape(lambda: loss_fn(params, first, ref_params)[1]))
            (grads, metrics), _ = jax.lax.scan(micro, (zero_g, zero_m), batch)
            scale = 1.0 / cfg.grad_accum
            grads = jax.tree.map(lambda g: g * scale, grads)
            tokens = metrics["tokens"]
            metrics = jax.tree.map(lambda m: m * scale, metrics)
            metrics["tokens"] = tokens
        updates, opt_state = tx.update(grads, opt_state, params)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["lr"] = schedule(_opt_count(opt_state))
        params = optax.apply_updates(params, updates)
        return params, opt_state, metrics

    return step


DEFAULT_COMPILATION_CACHE = "~/.cache/musc_jax/jax"


def enable_compilation_cache(directory: str | None = DEFAULT_COMPILATION_CACHE) -> str | None:
    """Keep compiled steps on disk in `directory` ("" or None: off), so that a rerun or a resume
    of the same shapes loads them instead of compiling again. Returns the directory used."""
    if not directory:
        return None
    path = os.path.expanduser(directory)
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    # Cache every step that took a noticeable time to compile (the default skips < 1 s ones).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def make_eval_step(graphdef, cfg: StepConfig, pair_loss: Callable | None = None) -> Callable:
    loss_fn = make_loss_fn(graphdef, cfg, pair_loss)

    def step(params, batch, ref_params):
        return loss_fn(params, batch, ref_params)[1]

    return step


def _opt_count(opt_state) -> jax.Array:
    """The optimizer's update count before this update (the schedule's argument)."""
    # Every counter in the chain (adam, schedule) advances once per update: take the first.
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    if not found:  # a stateless optimizer (e.g. plain SGD) has no counter
        return jnp.zeros((), jnp.int32)
    return jnp.maximum(found[0][1] - 1, 0)
