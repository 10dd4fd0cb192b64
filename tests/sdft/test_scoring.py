"""Chunked scoring against full-logits scoring: values, gradients and peak logits size."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, Qwen3_5ForConditionalGeneration

from sdft.losses import masked_mean
from sdft.scoring import (
    chunk_rows,
    chunked_token_logprobs,
    chunked_token_stats,
    decoder_trunk,
    lm_head_of,
    naive_token_stats,
    rollout_hidden_states,
)

HIDDEN = 16
VOCAB = 300


class RecordingHead(nn.Linear):
    """LM head that records how many rows each call projects, to check the chunking."""

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__(hidden, vocab, bias=False)
        self.rows_per_call: list[int] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows_per_call.append(hidden.shape[0])
        return super().forward(hidden)


def _head(seed: int = 0, trainable: bool = False) -> RecordingHead:
    torch.manual_seed(seed)
    head = RecordingHead(HIDDEN, VOCAB)
    head.weight.data.mul_(4.0)  # spread the logits so the distributions differ noticeably
    head.weight.requires_grad_(trainable)
    return head


def _rollout(num_tokens: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return student hidden (T, H) with grad, teacher hidden (T, H) and targets (T,)."""
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(num_tokens, HIDDEN, generator=generator).requires_grad_(True)
    teacher = student.detach() + 0.5 * torch.randn(num_tokens, HIDDEN, generator=generator)
    targets = torch.randint(0, VOCAB, (num_tokens,), generator=generator)
    return student, teacher, targets


def _bytes_for_rows(rows: int, num_models: int = 2) -> int:
    return rows * VOCAB * 4 * num_models


def _mask(num_tokens: int) -> torch.Tensor:
    # Drop every third token, as a completion mask over a rollout with masked positions.
    mask = torch.ones(num_tokens, dtype=torch.bool)
    mask[::3] = False
    return mask


CASES = [
    ("reverse_kl", 1.0, 0.5, None),
    ("reverse_kl", 0.7, 0.5, None),
    ("forward_kl", 1.3, 0.5, None),
    ("jsd", 0.7, 0.1, None),
    ("jsd", 1.0, 0.5, None),
    ("jsd", 0.7, 0.9, None),
    ("reverse_kl", 0.7, 0.5, 11),
    ("jsd", 1.0, 0.5, 11),
]


@pytest.mark.parametrize("trainable_head", [False, True], ids=["frozen-head", "trainable-head"])
@pytest.mark.parametrize(("loss", "temperature", "beta", "top_k"), CASES)
def test_chunked_stats_match_naive(
    loss: str, temperature: float, beta: float, top_k: int | None, trainable_head: bool
) -> None:
    num_tokens = 13  # 5 rows per chunk leaves a last chunk of 3
    head = _head(trainable=trainable_head)
    student, teacher, targets = _rollout(num_tokens)
    mask = _mask(num_tokens)
    knobs = dict(loss=loss, temperature=temperature, jsd_beta=beta, top_k=top_k)

    chunked = chunked_token_stats(
        student, teacher, head, targets, chunk_bytes=_bytes_for_rows(5), **knobs
    )
    masked_mean(chunked.divergence, mask).backward()
    chunked_grad = student.grad.clone()
    chunked_head_grad = head.weight.grad.clone() if trainable_head else None
    student.grad = None
    head.weight.grad = None

    naive = naive_token_stats(student, teacher, head, targets, **knobs)
    masked_mean(naive.divergence, mask).backward()

    torch.testing.assert_close(chunked.divergence, naive.divergence, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked.student_logprobs, naive.student_logprobs)
    torch.testing.assert_close(chunked.teacher_logprobs, naive.teacher_logprobs)
    torch.testing.assert_close(chunked_grad, student.grad, atol=1e-5, rtol=1e-5)
    assert chunked_grad[~mask].abs().max() == 0
    if trainable_head:
        torch.testing.assert_close(chunked_head_grad, head.weight.grad, atol=1e-5, rtol=1e-5)


def test_chunked_stats_ignore_padding() -> None:
    # A rollout of 9 tokens padded to 12: pad rows hold large garbage and the mask drops them.
    head = _head()
    student, teacher, targets = _rollout(12)
    with torch.no_grad():
        student[9:] = 50.0
    mask = torch.arange(12) < 9

    padded = chunked_token_stats(student, teacher, head, targets, chunk_bytes=_bytes_for_rows(5))
    loss = masked_mean(padded.divergence, mask)
    loss.backward()

    unpadded = naive_token_stats(student[:9], teacher[:9], head, targets[:9])
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, unpadded.divergence.mean(), atol=1e-5, rtol=1e-5)
    assert student.grad[9:].abs().max() == 0
    assert student.grad[:9].abs().max() > 0


def test_chunked_logprobs_are_detached() -> None:
    head = _head()
    student, teacher, targets = _rollout(4)

    stats = chunked_token_stats(student, teacher, head, targets)

    assert stats.divergence.requires_grad
    assert not stats.student_logprobs.requires_grad
    assert not stats.teacher_logprobs.requires_grad


