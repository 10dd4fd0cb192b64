"""Nucleus sampler against sort-based top-p, and the rollout loop on tiny hybrid models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Qwen3_5ForConditionalGeneration, TopPLogitsWarper

from sdft.rollout import Rollout, sample_rollout, sample_top_p, top_p_candidates


def _sorted_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Reference nucleus by a full sort: a boolean (V,) mask, keeping all boundary ties."""
    values, order = probs.double().sort(descending=True)
    cumulative = values.cumsum(0)
    reached = torch.nonzero(cumulative >= top_p)
    size = int(reached[0]) + 1 if len(reached) else len(values)
    boundary = values[size - 1]
    return (probs.double() >= boundary) & (probs > 0)


def _mask_of(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[ids] = True
    return mask


def _random_probs(case: int, vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(case)
    scale = [0.5, 1.0, 3.0, 8.0][case % 4]  # from flat to very peaked
    logits = torch.randn(vocab_size, generator=generator) * scale
    return logits.softmax(-1)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.95, 0.999])
def test_nucleus_matches_full_sort(top_p: float) -> None:
    vocab_size = 5000  # large enough that a flat distribution needs several doublings of k
    for case in range(40):
        probs = _random_probs(case, vocab_size)

        ids, nucleus_probs = top_p_candidates(probs, top_p)

        expected = _sorted_nucleus(probs, top_p)
        assert torch.equal(_mask_of(ids, vocab_size), expected), f"case {case}"
        assert len(ids) == len(set(ids.tolist()))
        torch.testing.assert_close(nucleus_probs, probs[ids], rtol=0, atol=0)


def test_nucleus_matches_hf_warper() -> None:
    vocab_size = 3000
    for case in range(30):
        probs = _random_probs(case, vocab_size)
        top_p = [0.8, 0.95][case % 2]

        ids, _ = top_p_candidates(probs, top_p)

        warped = TopPLogitsWarper(top_p=top_p)(None, probs.log()[None])[0]
        hf_mask = torch.isfinite(warped)
        assert torch.equal(_mask_of(ids, vocab_size), hf_mask), f"case {case}"


def test_nucleus_keeps_all_boundary_ties() -> None:
    # 200 equal tokens: the nucleus boundary falls inside the tie, so all of them are kept,
    # including those beyond the first topk block of 64.
    probs = torch.cat([torch.full((200,), 0.004), torch.full((400,), 0.0005)])
    probs = probs / probs.sum()

    ids, _ = top_p_candidates(probs, 0.3)

    assert sorted(ids.tolist()) == list(range(200))
    assert torch.equal(_mask_of(ids, 600), _sorted_nucleus(probs, 0.3))


def test_nucleus_with_quantised_ties() -> None:
    vocab_size = 2000
    for case in range(30):
        generator = torch.Generator().manual_seed(100 + case)
        # Logits rounded to a coarse grid give many equal probabilities.
        logits = (torch.randn(vocab_size, generator=generator) * 3).round()
        probs = logits.softmax(-1)
        top_p = [0.5, 0.9, 0.95][case % 3]

        ids, _ = top_p_candidates(probs, top_p)

        assert torch.equal(_mask_of(ids, vocab_size), _sorted_nucleus(probs, top_p)), case


def test_nucleus_edge_cases() -> None:
    one_hot = torch.zeros(100)
    one_hot[7] = 1.0
    ids, nucleus_probs = top_p_candidates(one_hot, 0.95)
    assert ids.tolist() == [7]
    assert nucleus_probs.tolist() == [1.0]

    # top_p = 1 keeps every token with nonzero probability and skips zeros.
    probs = torch.tensor([0.5, 0.0, 0.25, 0.25])
    ids, _ = top_p_candidates(probs, 1.0)
    assert sorted(ids.tolist()) == [0, 2, 3]

    # A vocabulary smaller than the first k.
    small = torch.tensor([0.1, 0.6, 0.3])
    ids, _ = top_p_candidates(small, 0.7)
    assert sorted(ids.tolist()) == [1, 2]

    with pytest.raises(ValueError, match=r"\(V,\) vector"):
        top_p_candidates(small[None], 0.7)


def test_sample_top_p_draws_from_nucleus() -> None:
    logits = torch.tensor([2.0, 1.5, 1.0, -3.0, -3.0, -4.0])
    probs = (logits / 0.8).softmax(-1)
    nucleus = _sorted_nucleus(probs, 0.9)
    expected = torch.where(nucleus, probs, torch.zeros_like(probs))
    expected = expected / expected.sum()
    generator = torch.Generator().manual_seed(0)
    draws = 20000

    counts = torch.zeros(len(logits))
    for _ in range(draws):
        counts[sample_top_p(logits, temperature=0.8, top_p=0.9, generator=generator)] += 1

    assert counts[~nucleus].sum() == 0
    # Binomial standard error at 20,000 draws is at most 0.0036; allow about four of them.
    torch.testing.assert_close(counts / draws, expected, atol=0.015, rtol=0)


def test_sample_top_p_rejects_zero_temperature() -> None:
    with pytest.raises(ValueError, match="temperature=0"):
        sample_top_p(torch.zeros(5), temperature=0, top_p=0.9)


