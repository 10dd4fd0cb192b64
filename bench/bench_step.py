"""Benchmark one SDFT training step on CPU: our step, a full-logits step and TRL's SDFT trainer.

Run by hand from the repository root (not part of the test suite):

    python bench/bench_step.py                  # rollouts of 256, 1024 and 4096 tokens
    python bench/bench_step.py --lengths 256 --repeats 1 --skip trl sampler

Every configuration runs in a fresh subprocess. After loading the model, adapter and optimizer,
the worker resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`, Linux) and
records the current RSS ("baseline"). It then runs one warm-up step (skipped at 4,096 tokens)
and the timed steps, and reports the median wall and CPU time per step, the peak RSS (VmHWM),
and its growth over the baseline ("step dMiB"). Ratios compare configurations measured in the
same run of this script. CPU time is reported next to wall time because a shared machine
slows wall time unevenly.

All configurations use the tiny random Qwen3.5 (hybrid linear/full attention, hidden 64) with
the real 248,320-id vocabulary, LoRA r=64 alpha=128 on the default target modules, batch 1,
fp32, reverse KL, rollout temperature 0.8 and top-p 0.95. Rollout lengths are forced: ours
passes no EOS id, the others set `min_new_tokens` to the length.

The LM head of the random model is scaled by `--logit-scale` (default 40) so that its
next-token distributions are peaked like those of a trained model. Unscaled, the logits have a
standard deviation near 0.2, and the nucleus at top_p = 0.95 spans most of the vocabulary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdft.config import DEFAULT_TARGET_MODULES  # noqa: E402
from sdft.losses import masked_mean, reverse_kl  # noqa: E402
from sdft.rollout import sample_rollout, sample_top_p, top_p_candidates  # noqa: E402
from sdft.scoring import chunked_token_stats, lm_head_of, rollout_hidden_states  # noqa: E402

logger = logging.getLogger("bench_step")

IMPLEMENTATIONS = ("ours", "naive", "trl")
ROLLOUT_TEMPERATURE = 0.8
TOP_P = 0.95
LEARNING_RATE = 1e-5
CHUNK_BYTES = 16 * 1024 * 1024
PROMPT = (
    "You are a coding assistant with shell access. The user reports that the test suite of "
    "their web service fails after a dependency upgrade: the JSON encoder now rejects "
    "datetime values in the audit log. Find the failing call, fix it, and explain the change."
)
EXPERT_REFERENCE = (
    "I searched the repository for the audit logger, found that it passes datetime objects to "
    "json.dumps, and added a default= hook that formats them with isoformat(). Then I ran the "
    "failing tests again and they passed. The upgrade removed the implicit str() fallback."
)
TEACHER_TEMPLATE = "{prompt}\n\n{privileged_context}"


def _status_mib(field: str) -> float:
    """Read a memory field (VmRSS, VmHWM) of this process from /proc, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    raise RuntimeError(f"{field} is missing from /proc/self/status")


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS counter (VmHWM) and return the current RSS in MiB.

    Writing 5 to /proc/self/clear_refs (Linux 4.0 and later) sets VmHWM to the current RSS, so
    a later VmHWM is the peak of what ran after the reset, without the model-loading peak.
    """
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def _peak_rss_mib() -> float:
    return _status_mib("VmHWM")


def _load_student(model_dir: Path, logit_scale: float) -> tuple[Any, Any]:
    """Load the tiny model with a fresh LoRA adapter and return the peft model and tokenizer."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale)
    config = LoraConfig(
        r=64, lora_alpha=128, lora_dropout=0.0, target_modules=list(DEFAULT_TARGET_MODULES)
    )
    return get_peft_model(model, config), AutoTokenizer.from_pretrained(model_dir)