def test_chunked_stats_logprobs_ignore_temperature() -> None:
    head = _head()
    student, teacher, targets = _rollout(6)

    cold = chunked_token_stats(student, teacher, head, targets, temperature=0.5)
    plain = chunked_token_stats(student, teacher, head, targets, temperature=1.0)

    torch.testing.assert_close(cold.student_logprobs, plain.student_logprobs)
    torch.testing.assert_close(cold.teacher_logprobs, plain.teacher_logprobs)
    assert not torch.allclose(cold.divergence, plain.divergence)


def test_chunks_never_span_the_rollout() -> None:
    num_tokens = 23
    head = _head()
    student, teacher, targets = _rollout(num_tokens)
    saved: list[weakref.ref[torch.Tensor]] = []

    def record(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(tensor))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        stats = chunked_token_stats(student, teacher, head, targets, chunk_bytes=_bytes_for_rows(4))
    gc.collect()
    alive = [ref() for ref in saved]
    alive_sizes = [
        t.numel() for t in alive if t is not None and t.data_ptr() != head.weight.data_ptr()
    ]
    stats.divergence.sum().backward()

    assert max(head.rows_per_call) == 4
    assert sum(head.rows_per_call) == 2 * num_tokens  # student and teacher, no recomputation
    # What autograd still holds for backward is (T, H) at most: no logits block survives.
    assert alive_sizes
    assert max(alive_sizes) <= num_tokens * HIDDEN


def test_trainable_head_recomputes_chunks() -> None:
    num_tokens = 10
    head = _head(trainable=True)
    student, teacher, targets = _rollout(num_tokens)

    stats = chunked_token_stats(student, teacher, head, targets, chunk_bytes=_bytes_for_rows(3))
    head.rows_per_call.clear()
    stats.divergence.sum().backward()

    assert head.rows_per_call  # backward recomputed the logits
    assert max(head.rows_per_call) == 3


def test_chunked_stats_without_grad_match() -> None:
    head = _head()
    student, teacher, targets = _rollout(9)

    with torch.no_grad():
        quiet = chunked_token_stats(student, teacher, head, targets, chunk_bytes=_bytes_for_rows(2))
    loud = chunked_token_stats(student, teacher, head, targets, chunk_bytes=_bytes_for_rows(2))

    assert not quiet.divergence.requires_grad
    torch.testing.assert_close(quiet.divergence, loud.divergence.detach())


def test_chunked_stats_empty_rollout() -> None:
    head = _head()
    student, teacher, targets = _rollout(0)

    stats = chunked_token_stats(student, teacher, head, targets)
    loss = masked_mean(stats.divergence, torch.zeros(0, dtype=torch.bool))
    loss.backward()

    assert stats.divergence.shape == (0,)
    assert stats.student_logprobs.shape == (0,)
    assert stats.teacher_logprobs.shape == (0,)
    assert loss.item() == 0.0
    assert student.grad is not None
    assert not torch.isnan(student.grad).any()


def test_chunked_stats_without_teacher() -> None:
    head = _head()
    student, _, targets = _rollout(7)

    stats = chunked_token_stats(student, None, head, targets, chunk_bytes=_bytes_for_rows(2))

    assert stats.divergence is None
    assert stats.teacher_logprobs is None
    expected = naive_token_stats(student, None, head, targets).student_logprobs
    torch.testing.assert_close(stats.student_logprobs, expected)


def test_chunked_stats_reject_mismatched_shapes() -> None:
    head = _head()
    student, teacher, targets = _rollout(5)

    with pytest.raises(ValueError, match="targets must have shape"):
        chunked_token_stats(student, teacher, head, targets[:4])
    with pytest.raises(ValueError, match="must match student_hidden"):
        chunked_token_stats(student, teacher[:4], head, targets)


@pytest.mark.parametrize("trainable_head", [False, True], ids=["frozen-head", "trainable-head"])
def test_chunked_logprobs_match_naive_with_grad(trainable_head: bool) -> None:
    num_tokens = 11
    head = _head(trainable=trainable_head)
    hidden, _, targets = _rollout(num_tokens)
    weights = torch.linspace(0.1, 1.0, num_tokens)

    chunked = chunked_token_logprobs(hidden, head, targets, chunk_bytes=_bytes_for_rows(4, 1))
    (chunked * weights).sum().backward()
    chunked_grad = hidden.grad.clone()
    chunked_head_grad = head.weight.grad.clone() if trainable_head else None
    hidden.grad = None
    head.weight.grad = None
    naive = head(hidden).log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
    (naive * weights).sum().backward()

    assert max(head.rows_per_call[:3]) == 4
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_grad, hidden.grad, atol=1e-5, rtol=1e-5)
    if trainable_head:
        torch.testing.assert_close(chunked_head_grad, head.weight.grad, atol=1e-5, rtol=1e-5)


