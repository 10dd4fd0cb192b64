"""Per-token divergences against their textbook definitions, on random logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sdft.losses import (
    divergence,
    forward_kl,
    generalized_jsd,
    masked_mean,
    reverse_kl,
    token_cross_entropy,
    token_logprobs,
)

VOCAB = 50


def _logits(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, VOCAB, generator=generator, dtype=torch.float64) * 3


def _kl_reference(
    p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(p || q) per row, via torch.distributions in float64."""
    p = torch.distributions.Categorical(logits=p_logits.double() / temperature)
    q = torch.distributions.Categorical(logits=q_logits.double() / temperature)
    return torch.distributions.kl_divergence(p, q)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.0])
def test_reverse_kl_matches_definition(temperature: float) -> None:
    student, teacher = _logits(3, 5, seed=0), _logits(3, 5, seed=1)
    values = reverse_kl(student, teacher, temperature=temperature)

    assert values.shape == (3, 5)
    expected = _kl_reference(student, teacher, temperature).float()
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_forward_kl_matches_definition(temperature: float) -> None:
    student, teacher = _logits(4, seed=2), _logits(4, seed=3)
    values = forward_kl(student, teacher, temperature=temperature)

    expected = _kl_reference(teacher, student, temperature).float()
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_kl_zero_for_identical_logits() -> None:
    logits = _logits(6, seed=4)

    assert reverse_kl(logits, logits.clone()).abs().max() < 1e-6
    assert forward_kl(logits, logits.clone()).abs().max() < 1e-6
    assert generalized_jsd(logits, logits.clone(), beta=0.3).abs().max() < 1e-6


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_mixture_definition(beta: float) -> None:
    student, teacher = _logits(7, seed=5), _logits(7, seed=6)
    values = generalized_jsd(student, teacher, beta=beta, temperature=0.8)

    p = (teacher / 0.8).softmax(-1)
    q = (student / 0.8).softmax(-1)
    mixture = beta * p + (1 - beta) * q
    expected = beta * (p * (p / mixture).log()).sum(-1) + (1 - beta) * (
        q * (q / mixture).log()
    ).sum(-1)
    torch.testing.assert_close(values, expected.float(), atol=1e-5, rtol=1e-5)


def test_jsd_half_is_symmetric() -> None:
    student, teacher = _logits(5, seed=7), _logits(5, seed=8)

    forward = generalized_jsd(student, teacher, beta=0.5)
    swapped = generalized_jsd(teacher, student, beta=0.5)
    torch.testing.assert_close(forward, swapped, atol=1e-6, rtol=1e-6)
    assert forward.max() <= math.log(2) + 1e-6


def test_jsd_endpoints_are_kl_limits() -> None:
    student, teacher = _logits(5, seed=9), _logits(5, seed=10)

    torch.testing.assert_close(
        generalized_jsd(student, teacher, beta=0.0), forward_kl(student, teacher)
    )
    torch.testing.assert_close(
        generalized_jsd(student, teacher, beta=1.0), reverse_kl(student, teacher)
    )


def test_jsd_scaled_values_approach_endpoints() -> None:
    # Moderate logits keep the O(beta) term of the expansion small next to the tolerance.
    student, teacher = _logits(5, seed=9) / 3, _logits(5, seed=10) / 3
    small = 1e-3

    near_forward = generalized_jsd(student, teacher, beta=small) / small
    near_reverse = generalized_jsd(student, teacher, beta=1 - small) / small
    torch.testing.assert_close(near_forward, forward_kl(student, teacher), atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(near_reverse, reverse_kl(student, teacher), atol=1e-3, rtol=1e-2)


def test_jsd_rejects_beta_outside_unit_interval() -> None:
    student, teacher = _logits(2, seed=11), _logits(2, seed=12)

    with pytest.raises(ValueError, match="beta=1.5"):
        generalized_jsd(student, teacher, beta=1.5)


@pytest.mark.parametrize("name", ["reverse_kl", "forward_kl", "jsd"])
def test_top_k_equal_to_vocab_is_exact(name: str) -> None:
    student, teacher = _logits(3, 4, seed=13), _logits(3, 4, seed=14)

    exact = divergence(name, student, teacher, temperature=0.9, jsd_beta=0.3)
    full_k = divergence(name, student, teacher, temperature=0.9, jsd_beta=0.3, top_k=VOCAB)
    torch.testing.assert_close(full_k, exact, atol=1e-6, rtol=1e-6)


def test_top_k_restricts_to_student_support() -> None:
    student, teacher = _logits(4, seed=15), _logits(4, seed=16)
    k = 5
    approx = reverse_kl(student, teacher, top_k=k)

    support = student.topk(k, dim=-1).indices
    s = student.gather(-1, support).log_softmax(-1)
    t = teacher.gather(-1, support).log_softmax(-1)
    expected = (s.exp() * (s - t)).sum(-1).float()
    torch.testing.assert_close(approx, expected, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(approx, reverse_kl(student, teacher))


def test_divergence_rejects_unknown_name() -> None:
    logits = _logits(2, seed=17)

    with pytest.raises(ValueError, match="'tvd'"):
        divergence("tvd", logits, logits)


def test_divergence_rejects_bad_inputs() -> None:
    student = _logits(2, seed=18)

    with pytest.raises(ValueError, match="temperature=0"):
        reverse_kl(student, student, temperature=0)
    with pytest.raises(ValueError, match="same shape"):
        reverse_kl(student, student[:1])
    with pytest.raises(ValueError, match="top_k=0"):
        reverse_kl(student, student, top_k=0)


def test_kl_gradient_matches_float64_autograd() -> None:
    student = _logits(3, seed=19).float().requires_grad_(True)
    teacher = _logits(3, seed=20).float()
    reverse_kl(student, teacher, temperature=0.7).sum().backward()

    student64 = student.detach().double().requires_grad_(True)
    _kl_reference(student64, teacher, 0.7).sum().backward()
    torch.testing.assert_close(student.grad, student64.grad.float(), atol=1e-5, rtol=1e-5)


def test_token_cross_entropy_matches_torch() -> None:
    logits = _logits(2, 6, seed=21).float()
    targets = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    values = token_cross_entropy(logits, targets)

    assert values.shape == (2, 6)
    expected = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="none")
    torch.testing.assert_close(values, expected.reshape(2, 6))
    torch.testing.assert_close(values, -token_logprobs(logits, targets))


def test_masked_mean_ignores_padding() -> None:
    # Two rollouts of lengths 3 and 1, padded to 4; the second one has NaN logits in its padding.
    student, teacher = _logits(2, 4, seed=22).float(), _logits(2, 4, seed=23).float()
    student[1, 2:] = float("nan")
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])

    loss = masked_mean(reverse_kl(student, teacher), mask)

    per_token = torch.cat(
        [reverse_kl(student[0, :3], teacher[0, :3]), reverse_kl(student[1, :1], teacher[1, :1])]
    )
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, per_token.mean())


def test_masked_mean_of_empty_rollout_is_zero() -> None:
    student = torch.zeros(0, VOCAB, requires_grad=True)
    teacher = torch.zeros(0, VOCAB)

    loss = masked_mean(reverse_kl(student, teacher), torch.zeros(0, dtype=torch.bool))
    loss.backward()

    assert loss.item() == 0.0
    assert student.grad is not None
    assert student.grad.shape == (0, VOCAB)


def test_masked_mean_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        masked_mean(torch.zeros(3), torch.ones(4))
