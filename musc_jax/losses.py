"""Pure preference losses: sequence DPO family, token-weighted DPO, SFT, and their MuSC combination.

Every function here is a pure function of arrays (no trainer state) and can be called under
``jax.jit``; string and float hyper-parameters are Python values (static under jit). Shapes are
checked when the function is traced, and a mismatch raises ``ValueError`` naming the arguments.

Conventions (shared with the rest of ``musc_jax``):

* ``B`` is the number of preference pairs, ``T`` the padded token length.
* A per-token array ``[B, T]`` is aligned with the token ids: index ``t`` holds the value for token
  ``ids[:, t]`` (so the log-prob at ``t`` comes from the logits at ``t - 1``).
* Masks are 1 on response tokens and 0 on prompt and padding; token weights are 0 there too.
* All arithmetic is done in float32, whatever the input dtype.
* Hyper-parameters are never differentiated; reference log-probs and token weights are used as
  given, so a caller that computes them with the policy must wrap them in ``jax.lax.stop_gradient``.

Notation (DESIGN 5.3), with ``Δ_t(y) = log π(y_t | x, y_<t) - log π_ref(y_t | x, y_<t)``::

    z_seq = β [ Σ_t Δ_t(y+) - Σ_t Δ_t(y-) ]
    z_tok = β [ Σ_t w+_t Δ_t(y+) - Σ_t w-_t Δ_t(y-) ]
    L     = mean_batch( a_seq ℓ(z_seq) + a_tok ℓ(z_tok) + λ mean_t(-log π(y+_t | x, y+_<t)) )

with ``ℓ`` one of ``LOSS_TYPES``:

* ``sigmoid``: ``-(1 - ε) log σ(z) - ε log σ(-z)`` (ε = ``label_smoothing``; conservative DPO),
* ``ipo``:     ``(z / β - 1 / (2 β))²``,
* ``hinge``:   ``max(0, 1 - z)``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
ArrayLike = Any  # anything ``jnp.asarray`` accepts

__all__ = [
    "LOSS_TYPES",
    "LOSS_PRESETS",
    "LossConfig",
    "dpo_loss",
    "token_weighted_dpo_loss",
    "sft_loss",
    "sequence_logps",
    "preference_loss",
]

LOSS_TYPES: tuple[str, ...] = ("sigmoid", "ipo", "hinge")


# ----------------------------------------------------------------------------------------------
# validation helpers (run at trace time: shapes are static)


def _f32(x: ArrayLike) -> Array:
    return jnp.asarray(x).astype(jnp.float32)


def _check_same_shape(ndim: int, what: str, **arrays: Array) -> tuple[int, ...]:
    """All ``arrays`` must have rank ``ndim`` and one shape; returns it. ``what`` names the shape."""
    names = list(arrays)
    for name in names:
        if arrays[name].ndim != ndim:
            raise ValueError(f"{name} must have shape {what} (rank {ndim}), got shape {tuple(arrays[name].shape)}")
    first = names[0]
    shape = tuple(arrays[first].shape)
    for name in names[1:]:
        if tuple(arrays[name].shape) != shape:
            listing = ", ".join(f"{n}={tuple(arrays[n].shape)}" for n in names)
            raise ValueError(
                f"{name} has shape {tuple(arrays[name].shape)} but {first} has shape {shape}; "
                f"these must all have the same shape {what}: {listing}"
            )
    return shape


def _check_same_batch(chosen_name: str, chosen_shape: tuple[int, ...], rejected_name: str,
                      rejected_shape: tuple[int, ...]) -> None:
    if chosen_shape[0] != rejected_shape[0]:
        raise ValueError(
            f"{chosen_name} has shape {chosen_shape} and {rejected_name} has shape {rejected_shape}: "
            f"the batch sizes (first axis) must match, one chosen and one rejected response per pair"
        )


def _check_hparams(beta: Any, loss_type: Any, label_smoothing: Any) -> None:
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; known loss types: {', '.join(LOSS_TYPES)}")
    # Values are only checked when they are concrete Python numbers (they may be traced under jit).
    if isinstance(beta, numbers.Real) and not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if isinstance(label_smoothing, numbers.Real):
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must lie in [0, 0.5), got {label_smoothing}")
        if label_smoothing != 0.0 and loss_type != "sigmoid":
            raise ValueError(
                f"label_smoothing={label_smoothing} only applies to loss_type='sigmoid'; "
                f"loss_type={loss_type!r} would ignore it. Set label_smoothing=0.0."
            )


def _masked_sum(values: Array, weights: Array) -> Array:
    """Σ_t weights * values over the last axis, ignoring positions where the weight is 0.

    Positions with weight 0 contribute exactly 0 even when ``values`` is inf or NaN there (e.g. log-probs
    of padding), so garbage outside the response never leaks into the sums or their gradients.
    """
    return jnp.sum(jnp.where(weights != 0, weights * values, 0.0), axis=-1)


def _pair_loss(logratio_delta: Array, beta: float, loss_type: str, label_smoothing: float) -> Array:
    """ℓ applied to ``z = beta * logratio_delta``; ``logratio_delta`` is the unscaled margin z / β."""
    if loss_type == "sigmoid":
        z = beta * logratio_delta
        return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(z) - label_smoothing * jax.nn.log_sigmoid(-z)
    if loss_type == "ipo":
        return (logratio_delta - 1.0 / (2.0 * beta)) ** 2
    if loss_type == "hinge":
        return jax.nn.relu(1.0 - beta * logratio_delta)
    raise ValueError(f"unknown loss_type {loss_type!r}; known loss types: {', '.join(LOSS_TYPES)}")


# ----------------------------------------------------------------------------------------------
# public loss functions


def dpo_loss(
    policy_chosen_logps: ArrayLike,
    policy_rejected_logps: ArrayLike,
    ref_chosen_logps: ArrayLike,
    ref_rejected_logps: ArrayLike,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[Array, Array, Array]:
    """Sequence-level DPO family loss per pair.

    Args:
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps: ``[B]`` summed
        response log-probs under the policy and the reference.
      beta: β, the KL strength (> 0).
      loss_type: one of ``LOSS_TYPES`` (``sigmoid``, ``ipo``, ``hinge``).
      label_smoothing: ε in [0, 0.5), only for ``sigmoid`` (conservative DPO).

    Returns:
      ``(losses [B], chosen_rewards [B], rejected_rewards [B])`` with ``losses = ℓ(z)``,
      ``z = β((πc - rc) - (πr - rr))`` and rewards ``β (policy - ref)`` per side; the rewards are
      for logging and carry no gradient.
    """
    _check_hparams(beta, loss_type, label_smoothing)
    pc, pr, rc, rr = map(_f32, (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps))
    _check_same_shape(
        1, "[B]", policy_chosen_logps=pc, policy_rejected_logps=pr, ref_chosen_logps=rc, ref_rejected_logps=rr
    )
    chosen_logratios = pc - rc
    rejected_logratios = pr - rr
    losses = _pair_loss(chosen_logratios - rejected_logratios, beta, loss_type, label_smoothing)
    chosen_rewards = jax.lax.stop_gradient(beta * chosen_logratios)
    rejected_rewards = jax.lax.stop_gradient(beta * rejected_logratios)
    return losses, chosen_rewards, rejected_rewards


def token_weighted_dpo_loss(
    policy_chosen_token_logps: ArrayLike,
    policy_rejected_token_logps: ArrayLike,
    ref_chosen_token_logps: ArrayLike,
    ref_rejected_token_logps: ArrayLike,
    chosen_weights: ArrayLike,
    rejected_weights: ArrayLike,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> Array:
    """MuSC token-weighted DPO loss per pair: ``ℓ(z_tok)`` with
    ``z_tok = β (Σ_t w+_t Δ_t(y+) - Σ_t w-_t Δ_t(y-))`` and ``Δ = policy - ref`` per token.

    Args:
      policy_chosen_token_logps, ref_chosen_token_logps, chosen_weights: ``[B, Tc]``.
      policy_rejected_token_logps, ref_rejected_token_logps, rejected_weights: ``[B, Tr]``
        (usually ``Tr == Tc``). Weights are 0 on prompt and padding, so the sums (not means) run over
        response tokens only; log-probs where the weight is 0 are ignored, even if not finite.
      beta, loss_type, label_smoothing: as in :func:`dpo_loss`.

    Returns:
      ``losses [B]``. With weights equal to the response mask this is :func:`dpo_loss` on the summed
      response log-probs.
    """
    _check_hparams(beta, loss_type, label_smoothing)
    pc, pr, rc, rr, wc, wr = map(
        _f32,
        (
            policy_chosen_token_logps,
            policy_rejected_token_logps,
            ref_chosen_token_logps,
            ref_rejected_token_logps,
            chosen_weights,
            rejected_weights,
        ),
    )
    c_shape = _check_same_shape(
        2, "[B, T]", policy_chosen_token_logps=pc, ref_chosen_token_logps=rc, chosen_weights=wc
    )
    r_shape = _check_same_shape(
        2, "[B, T]", policy_rejected_token_logps=pr, ref_rejected_token_logps=rr, rejected_weights=wr
    )
    _check_same_batch("policy_chosen_token_logps", c_shape, "policy_rejected_token_logps", r_shape)
    delta = _masked_sum(pc - rc, wc) - _masked_sum(pr - rr, wr)
    return _pair_loss(delta, beta, loss_type, label_smoothing)


def sequence_logps(token_logps: ArrayLike, mask: ArrayLike) -> Array:
    """Summed log-prob of the masked (response) tokens: ``[B, T], [B, T] -> [B]``.

    Positions where ``mask`` is 0 are ignored, even if their log-prob is not finite.
    """
    lp, m = _f32(token_logps), _f32(mask)
    _check_same_shape(2, "[B, T]", token_logps=lp, mask=m)
    return _masked_sum(lp, m)


def sft_loss(token_logps: ArrayLike, mask: ArrayLike) -> Array:
    """Per-sequence negative log-likelihood, mean over response tokens: ``[B, T], [B, T] -> [B]``.

    A row without response tokens gets loss 0 (not NaN).
    """
    lp, m = _f32(token_logps), _f32(mask)
    _check_same_shape(2, "[B, T]", token_logps=lp, mask=m)
    n_tokens = jnp.sum(m, axis=-1)
    return -_masked_sum(lp, m) / jnp.maximum(n_tokens, 1.0)


# ----------------------------------------------------------------------------------------------
# the unified MuSC / ECD / SPaR loss


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Hyper-parameters of :func:`preference_loss` (DESIGN 5.3). Frozen and hashable: static under jit.

    Attributes:
      beta: β, the KL strength (> 0).
      loss_type: ℓ, one of ``LOSS_TYPES``.
      label_smoothing: ε in [0, 0.5) for ``sigmoid``.
      a_seq: coefficient of the sequence term ℓ(z_seq).
      a_tok: coefficient of the token-weighted term ℓ(z_tok); 0 means no token weights are needed.
      sft_weight: λ, coefficient of the SFT term on the chosen response.

    The defaults are the MuSC recipe; see ``LOSS_PRESETS`` and :meth:`preset` for the others.
    """

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    a_seq: float = 1.0
    a_tok: float = 1.0
    sft_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_hparams(self.beta, self.loss_type, self.label_smoothing)
        for name in ("a_seq", "a_tok", "sft_weight"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"LossConfig.{name} must be >= 0, got {value}")
        if self.a_seq == 0 and self.a_tok == 0 and self.sft_weight == 0:
            raise ValueError("LossConfig has a_seq = a_tok = sft_weight = 0: the loss would be identically 0")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "LossConfig":
        """The named recipe from ``LOSS_PRESETS``, with fields optionally overridden."""
        if name not in LOSS_PRESETS:
            raise ValueError(f"unknown loss preset {name!r}; known presets: {', '.join(LOSS_PRESETS)}")
        return dataclasses.replace(LOSS_PRESETS[name], **overrides)