def test_chunked_logprobs_without_grad() -> None:
    head = _head()
    hidden, _, targets = _rollout(9)

    with torch.no_grad():
        quiet = chunked_token_logprobs(hidden, head, targets, chunk_bytes=_bytes_for_rows(2, 1))
    expected = naive_token_stats(hidden, None, head, targets).student_logprobs

    assert not quiet.requires_grad
    torch.testing.assert_close(quiet, expected, atol=1e-6, rtol=1e-6)


def test_chunked_logprobs_empty() -> None:
    head = _head()
    hidden, _, targets = _rollout(0)

    values = chunked_token_logprobs(hidden, head, targets)
    values.sum().backward()

    assert values.shape == (0,)
    assert hidden.grad is not None


def test_chunk_rows_from_bytes() -> None:
    # Reference setting: 16 MiB over two float32 blocks of the Qwen3.5 vocabulary.
    assert chunk_rows(248320, 16 * 1024 * 1024, num_models=2) == 8
    assert chunk_rows(248320, 1, num_models=2) == 1
    with pytest.raises(ValueError, match="chunk_bytes=0"):
        chunk_rows(248320, 0, num_models=1)


def _check_hidden_states(model: nn.Module, num_rollout_tokens: int) -> None:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 1000, (1, 12), generator=generator)
    length = input_ids.shape[1]

    hidden = rollout_hidden_states(model, input_ids, num_rollout_tokens)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0]  # (L, V)

    assert hidden.shape == (num_rollout_tokens, 64)
    expected = logits[length - num_rollout_tokens - 1 : length - 1]
    torch.testing.assert_close(lm_head_of(model)(hidden), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fixture", ["tiny_qwen3_5_dir", "tiny_llama_dir"])
def test_rollout_hidden_states_causal_lm(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    _check_hidden_states(model, 5)
    _check_hidden_states(model, 11)
    assert rollout_hidden_states(model, torch.ones(1, 4, dtype=torch.long), 0).shape == (0, 64)


def test_rollout_hidden_states_vision_language(tiny_qwen3_5_vl_dir: Path) -> None:
    model = Qwen3_5ForConditionalGeneration.from_pretrained(
        tiny_qwen3_5_vl_dir, dtype=torch.float32
    )

    _check_hidden_states(model, 4)


def test_rollout_hidden_states_reject_bad_lengths(tiny_llama_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    input_ids = torch.ones(1, 4, dtype=torch.long)

    with pytest.raises(ValueError, match="num_rollout_tokens=4"):
        rollout_hidden_states(model, input_ids, 4)
    with pytest.raises(ValueError, match=r"shape \(1, L\)"):
        rollout_hidden_states(model, input_ids[0], 1)


def test_decoder_trunk_rejects_plain_module() -> None:
    with pytest.raises(TypeError, match="cannot find the decoder trunk of Linear"):
        decoder_trunk(nn.Linear(4, 4))
    with pytest.raises(TypeError, match="Linear has no output embeddings"):
        lm_head_of(nn.Linear(4, 4))


def test_peft_student_teacher_gradients_match_naive(tiny_qwen3_5_dir: Path) -> None:
    """Student (adapter on) and teacher (adapter off) give equal LoRA gradients on both paths."""
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen3_5_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "in_proj_qkv", "down_proj"])
    model = get_peft_model(base, config)
    # A nonzero B makes the student differ from the teacher from the first step.
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)

    generator = torch.Generator().manual_seed(2)
    student_ids = torch.randint(0, 1000, (1, 14), generator=generator)
    teacher_ids = torch.cat([torch.randint(0, 1000, (1, 6), generator=generator), student_ids], 1)
    num_tokens = 6
    targets = student_ids[0, -num_tokens:]
    head = lm_head_of(model)

    def lora_grads(scorer: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        with torch.no_grad(), model.disable_adapter():
            teacher_hidden = rollout_hidden_states(model, teacher_ids, num_tokens)
        student_hidden = rollout_hidden_states(model, student_ids, num_tokens)
        if scorer == "chunked":
            stats = chunked_token_stats(
                student_hidden, teacher_hidden, head, targets, chunk_bytes=VOCAB_BYTES_ROW * 4
            )
        else:
            stats = naive_token_stats(student_hidden, teacher_hidden, head, targets)
        loss = stats.divergence.mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    chunked_loss, chunked_grads = lora_grads("chunked")
    naive_loss, naive_grads = lora_grads("naive")

    assert chunked_loss > 0
    torch.testing.assert_close(chunked_loss, naive_loss, atol=1e-6, rtol=1e-5)
    assert chunked_grads.keys() == naive_grads.keys()
    for name, grad in chunked_grads.items():
        torch.testing.assert_close(grad, naive_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


# Bytes of one float32 logits row for both models at the tiny fixtures' vocabulary of 2,048.
VOCAB_BYTES_ROW = 2048 * 4 * 2