def _prompt_ids(tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    student = tokenizer(PROMPT, return_tensors="pt").input_ids
    teacher_text = TEACHER_TEMPLATE.format(prompt=PROMPT, privileged_context=EXPERT_REFERENCE)
    teacher = tokenizer(teacher_text, return_tensors="pt").input_ids
    return student, teacher


def _time_steps(step: Callable[[], dict[str, float]], repeats: int, warm_up: bool) -> list[dict]:
    if warm_up:
        step()  # first-touch allocations and lazy initialisation
    return [step() for _ in range(repeats)]


def _update(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _step_times(
    start: float, cpu_start: float, sampled: float, loss: torch.Tensor
) -> dict[str, float]:
    return {
        "step_s": time.perf_counter() - start,
        "cpu_s": time.process_time() - cpu_start,
        "rollout_s": sampled - start,
        "loss": loss.item(),
    }


def _ours_step(model: Any, tokenizer: Any, length: int) -> Callable[[], dict[str, float]]:
    student_prompt, teacher_prompt = _prompt_ids(tokenizer)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE
    )
    head = lm_head_of(model)
    generator = torch.Generator().manual_seed(0)

    def step() -> dict[str, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        rollout = sample_rollout(
            model,
            student_prompt,
            max_new_tokens=length,
            temperature=ROLLOUT_TEMPERATURE,
            top_p=TOP_P,
            eos_token_ids=None,
            generator=generator,
        )
        sampled = time.perf_counter()
        tokens = rollout.tokens
        assert len(tokens) == length, f"rollout has {len(tokens)} tokens, expected {length}"

        model.train()
        with torch.no_grad(), model.disable_adapter():
            teacher_ids = torch.cat([teacher_prompt, tokens[None]], dim=1)
            teacher_hidden = rollout_hidden_states(model, teacher_ids, length)
        student_ids = torch.cat([student_prompt, tokens[None]], dim=1)
        student_hidden = rollout_hidden_states(model, student_ids, length)
        stats = chunked_token_stats(
            student_hidden, teacher_hidden, head, tokens, chunk_bytes=CHUNK_BYTES
        )
        loss = masked_mean(stats.divergence, torch.ones(length, dtype=torch.bool))
        _update(loss, optimizer)
        return _step_times(start, cpu_start, sampled, loss)

    return step


def _naive_step(model: Any, tokenizer: Any, length: int) -> Callable[[], dict[str, float]]:
    """HF generate with its sort-based top-p, then full-sequence logits of both models."""
    student_prompt, teacher_prompt = _prompt_ids(tokenizer)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE
    )

    def step() -> dict[str, float]:
        start, cpu_start = time.perf_counter(), time.process_time()
        model.eval()
        with torch.no_grad():
            generated = model.generate(
                input_ids=student_prompt,
                attention_mask=torch.ones_like(student_prompt),
                do_sample=True,
                temperature=ROLLOUT_TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=length,
                min_new_tokens=length,
            )
        sampled = time.perf_counter()
        tokens = generated[0, student_prompt.shape[1] :]
        assert len(tokens) == length, f"rollout has {len(tokens)} tokens, expected {length}"

        model.train()
        with torch.no_grad(), model.disable_adapter():
            teacher_ids = torch.cat([teacher_prompt, tokens[None]], dim=1)
            teacher_logits = model(input_ids=teacher_ids).logits[0, -length - 1 : -1]
        student_ids = torch.cat([student_prompt, tokens[None]], dim=1)
        student_logits = model(input_ids=student_ids).logits[0, -length - 1 : -1]
        loss = reverse_kl(student_logits, teacher_logits).mean()
        _update(loss, optimizer)
        return _step_times(start, cpu_start, sampled, loss)

    return step


def _run_trl(
    model_dir: Path, length: int, repeats: int, warm_up: bool, logit_scale: float
) -> dict[str, Any]:
    """Train TRL's experimental SDFT trainer: an optional warm-up, then `repeats` timed steps."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(logit_scale)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    steps = repeats + int(warm_up)
    dataset = Dataset.from_list(
        [{"prompt": PROMPT, "privileged_context": EXPERT_REFERENCE}] * steps
    )
    output_dir = tempfile.mkdtemp(prefix="bench-trl-")
    args = SDFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=1,
        gradient_accumulation_steps=1,
        num_generations=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        max_prompt_length=None,
        max_completion_length=length,
        temperature=ROLLOUT_TEMPERATURE,
        top_p=TOP_P,
        generation_kwargs={"min_new_tokens": length},
        distillation_mode="full_logits",
        distillation_alpha=1.0,  # reverse KL(student || teacher) in TRL's convention
        distillation_is_clip=None,
        teacher_model_kind="base",
        teacher_prompt_template=TEACHER_TEMPLATE,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        seed=0,
    )
    peft_config = LoraConfig(
        r=64, lora_alpha=128, lora_dropout=0.0, target_modules=list(DEFAULT_TARGET_MODULES)
    )

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.starts: list[tuple[float, float]] = []
            self.steps: list[dict[str, float]] = []

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self.starts.append((time.perf_counter(), time.process_time()))

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            wall, cpu = self.starts[-1]
            self.steps.append(
                {"step_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
            )

    timer = StepTimer()
    trainer = SDFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[timer],
    )
    baseline = _reset_peak_rss()
    trainer.train()
    return {
        "baseline_mib": baseline,
        "peak_mib": _peak_rss_mib(),
        "steps": timer.steps[1:] if warm_up else timer.steps,
    }


def run_worker(
    impl: str, model_dir: Path, length: int, repeats: int, warm_up: bool, logit_scale: float
) -> None:
    """Measure one configuration and print its result as one JSON line."""
    torch.manual_seed(0)
    if impl == "trl":
        result = _run_trl(model_dir, length, repeats, warm_up, logit_scale)
    else:
        model, tokenizer = _load_student(model_dir, logit_scale)
        build = _ours_step if impl == "ours" else _naive_step
        step = build(model, tokenizer, length)
        baseline = _reset_peak_rss()
        steps = _time_steps(step, repeats, warm_up)
        result = {"baseline_mib": baseline, "peak_mib": _peak_rss_mib(), "steps": steps}
    result.update({"impl": impl, "length": length, "repeats": repeats, "warm_up": warm_up})
    print("RESULT " + json.dumps(result), flush=True)


def _hf_top_p_sample(logits: torch.Tensor, temperature: float, top_p: float) -> int:
    """Sample like HF generate: temperature and TopPLogitsWarper (full sort), then softmax."""
    from transformers import TopPLogitsWarper

    scores = TopPLogitsWarper(top_p=top_p)(None, (logits / temperature)[None])
    return int(torch.multinomial(scores.softmax(-1)[0], 1))


class _NucleusProcessor(LogitsProcessor):
    """Mask every token outside `top_p_candidates`' nucleus, for use inside HF `generate`.

    transformers 5.25 runs custom processors before its temperature warper, so the nucleus is
    taken from the scores divided by `temperature` here, as in `sample_rollout`.
    """

    def __init__(self, top_p: float, temperature: float) -> None:
        self.top_p = top_p
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        masked = torch.full_like(scores, float("-inf"))  # (B, V)
        for row in range(scores.shape[0]):
            probs = (scores[row] / self.temperature).softmax(-1)
            ids, _ = top_p_candidates(probs, self.top_p)
            masked[row, ids] = scores[row, ids]
        return masked


def run_sampler_bench(model_dir: Path, logit_scale: float, tokens: int) -> None:
    """Time the sampler alone per token, on synthetic logits and on the tiny model's decode."""
    results: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(0)
    vocab_size = 248320
    for name, scale in (("peaked (std 5)", 5.0), ("flat (std 1)", 1.0)):
        logits = [torch.randn(vocab_size, generator=generator) * scale for _ in range(tokens)]
        nucleus = statistics.median(
            len(top_p_candidates((x / ROLLOUT_TEMPERATURE).softmax(-1), TOP_P)[0]) for x in logits
        )
        start = time.perf_counter()
        for x in logits:
            sample_top_p(x, temperature=ROLLOUT_TEMPERATURE, top_p=TOP_P, generator=generator)
        ours = (time.perf_counter() - start) / tokens
        start = time.perf_counter()
        for x in logits:
            _hf_top_p_sample(x, ROLLOUT_TEMPERATURE, TOP_P)
        hf = (time.perf_counter() - start) / tokens
        results[name] = {"ours_ms": ours * 1e3, "hf_ms": hf * 1e3, "nucleus": nucleus}

    model, tokenizer = _load_student(model_dir, logit_scale)
    prompt, _ = _prompt_ids(tokenizer)
    decode: dict[str, float] = {}
    start = time.perf_counter()
    sample_rollout(
        model,
        prompt,
        max_new_tokens=tokens,
        temperature=ROLLOUT_TEMPERATURE,
        top_p=TOP_P,
        eos_token_ids=None,
        generator=generator,
    )
    decode["ours_loop_ms"] = (time.perf_counter() - start) / tokens * 1e3
    for label, options in (
        ("hf_generate_top_p_ms", {"do_sample": True, "top_p": TOP_P, "top_k": 0}),
        ("hf_generate_no_top_p_ms", {"do_sample": True, "top_p": 1.0, "top_k": 0}),
        ("hf_generate_greedy_ms", {"do_sample": False}),
        (
            "hf_generate_our_nucleus_ms",
            {
                "do_sample": True,
                "top_p": 1.0,
                "top_k": 0,
                "logits_processor": LogitsProcessorList(
                    [_NucleusProcessor(TOP_P, ROLLOUT_TEMPERATURE)]
                ),
            },
        ),
    ):
        with torch.no_grad():
            start = time.perf_counter()
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                temperature=ROLLOUT_TEMPERATURE,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                **options,
            )
            decode[label] = (time.perf_counter() - start) / tokens * 1e3
    results["decode"] = decode
    print("RESULT " + json.dumps({"impl": "sampler", **results}), flush=True)


