"""Per-token divergences between the student and teacher next-token distributions.

Every function here is pure torch and returns one value per token position, so the caller
decides which positions count. Logits have shape (..., V): (T, V) for one rollout, (B, T, V)
for a padded batch. Divergences are computed from `log_softmax(logits / temperature)` over the
full vocabulary, which is exact. With `top_k` set, both distributions are restricted to the
student's k most likely tokens and renormalised there. That is an approximation, and it matches
the exact value only when k equals the vocabulary size.

Normalisation used by the trainer (`masked_mean`): the loss of a micro-batch is the sum of the
per-token values over the positions where the completion mask is 1, divided by the number of
such positions in that micro-batch. Each rollout token therefore weighs the same, whatever the
rollout's length. A micro-batch without completion tokens has loss 0. No temperature-squared
factor is applied.

All logits must be finite: a `-inf` logit gives a zero probability whose `0 * -inf` term is NaN.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

DivergenceName = Literal["reverse_kl", "forward_kl", "jsd"]
DIVERGENCE_NAMES: tuple[str, ...] = ("reverse_kl", "forward_kl", "jsd")


def _log_probs_pair(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the student and teacher log-probabilities, each (..., V) or (..., k) with top_k.

    Logits are upcast to float32 first: a bf16 log-softmax over a vocabulary of 10^5 tokens loses
    most of the precision of the small probabilities that the KL sums over.
    """
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is invalid: it must be > 0")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (..., V)"
        )
    student_scaled = student_logits.float() / temperature
    teacher_scaled = teacher_logits.float() / temperature

    vocab_size = student_scaled.shape[-1]
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k={top_k!r} is invalid: use a positive integer or None")
        if top_k < vocab_size:
            # The support is chosen by the student, because reverse KL is an expectation
            # over the student's samples and the student's likely tokens dominate it.
            support = student_scaled.topk(top_k, dim=-1).indices  # (..., k)
            student_scaled = student_scaled.gather(-1, support)
            teacher_scaled = teacher_scaled.gather(-1, support)

    return student_scaled.log_softmax(-1), teacher_scaled.log_softmax(-1)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Return KL(p || q) over the last dimension, from log-probabilities. (..., V) -> (...)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Compute KL(student || teacher) per token, the on-policy objective of SDFT.

    Args:
        student_logits: (..., V) logits of the student.
        teacher_logits: (..., V) logits of the teacher at the same positions.
        temperature: both logits are divided by it before the softmax.
        top_k: restrict both distributions to the student's top-k tokens (approximation).

    Returns:
        (...) float32 divergence per token, >= 0.
    """
    log_s, log_t = _log_probs_pair(
        student_logits, teacher_logits, temperature=temperature, top_k=top_k
    )
    return _kl(log_s, log_t)


def forward_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Compute KL(teacher || student) per token (mode-covering). Shapes as in `reverse_kl`."""
    log_s, log_t = _log_probs_pair(
        student_logits, teacher_logits, temperature=temperature, top_k=top_k
    )
    return _kl(log_t, log_s)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> torch.Tensor:
    """Compute the generalized Jensen-Shannon divergence JSD(beta) per token.

    With teacher P, student Q and mixture M = beta * P + (1 - beta) * Q, this is
    beta * KL(P || M) + (1 - beta) * KL(Q || M): the generalized JSD of GKD (Agarwal et al.,
    arXiv:2306.13649), with the mixture and endpoint conventions of TRL 1.16's
    `GKDTrainer.generalized_jsd_loss`. beta = 0.5 gives the symmetric JSD.

    The value itself vanishes at beta = 0 and beta = 1. But JSD(beta) / beta tends to the
    forward KL(P || Q) as beta -> 0, and JSD(beta) / (1 - beta) tends to the reverse KL(Q || P)
    as beta -> 1. This function returns those limits at the endpoints: `beta=0` gives
    `forward_kl` and `beta=1` gives `reverse_kl`.

    Shapes as in `reverse_kl`; `beta` must lie in [0, 1].
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta!r} is invalid: the JSD mixture weight must be in [0, 1]")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, temperature=temperature, top_k=top_k)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, top_k=top_k)

    log_s, log_t = _log_probs_pair(
        student_logits, teacher_logits, temperature=temperature, top_k=top_k
    )
    # log M computed in log space, because the mixture of two tiny probabilities underflows.
    log_mixture = torch.logaddexp(log_t + math.log(beta), log_s + math.log(1.0 - beta))
    return beta * _kl(log_t, log_mixture) + (1.0 - beta) * _kl(log_s, log_mixture)


def divergence(
    name: str,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    top_k: int | None = None,
) -> torch.Tensor:
    """Compute the divergence `name` ("reverse_kl", "forward_kl" or "jsd") per token.

    `jsd_beta` is used only by "jsd". Shapes as in `reverse_kl`.
    """
    if name == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, temperature=temperature, top_k=top_k)
    if name == "forward_kl":
        return forward_kl(student_logits, teacher_logits, temperature=temperature, top_k=top_k)
    if name == "jsd":
        return generalized_jsd(
            student_logits, teacher_logits, beta=jsd_beta, temperature=temperature, top_k=top_k
        )
    raise ValueError(f"unknown divergence {name!r}: use one of {', '.join(DIVERGENCE_NAMES)}")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return log p(target) at temperature 1 for each position. (..., V), (...) -> (...) float32."""
    log_probs = logits.float().log_softmax(-1)
    return log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Compute the cross-entropy -log p(target) per token, used on the expert reference tokens.

    Args:
        logits: (..., V) logits that predict `targets`.
        targets: (...) token ids. Padding may hold any valid id, because the caller masks it.

    Returns:
        (...) float32 cross-entropy per token.
    """
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    flat = F.cross_entropy(flat_logits, targets.reshape(-1), reduction="none")
    return flat.reshape(targets.shape)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average `values` over the positions where `mask` is true; 0 when no position is.

    Args:
        values: (...) per-token values, for example a (B, T) divergence.
        mask: (...) completion mask of the same shape, bool or 0/1.

    Returns:
        Scalar: sum(values[mask]) / count(mask). Masked positions are replaced by 0 with
        `torch.where`, so a NaN or inf at a padding position never reaches the result.
    """
    if values.shape != mask.shape:
        raise ValueError(
            f"values {tuple(values.shape)} and mask {tuple(mask.shape)} must have the same shape"
        )
    keep = mask.bool()
    total = torch.where(keep, values, torch.zeros_like(values)).sum()
    return total / keep.sum().clamp(min=1)
