"""Sample the student's rollout with temperature and nucleus (top-p) sampling.

The decode loop calls the model with its own KV cache, which for Qwen3.5 also carries the
convolution and recurrent states of the linear-attention layers. Only the last position's
logits are computed at each step.

Nucleus selection avoids sorting the vocabulary. HF `generate` on the tiny Qwen3.5 with the
248,320-token vocabulary took 100 ms a token with top-p and 51 ms without on a 2-core CPU
(bench/bench_step.py), so the sort was about half of its decode time. `top_p_candidates` takes
`torch.topk` of a small k instead and doubles k until the kept mass reaches top_p, which
selects the same nucleus as a full sort (see its docstring for ties).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

logger = logging.getLogger(__name__)

# First k tried by the nucleus search. This is an estimate: the peaked distributions of trained
# models rarely need more tokens for top_p = 0.95, while flat ones cost a few doublings.
_INITIAL_TOP_K = 64


@dataclass(frozen=True)
class Rollout:
    """One sampled completion of the student.

    `tokens` is (T,) int64 and includes the EOS token when one was sampled. `truncated` is true
    when sampling stopped at `max_new_tokens` without an EOS token (`finish == "length"`).
    """

    tokens: torch.Tensor
    truncated: bool
    finish: Literal["eos", "length"]


def top_p_candidates(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the nucleus of a (V,) probability vector as (token ids (N,), probabilities (N,)).

    The nucleus contains the tokens, in decreasing probability, up to and including the first one
    at which the cumulative probability reaches `top_p`, so that it is the smallest such set. It
    is equivalent to HF's TopPLogitsWarper, except that a tie at the boundary probability keeps
    every tied token, where a sort would keep an arbitrary subset of them. With top_p >= 1 it is
    every token with nonzero probability.

    k starts at 64 and doubles until the top-k mass reaches top_p, so the cost is one or a few
    `torch.topk` calls instead of a sort of the whole vocabulary. A flat distribution whose
    nucleus exceeds a sixteenth of the vocabulary costs a full sort plus a few small topk calls.
    """
    if probs.dim() != 1:
        raise ValueError(f"probs must be a (V,) vector, got shape {tuple(probs.shape)}")
    vocab_size = probs.shape[0]
    if top_p >= 1.0:
        ids = torch.nonzero(probs > 0).squeeze(-1)
        return ids, probs[ids]

    k = min(_INITIAL_TOP_K, vocab_size)
    while True:
        # Both calls return values in decreasing order. At k = V the selection is a full sort.
        values, ids = probs.topk(k) if k < vocab_size else probs.sort(descending=True)
        # A float32 sum only gates the float64 cumulative sum below, which decides the nucleus.
        mass = float(values.sum())
        if mass >= top_p or k == vocab_size:
            # float64 sums keep rounding error far below the gap between top_p and the mass.
            cumulative = values.double().cumsum(0)
            threshold = torch.tensor([top_p], dtype=torch.float64)
            # First index whose cumulative mass reaches top_p. Rounding may leave the total
            # below top_p, and then the nucleus is all k tokens.
            size = min(int(torch.searchsorted(cumulative, threshold)) + 1, k)
            boundary = values[size - 1]
            # Include tokens tied with the last kept one. If the ties run to the end of this
            # top-k, tokens beyond k may be tied too, so search again with a larger k.
            tied = int((values[size:] == boundary).sum())
            if size + tied < k or k == vocab_size:
                size += tied
                if boundary > 0:
                    return ids[:size], values[:size]
                # Only a nucleus that spans the whole support reaches a zero probability.
                nonzero = int((values[:size] > 0).sum())
                return ids[:nonzero], values[:nonzero]
        # A nucleus larger than a sixteenth of the vocabulary means a flat distribution, where
        # more doublings would add topk calls and likely end at k = V anyway, so sort now.
        k = 2 * k if 2 * k <= vocab_size // 16 else vocab_size


def sample_top_p(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None = None,
) -> int:
    """Sample one token id from (V,) logits with temperature and nucleus sampling."""
    if temperature <= 0:
        raise ValueError(f"temperature={temperature!r} is invalid: it must be > 0")
    probs = (logits.float() / temperature).softmax(-1)
    ids, nucleus_probs = top_p_candidates(probs, top_p)
    # multinomial renormalises the nucleus probabilities itself.
    choice = torch.multinomial(nucleus_probs, 1, generator=generator)
    return int(ids[choice])


def _normalise_eos(eos_token_ids: int | Iterable[int] | None) -> frozenset[int]:
    if eos_token_ids is None:
        return frozenset()
    if isinstance(eos_token_ids, int):
        return frozenset({eos_token_ids})
    return frozenset(int(token) for token in eos_token_ids)


@torch.no_grad()
def sample_rollout(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_token_ids: int | Iterable[int] | None,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Sample a rollout of the student for one prompt, with KV cache and without gradients.

    The caller chooses the student, for example by enabling the adapter of a PeftModel. The
    model runs in eval mode and its train/eval mode is restored on return.

    Args:
        model: causal LM (or PeftModel, or Qwen3.5 vision-language model used on text).
        prompt_ids: (1, P) prompt token ids, P >= 1.
        max_new_tokens: maximum rollout length; reaching it without EOS marks the rollout truncated.
        temperature: logits are divided by it before the softmax; must be > 0.
        top_p: nucleus mass in (0, 1]; 1 disables the filter.
        eos_token_ids: token id(s) that end the rollout; the sampled EOS is kept in the rollout,
            so the student learns to stop. None or empty never stops early.
        generator: source of randomness for `torch.multinomial`; None uses the global RNG, so
            `torch.manual_seed` makes the result reproducible too.

    Returns:
        Rollout with (T,) tokens on the prompt's device, T <= max_new_tokens.
    """
    if prompt_ids.dim() != 2 or prompt_ids.shape[0] != 1 or prompt_ids.shape[1] == 0:
        raise ValueError(
            f"prompt_ids must have shape (1, P) with P >= 1, got {tuple(prompt_ids.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r} is invalid: it must be >= 0")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} is invalid: it must be in (0, 1]")
    eos = _normalise_eos(eos_token_ids)

    was_training = model.training
    model.eval()
    try:
        tokens: list[int] = []
        finish: Literal["eos", "length"] = "length"
        cache = None
        next_input = prompt_ids
        for _ in range(max_new_tokens):
            outputs = model(input_ids=next_input, cache=cache, use_cache=True, logits_to_keep=1)
            cache = outputs.cache
            token = sample_top_p(
                outputs.logits[0, -1], temperature=temperature, top_p=top_p, generator=generator
            )
            tokens.append(token)
            if token in eos:
                finish = "eos"
                break
            next_input = prompt_ids.new_tensor([[token]])
    finally:
        model.train(was_training)

    rollout_tokens = torch.tensor(tokens, dtype=torch.long, device=prompt_ids.device)
    return Rollout(tokens=rollout_tokens, truncated=finish == "length", finish=finish)