def _spawn(arguments: list[str]) -> dict[str, Any] | None:
    command = [sys.executable, str(Path(__file__).resolve()), *arguments]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line.removeprefix("RESULT "))
            result["wall_s"] = wall
            return result
    logger.error(
        "benchmark worker %s failed with exit code %d:\n%s",
        " ".join(arguments),
        completed.returncode,
        completed.stderr[-4000:],
    )
    return None


def _summarise(result: dict[str, Any]) -> dict[str, float]:
    steps = result["steps"]
    summary = {
        "step_s": statistics.median(s["step_s"] for s in steps),
        "cpu_s": statistics.median(s["cpu_s"] for s in steps),
        "peak_mib": result["peak_mib"],
        "delta_mib": result["peak_mib"] - result["baseline_mib"],
    }
    if "rollout_s" in steps[0]:
        summary["rollout_s"] = statistics.median(s["rollout_s"] for s in steps)
    return summary


def _print_tables(step_results: list[dict[str, Any]], sampler: dict[str, Any] | None) -> None:
    if step_results:
        _print_step_table(step_results)
    if sampler is None:
        return
    print()
    print(
        f"{'logits':<16} {'nucleus':>8} {'ours ms/token':>14} {'HF ms/token':>12} {'HF / ours':>10}"
    )
    for name in ("peaked (std 5)", "flat (std 1)"):
        row = sampler[name]
        print(
            f"{name:<16} {row['nucleus']:>8.0f} {row['ours_ms']:14.2f} {row['hf_ms']:12.2f} "
            f"{row['hf_ms'] / row['ours_ms']:10.2f}"
        )
    print()
    print("decode on the tiny model, ms per token:")
    for label, value in sampler["decode"].items():
        print(f"  {label:<26} {value:8.2f}")