def _load(model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def _prompt(seed: int = 0, length: int = 7) -> torch.Tensor:
    return torch.randint(10, 1000, (1, length), generator=torch.Generator().manual_seed(seed))


def _sample(model: torch.nn.Module, seed: int, **overrides: object) -> Rollout:
    options: dict[str, object] = dict(
        max_new_tokens=12, temperature=1.0, top_p=0.95, eos_token_ids=None
    )
    options.update(overrides)
    generator = torch.Generator().manual_seed(seed)
    return sample_rollout(model, _prompt(), generator=generator, **options)


@pytest.fixture(scope="module")
def qwen_model(tiny_qwen3_5_dir: Path) -> torch.nn.Module:
    return _load(tiny_qwen3_5_dir)


def test_rollout_truncated_at_cap(qwen_model: torch.nn.Module) -> None:
    rollout = _sample(qwen_model, seed=0, max_new_tokens=9)

    assert rollout.tokens.shape == (9,)
    assert rollout.tokens.dtype == torch.long
    assert rollout.truncated
    assert rollout.finish == "length"


def test_rollout_stops_at_eos_and_keeps_it(qwen_model: torch.nn.Module) -> None:
    free = _sample(qwen_model, seed=3)
    eos = int(free.tokens[4])
    first = free.tokens.tolist().index(eos)

    stopped = _sample(qwen_model, seed=3, eos_token_ids=[eos, 99999])

    assert stopped.finish == "eos"
    assert not stopped.truncated
    assert stopped.tokens.tolist() == free.tokens[: first + 1].tolist()
    assert int(stopped.tokens[-1]) == eos


def test_rollout_eos_on_last_allowed_token(qwen_model: torch.nn.Module) -> None:
    free = _sample(qwen_model, seed=5, max_new_tokens=6)
    last = int(free.tokens[-1])
    if last in free.tokens[:-1].tolist():
        pytest.skip("the last token also appears earlier in this rollout")

    stopped = _sample(qwen_model, seed=5, max_new_tokens=6, eos_token_ids=last)

    assert stopped.finish == "eos"
    assert not stopped.truncated
    assert len(stopped.tokens) == 6


def test_rollout_deterministic_with_seed(qwen_model: torch.nn.Module) -> None:
    first = _sample(qwen_model, seed=11)
    second = _sample(qwen_model, seed=11)
    other = _sample(qwen_model, seed=12)

    assert torch.equal(first.tokens, second.tokens)
    assert not torch.equal(first.tokens, other.tokens)

    torch.manual_seed(4)
    global_first = sample_rollout(
        qwen_model, _prompt(), max_new_tokens=8, temperature=1.0, top_p=0.95, eos_token_ids=None
    )
    torch.manual_seed(4)
    global_second = sample_rollout(
        qwen_model, _prompt(), max_new_tokens=8, temperature=1.0, top_p=0.95, eos_token_ids=None
    )
    assert torch.equal(global_first.tokens, global_second.tokens)


def _check_matches_greedy_generate(model: torch.nn.Module) -> None:
    """A tiny top_p keeps only the argmax, so the KV-cache loop must equal greedy generate."""
    prompt = _prompt(seed=1, length=9)

    rollout = sample_rollout(
        model, prompt, max_new_tokens=10, temperature=1.0, top_p=1e-9, eos_token_ids=None
    )
    with torch.no_grad():
        generated = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=10,
            min_new_tokens=10,
            do_sample=False,
        )

    assert rollout.tokens.tolist() == generated[0, prompt.shape[1] :].tolist()


def test_rollout_cache_matches_generate_qwen(qwen_model: torch.nn.Module) -> None:
    _check_matches_greedy_generate(qwen_model)


def test_rollout_cache_matches_generate_llama(tiny_llama_dir: Path) -> None:
    model = _load(tiny_llama_dir)

    _check_matches_greedy_generate(model)
    rollout = _sample(model, seed=0, max_new_tokens=5)
    assert rollout.tokens.shape == (5,)


def test_rollout_vision_language_model(tiny_qwen3_5_vl_dir: Path) -> None:
    model = Qwen3_5ForConditionalGeneration.from_pretrained(
        tiny_qwen3_5_vl_dir, dtype=torch.float32
    )

    _check_matches_greedy_generate(model)


def test_rollout_peft_adapter_changes_samples(tiny_qwen3_5_dir: Path) -> None:
    model = get_peft_model(_load(tiny_qwen3_5_dir), LoraConfig(r=4, target_modules=["out_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=2.0)

    student = _sample(model, seed=7, top_p=1e-9)
    with model.disable_adapter():
        base = _sample(model, seed=7, top_p=1e-9)

    assert student.tokens.shape == (12,)
    assert not torch.equal(student.tokens, base.tokens)


def test_rollout_restores_train_mode(qwen_model: torch.nn.Module) -> None:
    qwen_model.train()
    _sample(qwen_model, seed=0, max_new_tokens=2)
    assert qwen_model.training

    qwen_model.eval()
    _sample(qwen_model, seed=0, max_new_tokens=2)
    assert not qwen_model.training


def test_rollout_zero_tokens(qwen_model: torch.nn.Module) -> None:
    rollout = _sample(qwen_model, seed=0, max_new_tokens=0)

    assert rollout.tokens.shape == (0,)
    assert rollout.truncated


def test_rollout_rejects_bad_arguments(qwen_model: torch.nn.Module) -> None:
    with pytest.raises(ValueError, match=r"shape \(1, P\)"):
        sample_rollout(
            qwen_model, _prompt()[0], max_new_tokens=2, temperature=1, top_p=1, eos_token_ids=None
        )
    with pytest.raises(ValueError, match="top_p=0"):
        _sample(qwen_model, seed=0, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens=-1"):
        _sample(qwen_model, seed=0, max_new_tokens=-1)
