"""Optimizer: AdamW with warmup + cosine/linear decay, global-norm clipping, decay mask."""

from __future__ import annotations

import jax
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine", final_lr_ratio: float = 0.0) -> optax.Schedule:
    """Linear warmup to `lr` over `warmup_steps`, then `schedule` decay until `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"optim.schedule={schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=final_lr_ratio)
    elif schedule == "linear":
        decay = optax.linear_schedule(lr, lr * final_lr_ratio, decay_steps)
    else:
        decay = optax.constant_schedule(lr)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (decay on matrices only) behind global-norm clipping; returns (tx, schedule)."""
    schedule = learning_rate_schedule(
        optim_cfg.lr, total_steps, optim_cfg.warmup_steps, optim_cfg.schedule,
        optim_cfg.final_lr_ratio)
    parts = []
    if optim_cfg.clip_norm and optim_cfg.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
    parts.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay,
                             mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)))
    return optax.chain(*parts), schedule