LOSS_PRESETS: dict[str, LossConfig] = {
    # MuSC as in the paper: sequence DPO + token-weighted term.
    "musc": LossConfig(a_seq=1.0, a_tok=1.0, sft_weight=0.0),
    # MuSC as in the authors' released code: token-weighted term only.
    "musc_released": LossConfig(a_seq=0.0, a_tok=1.0, sft_weight=0.0),
    # ECD: plain sequence DPO on the evolution-chain pairs.
    "ecd": LossConfig(a_seq=1.0, a_tok=0.0, sft_weight=0.0),
    # SPaR actor: DPO + 0.1 SFT on the chosen (refined) response.
    "spar": LossConfig(a_seq=1.0, a_tok=0.0, sft_weight=0.1),
    # Plain DPO.
    "dpo": LossConfig(a_seq=1.0, a_tok=0.0, sft_weight=0.0),
}


def preference_loss(
    policy_chosen_token_logps: ArrayLike,
    policy_rejected_token_logps: ArrayLike,
    ref_chosen_token_logps: ArrayLike,
    ref_rejected_token_logps: ArrayLike,
    chosen_mask: ArrayLike,
    rejected_mask: ArrayLike,
    chosen_weights: ArrayLike | None = None,
    rejected_weights: ArrayLike | None = None,
    *,
    cfg: LossConfig = LossConfig(),
) -> tuple[Array, dict[str, Array]]:
    """The unified loss ``L = mean_batch(a_seq ℓ(z_seq) + a_tok ℓ(z_tok) + λ sft)`` (DESIGN 5.3).

    Args:
      policy_chosen_token_logps, ref_chosen_token_logps, chosen_mask: ``[B, Tc]``.
      policy_rejected_token_logps, ref_rejected_token_logps, rejected_mask: ``[B, Tr]``.
      chosen_weights, rejected_weights: token weights ``[B, Tc]`` / ``[B, Tr]``; required when
        ``cfg.a_tok != 0``, may be ``None`` otherwise. They are multiplied by the response masks, so
        weights on prompt or padding positions never count.
      cfg: the hyper-parameters (static under jit: ``jax.jit(preference_loss, static_argnames="cfg")``).

    Returns:
      ``(loss, metrics)``: the scalar loss and a dict of scalar batch means with TRL's names
      ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (sequence
      rewards ``β Σ_t Δ_t``), ``logps/chosen``, ``logps/rejected`` (summed policy log-probs), plus
      ``loss``, ``loss/seq`` = mean ℓ(z_seq), ``loss/tok`` = mean ℓ(z_tok), ``loss/sft`` = mean SFT
      term (the three terms before their coefficients; each is computed even when its coefficient is
      0, so runs can be compared), ``weights/mean`` and ``weights/max`` over the response tokens of
      both sides. Without weights, uniform weights 1 stand in for the metrics, so ``loss/tok`` then
      equals ``loss/seq`` and the weight statistics are 1.
    """
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    pc, pr, rc, rr, mc, mr = map(
        _f32,
        (
            policy_chosen_token_logps,
            policy_rejected_token_logps,
            ref_chosen_token_logps,
            ref_rejected_token_logps,
            chosen_mask,
            rejected_mask,
        ),
    )
    c_shape = _check_same_shape(
        2, "[B, T]", policy_chosen_token_logps=pc, ref_chosen_token_logps=rc, chosen_mask=mc
    )
    r_shape = _check_same_shape(
        2, "[B, T]", policy_rejected_token_logps=pr, ref_rejected_token_logps=rr, rejected_mask=mr
    )
    _check_same_batch("policy_chosen_token_logps", c_shape, "policy_rejected_token_logps", r_shape)

    have_weights = chosen_weights is not None and rejected_weights is not None
    if (chosen_weights is None) != (rejected_weights is None):
        missing = "chosen_weights" if chosen_weights is None else "rejected_weights"
        raise ValueError(f"{missing} is None but the other side's weights are given: pass both or neither")
    if cfg.a_tok != 0 and not have_weights:
        raise ValueError(
            f"cfg.a_tok={cfg.a_tok} needs chosen_weights and rejected_weights (got None); "
            "pass token weights or use a_tok=0 (e.g. LossConfig.preset('dpo'))"
        )
    if have_weights:
        wc, wr = _f32(chosen_weights), _f32(rejected_weights)
        _check_same_shape(2, "[B, T]", policy_chosen_token_logps=pc, chosen_weights=wc)
        _check_same_shape(2, "[B, T]", policy_rejected_token_logps=pr, rejected_weights=wr)
        wc = jnp.where(mc != 0, wc, 0.0)
        wr = jnp.where(mr != 0, wr, 0.0)
    else:
        wc, wr = mc, mr

    beta, loss_type, eps = cfg.beta, cfg.loss_type, cfg.label_smoothing
    # Sequence margins: sum of per-token differences (better conditioned in float32 than a
    # difference of two large sums).
    chosen_logratios = _masked_sum(pc - rc, mc)
    rejected_logratios = _masked_sum(pr - rr, mr)
    seq_terms = _pair_loss(chosen_logratios - rejected_logratios, beta, loss_type, eps)
    tok_delta = _masked_sum(pc - rc, wc) - _masked_sum(pr - rr, wr)
    tok_terms = _pair_loss(tok_delta, beta, loss_type, eps)
    sft_terms = sft_loss(pc, mc)

    per_pair = jnp.zeros(c_shape[:1], jnp.float32)
    if cfg.a_seq != 0:
        per_pair = per_pair + cfg.a_seq * seq_terms
    if cfg.a_tok != 0:
        per_pair = per_pair + cfg.a_tok * tok_terms
    if cfg.sft_weight != 0:
        per_pair = per_pair + cfg.sft_weight * sft_terms
    loss = jnp.mean(per_pair)

    sg = jax.lax.stop_gradient
    chosen_rewards = sg(beta * chosen_logratios)
    rejected_rewards = sg(beta * rejected_logratios)
    n_resp = jnp.sum(mc) + jnp.sum(mr)
    w_sum = jnp.sum(wc) + jnp.sum(wr)  # already 0 off the response
    w_max = jnp.maximum(
        jnp.max(jnp.where(mc != 0, wc, -jnp.inf)), jnp.max(jnp.where(mr != 0, wr, -jnp.inf))
    )
    metrics = {
        "loss": sg(loss),
        "loss/seq": sg(jnp.mean(seq_terms)),
        "loss/tok": sg(jnp.mean(tok_terms)),
        "loss/sft": sg(jnp.mean(sft_terms)),
        "rewards/chosen": jnp.mean(chosen_rewards),
        "rewards/rejected": jnp.mean(rejected_rewards),
        "rewards/margins": jnp.mean(chosen_rewards - rejected_rewards),
        "rewards/accuracies": jnp.mean((chosen_rewards > rejected_rewards).astype(jnp.float32)),
        "logps/chosen": sg(jnp.mean(_masked_sum(pc, mc))),
        "logps/rejected": sg(jnp.mean(_masked_sum(pr, mr))),
        "weights/mean": sg(w_sum / jnp.maximum(n_resp, 1.0)),
        "weights/max": sg(jnp.where(n_resp > 0, w_max, 0.0)),
    }
    return loss, metrics