def _print_step_table(step_results: list[dict[str, Any]]) -> None:
    by_key = {(r["impl"], r["length"]): _summarise(r) for r in step_results}
    lengths = sorted({r["length"] for r in step_results})
    header = (
        f"{'T':>5} {'impl':<6} {'step s':>8} {'CPU s':>8} {'rollout s':>9} {'peak MiB':>9} "
        f"{'step dMiB':>9} {'time / ours':>11} {'CPU / ours':>10} {'dMiB / ours':>11}"
    )
    print(header)
    for length in lengths:
        ours = by_key.get(("ours", length))
        for impl in IMPLEMENTATIONS:
            row = by_key.get((impl, length))
            if row is None:
                continue
            rollout = f"{row['rollout_s']:9.2f}" if "rollout_s" in row else f"{'-':>9}"
            time_ratio = f"{row['step_s'] / ours['step_s']:11.2f}" if ours else f"{'-':>11}"
            cpu_ratio = f"{row['cpu_s'] / ours['cpu_s']:10.2f}" if ours else f"{'-':>10}"
            memory_ratio = (
                f"{row['delta_mib'] / ours['delta_mib']:11.2f}"
                if ours and ours["delta_mib"] > 0
                else f"{'-':>11}"
            )
            print(
                f"{length:>5} {impl:<6} {row['step_s']:8.2f} {row['cpu_s']:8.2f} {rollout} "
                f"{row['peak_mib']:9.0f} {row['delta_mib']:9.0f} {time_ratio} {cpu_ratio} "
                f"{memory_ratio}"
            )


