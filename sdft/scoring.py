"""Score rollout tokens under the student and the teacher without full-sequence logits.

A rollout of T tokens at the Qwen3.5 vocabulary (V = 248,320) has a (T, V) float32 logits
tensor of about 1 GB per 1,000 tokens, per model, and autograd would keep several of them.
Here the trunk returns hidden states only at the T positions that predict rollout tokens. The
LM head then runs on chunks of rows, so at most one chunk of logits per model exists at a time,
in the forward pass and in the backward pass.

Gradients: each token's divergence depends only on its own hidden row, because the LM head is
applied row by row. When the LM head is frozen (always, with LoRA on the trunk), each chunk is
differentiated right after its forward, and the (T, H) gradient rows are stored. Backward then
scales those rows by the incoming per-token gradient, which is exact and needs no second pass
over the logits. When the LM head has trainable parameters, each chunk is wrapped in
`torch.utils.checkpoint` instead, which recomputes its logits during backward.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from sdft.losses import divergence, token_logprobs

logger = logging.getLogger(__name__)

# The divergence math runs in float32 whatever the model dtype, so chunks are sized for it.
_COMPUTE_ELEMENT_SIZE = 4


@dataclass(frozen=True)
class TokenStats:
    """Per-token statistics of one rollout; every tensor is (T,) float32.

    `divergence` carries the gradient to the student hidden states. The log-probabilities of the
    rollout tokens are taken at temperature 1 and are detached. `divergence` and
    `teacher_logprobs` are None when no teacher hidden states were given.
    """

    divergence: torch.Tensor | None
    student_logprobs: torch.Tensor
    teacher_logprobs: torch.Tensor | None


def _causal_lm(model: nn.Module) -> nn.Module:
    """Return the transformers model under a peft wrapper, or `model` itself."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def decoder_trunk(model: nn.Module) -> nn.Module:
    """Return the module that maps input ids to final-norm hidden states, without the LM head.

    For Qwen3_5ForCausalLM and LlamaForCausalLM this is `model.model` (the text model). For
    Qwen3_5ForConditionalGeneration it is `model.model`, the multimodal model that computes the
    multimodal rotary positions before calling its language model. A peft PeftModel is unwrapped
    first; its LoRA layers live inside the trunk, so they stay active.
    """
    causal_lm = _causal_lm(model)
    trunk = getattr(causal_lm, "base_model", None)
    if not isinstance(trunk, nn.Module) or trunk is causal_lm:
        raise TypeError(
            f"cannot find the decoder trunk of {type(causal_lm).__name__}: expected a "
            "transformers *ForCausalLM or *ForConditionalGeneration model whose `base_model` "
            "returns hidden states"
        )
    return trunk


def lm_head_of(model: nn.Module) -> nn.Module:
    """Return the output projection (LM head) of `model`, unwrapping peft."""
    causal_lm = _causal_lm(model)
    get_output_embeddings = getattr(causal_lm, "get_output_embeddings", None)
    head = get_output_embeddings() if callable(get_output_embeddings) else None
    if not isinstance(head, nn.Module):
        raise TypeError(
            f"{type(causal_lm).__name__} has no output embeddings (LM head): expected a "
            "transformers causal LM or a PeftModel of one"
        )
    return head


def _head_weight(lm_head: nn.Module) -> torch.Tensor:
    """Return the (V, H) weight of an LM head."""
    weight = lm_head.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"the LM head {type(lm_head).__name__} has no weight tensor: expected a linear "
            "output projection"
        )
    return weight


def rollout_hidden_states(
    model: nn.Module, input_ids: torch.Tensor, num_rollout_tokens: int
) -> torch.Tensor:
    """Run the trunk on `input_ids` and return the hidden states that predict the rollout.

    Args:
        model: a causal LM, a Qwen3.5 vision-language model used on text, or a PeftModel of one.
        input_ids: (1, L) prompt followed by the T rollout tokens.
        num_rollout_tokens: T, the number of trailing rollout tokens; 0 <= T < L.

    Returns:
        (T, H) final-norm hidden states at positions L-T-1 .. L-2; row i predicts
        input_ids[0, L-T+i]. Gradients flow back into the trunk when grad is enabled.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must have shape (1, L), got {tuple(input_ids.shape)}")
    length = input_ids.shape[1]
    if not 0 <= num_rollout_tokens < length:
        raise ValueError(
            f"num_rollout_tokens={num_rollout_tokens} is invalid for a sequence of {length} "
            "tokens: the rollout needs at least one prompt token before it"
        )

    trunk = decoder_trunk(model)
    if num_rollout_tokens == 0:
        hidden_size = int(_head_weight(lm_head_of(model)).shape[1])
        # transformers models define `dtype`, which nn.Module types as Tensor | Module.
        dtype: torch.dtype = trunk.dtype  # type: ignore[assignment]
        return torch.zeros(0, hidden_size, device=input_ids.device, dtype=dtype)

    # The last position predicts nothing inside the sequence, so the trunk stops before it.
    outputs = trunk(input_ids=input_ids[:, :-1], use_cache=False)
    hidden = outputs.last_hidden_state  # (1, L-1, H)
    return hidden[0, length - 1 - num_rollout_tokens :]


def chunk_rows(vocab_size: int, chunk_bytes: int, num_models: int) -> int:
    """Return how many rows of logits fit in `chunk_bytes` for `num_models` float32 blocks."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes={chunk_bytes!r} is invalid: it must be a positive integer")
    return max(1, chunk_bytes // (vocab_size * _COMPUTE_ELEMENT_SIZE * num_models))


def _chunk_values(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    targets: torch.Tensor,
    lm_head: nn.Module,
    loss: str,
    temperature: float,
    jsd_beta: float,
    top_k: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return divergence (C,), student logprobs (C,) and teacher logprobs (C,) of one chunk."""
    student_logits = lm_head(student_hidden)  # (C, V)
    with torch.no_grad():
        teacher_logits = lm_head(teacher_hidden)  # (C, V)
        teacher_lp = token_logprobs(teacher_logits, targets)
        student_lp = token_logprobs(student_logits.detach(), targets)
    values = divergence(
        loss,
        student_logits,
        teacher_logits,
        temperature=temperature,
        jsd_beta=jsd_beta,
        top_k=top_k,
    )
    return values, student_lp, teacher_lp


class _RowGradients(torch.autograd.Function):
    """Attach precomputed per-row gradients to a per-row value.

    Forward returns `values` (T,). Backward returns grad_values[:, None] * row_gradients for the
    (T, H) input, which is exact because value i depends on input row i only.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        student_hidden: torch.Tensor,
        values: torch.Tensor,
        row_gradients: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(row_gradients)
        return values.clone()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_values: torch.Tensor
    ) -> tuple[torch.Tensor, None, None]:
        # torch types ctx as FunctionCtx, which lacks the saved_tensors that autograd provides.
        (row_gradients,) = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_hidden = grad_values.unsqueeze(-1).to(row_gradients.dtype) * row_gradients
        return grad_hidden, None, None


def chunked_token_stats(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    lm_head: nn.Module,
    targets: torch.Tensor,
    *,
    loss: str = "reverse_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    top_k: int | None = None,
    chunk_bytes: int = 16 * 1024 * 1024,
) -> TokenStats:
    """Compute per-token divergence and logprobs of the rollout, one chunk of rows at a time.

    Args:
        student_hidden: (T, H) student hidden states from `rollout_hidden_states`.
        teacher_hidden: (T, H) teacher hidden states at the same rollout tokens, or None to get
            the student logprobs only. They are used as constants: no gradient reaches them.
        lm_head: the shared output projection, mapping H to V.
        targets: (T,) rollout token ids.
        loss, temperature, jsd_beta, top_k: as in `sdft.losses.divergence`.
        chunk_bytes: budget for the float32 logits of one chunk across student and teacher;
            rows per chunk = chunk_bytes // (V * 4 * number of models), at least 1.

    Returns:
        TokenStats with (T,) tensors. With T = 0 they are empty and sum to 0.
    """
    num_tokens = student_hidden.shape[0]
    if targets.shape != (num_tokens,):
        raise ValueError(
            f"targets must have shape ({num_tokens},) to match student_hidden "
            f"{tuple(student_hidden.shape)}, got {tuple(targets.shape)}"
        )
    if teacher_hidden is None:
        with torch.no_grad():
            student_lp = chunked_token_logprobs(
                student_hidden, lm_head, targets, chunk_bytes=chunk_bytes
            )
        return TokenStats(divergence=None, student_logprobs=student_lp, teacher_logprobs=None)
    if teacher_hidden.shape != student_hidden.shape:
        raise ValueError(
            f"teacher_hidden {tuple(teacher_hidden.shape)} must match student_hidden "
            f"{tuple(student_hidden.shape)}: both score the same rollout tokens"
        )

    teacher_hidden = teacher_hidden.detach()
    vocab_size = int(_head_weight(lm_head).shape[0])
    rows = chunk_rows(vocab_size, chunk_bytes, num_models=2)
    head_trainable = any(p.requires_grad for p in lm_head.parameters())
    needs_grad = torch.is_grad_enabled() and (student_hidden.requires_grad or head_trainable)

    # Outputs are allocated once, before the loop. Small tensors allocated per chunk and kept
    # until the end would sit between the freed logits blocks on the malloc heap, so glibc could
    # not trim it, and peak RSS would grow with the rollout length (measured: +640 MiB at T = 256).
    device = student_hidden.device
    per_token = torch.zeros(num_tokens, device=device, dtype=torch.float32)  # (T,)
    student_lps = torch.zeros(num_tokens, device=device, dtype=torch.float32)  # (T,)
    teacher_lps = torch.zeros(num_tokens, device=device, dtype=torch.float32)  # (T,)
    precompute = needs_grad and not head_trainable
    row_gradients = torch.zeros_like(student_hidden) if precompute else None  # (T, H)
    checkpointed: list[torch.Tensor] = []

    for start in range(0, num_tokens, rows):
        chunk = slice(start, start + rows)
        args = (teacher_hidden[chunk], targets[chunk], lm_head, loss, temperature, jsd_beta, top_k)

        if not needs_grad:
            with torch.no_grad():
                chunk_values, student_lp, teacher_lp = _chunk_values(student_hidden[chunk], *args)
        elif row_gradients is None:
            # The head is trainable. Checkpointing keeps only this chunk's inputs and recomputes
            # its logits in backward, because the LM head's weight gradient mixes all rows and
            # cannot be precomputed.
            chunk_values, student_lp, teacher_lp = checkpoint(
                _chunk_values, student_hidden[chunk], *args, use_reentrant=False
            )
            checkpointed.append(chunk_values)
        else:
            leaf = student_hidden[chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                chunk_values, student_lp, teacher_lp = _chunk_values(leaf, *args)
                (grad_rows,) = torch.autograd.grad(chunk_values.sum(), leaf)
            row_gradients[chunk] = grad_rows

        per_token[chunk] = chunk_values.detach()
        student_lps[chunk] = student_lp
        teacher_lps[chunk] = teacher_lp

    if checkpointed:
        per_token = torch.cat(checkpointed)
    elif row_gradients is not None:
        per_token = _RowGradients.apply(student_hidden, per_token, row_gradients)
    if num_tokens == 0 and needs_grad:
        # Keep the graph connected for T = 0, so `loss.backward()` works on an empty rollout.
        per_token = per_token + student_hidden.sum() * 0.0

    return TokenStats(
        divergence=per_token, student_logprobs=student_lps, teacher_logprobs=teacher_lps
    )


def _chunk_logprobs(
    hidden: torch.Tensor, targets: torch.Tensor, lm_head: nn.Module
) -> torch.Tensor:
    return token_logprobs(lm_head(hidden), targets)


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head: nn.Module,
    targets: torch.Tensor,
    *,
    chunk_bytes: int = 16 * 1024 * 1024,
) -> torch.Tensor:
    """Compute the differentiable log p(target) per token at temperature 1, in chunks.

    The cross-entropy on expert reference tokens is its negative, and teacher checks use it too.
    Gradients are handled as in `chunked_token_stats`: precomputed per row with a frozen LM
    head, and by checkpointing each chunk with a trainable one.

    Args:
        hidden: (T, H) hidden states that predict `targets`.
        lm_head: output projection, mapping H to V.
        targets: (T,) token ids.

    Returns:
        (T,) float32 log-probabilities.
    """
    num_tokens = hidden.shape[0]
    if targets.shape != (num_tokens,):
        raise ValueError(
            f"targets must have shape ({num_tokens},) to match hidden {tuple(hidden.shape)}, "
            f"got {tuple(targets.shape)}"
        )
    if num_tokens == 0:
        empty = torch.zeros(0, device=hidden.device, dtype=torch.float32)
        return empty + hidden.sum() * 0.0 if hidden.requires_grad else empty

    rows = chunk_rows(int(_head_weight(lm_head).shape[0]), chunk_bytes, num_models=1)
    head_trainable = any(p.requires_grad for p in lm_head.parameters())
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or head_trainable)
    # Preallocated for the same reason as in `chunked_token_stats`: a small result kept per chunk
    # would pin the malloc heap that the freed logits blocks leave behind.
    logprobs = torch.zeros(num_tokens, device=hidden.device, dtype=torch.float32)  # (T,)
    row_gradients = torch.zeros_like(hidden) if needs_grad and not head_trainable else None
    checkpointed: list[torch.Tensor] = []

    for start in range(0, num_tokens, rows):
        chunk = slice(start, start + rows)
        if not needs_grad:
            with torch.no_grad():
                logprobs[chunk] = _chunk_logprobs(hidden[chunk], targets[chunk], lm_head)
        elif row_gradients is None:
            # A trainable head needs its weight gradient, which mixes rows, so recompute instead.
            piece = checkpoint(
                _chunk_logprobs, hidden[chunk], targets[chunk], lm_head, use_reentrant=False
            )
            checkpointed.append(piece)
        else:
            leaf = hidden[chunk].detach().requires_grad_(True)
            with torch.enable_grad():
                piece = _chunk_logprobs(leaf, targets[chunk], lm_head)
                (grad_rows,) = torch.autograd.grad(piece.sum(), leaf)
            row_gradients[chunk] = grad_rows
            logprobs[chunk] = piece.detach()

    if checkpointed:
        return torch.cat(checkpointed)
    if row_gradients is not None:
        return _RowGradients.apply(hidden, logprobs, row_gradients)
    return logprobs


def naive_token_stats(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor | None,
    lm_head: nn.Module,
    targets: torch.Tensor,
    *,
    loss: str = "reverse_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    top_k: int | None = None,
) -> TokenStats:
    """Compute the same statistics as `chunked_token_stats` from full (T, V) logits.

    This is the reference for tests and benchmarks only, because it materialises the logits of
    both models for the whole rollout and autograd keeps them for backward.
    """
    student_logits = lm_head(student_hidden)  # (T, V)
    student_lp = token_logprobs(student_logits.detach(), targets)
    if teacher_hidden is None:
        return TokenStats(divergence=None, student_logprobs=student_lp, teacher_logprobs=None)
    with torch.no_grad():
        teacher_logits = lm_head(teacher_hidden.detach())  # (T, V)
    values = divergence(
        loss,
        student_logits,
        teacher_logits,
        temperature=temperature,
        jsd_beta=jsd_beta,
        top_k=top_k,
    )
    return TokenStats(
        divergence=values,
        student_logprobs=student_lp,
        teacher_logprobs=token_logprobs(teacher_logits, targets),
    )