def _plan(lengths: list[int], repeats: int, skip: set[str]) -> list[tuple[str, int, int, bool]]:
    """Return (impl, length, timed steps, warm-up) per configuration.

    Longer rollouts get fewer timed steps so that the whole run stays near 20 minutes on two
    cores: one after a warm-up from 1,024 tokens, and one without warm-up from 4,096. Full-logits
    steps at 4,096 tokens need 4 GB per (T, V) float32 tensor and several of them at once, which
    is more memory than a 24 GiB machine shared with other jobs has, so only ours runs there.
    """
    plan = []
    for length in lengths:
        if length >= 4096:
            length_repeats, warm_up = 1, False
        elif length >= 1024:
            length_repeats, warm_up = 1, True
        else:
            length_repeats, warm_up = repeats, True
        for impl in IMPLEMENTATIONS:
            if impl in skip or (impl != "ours" and length >= 4096):
                continue
            plan.append((impl, length, length_repeats, warm_up))
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--model-dir", type=Path, help="tiny model built with vocab='qwen'")
    parser.add_argument("--logit-scale", type=float, default=40.0, help="LM head multiplier")
    parser.add_argument("--skip", nargs="*", default=[], choices=[*IMPLEMENTATIONS, "sampler"])
    parser.add_argument("--sampler-tokens", type=int, default=128)
    parser.add_argument("--output", type=Path, help="write all results as JSON here")
    parser.add_argument("--worker", choices=[*IMPLEMENTATIONS, "sampler"], help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-warm-up", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    if args.worker == "sampler":
        run_sampler_bench(args.model_dir, args.logit_scale, args.sampler_tokens)
        return
    if args.worker is not None:
        run_worker(
            args.worker,
            args.model_dir,
            args.length,
            args.repeats,
            not args.no_warm_up,
            args.logit_scale,
        )
        return

    model_dir = args.model_dir
    if model_dir is None:
        from sdft.models.tiny import build_tiny_model

        model_dir = build_tiny_model(
            Path(tempfile.mkdtemp(prefix="bench-tiny-qwen-")), arch="qwen3_5", vocab="qwen"
        )
    common = ["--model-dir", str(model_dir), "--logit-scale", str(args.logit_scale)]

    step_results = []
    for impl, length, repeats, warm_up in _plan(args.lengths, args.repeats, set(args.skip)):
        logger.info("measuring %s at %d rollout tokens (%d timed steps)", impl, length, repeats)
        worker = ["--worker", impl, "--length", str(length), "--repeats", str(repeats)]
        result = _spawn(worker + common + ([] if warm_up else ["--no-warm-up"]))
        if result is not None:
            logger.info("%s at %d: %s", impl, length, _summarise(result))
            step_results.append(result)

    sampler = None
    if "sampler" not in args.skip:
        logger.info("measuring the sampler alone")
        sampler = _spawn(
            ["--worker", "sampler", "--sampler-tokens", str(args.sampler_tokens), *common]
        )

    print()
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, logit scale {args.logit_scale}"
    )
    _print_tables(step_results, sampler)
    if args.output is not None:
        args.output.write_text(json.dumps({"steps": step_results, "sampler": sampler}, indent=2))


if __name__ == "__main__":
    main()
