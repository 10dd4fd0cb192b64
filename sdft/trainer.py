"""The SDFT training loop: one model, a LoRA student and a reference-prompted teacher.

Each optimizer step runs `gradient_accumulation_steps` micro-batches of `batch_size`
records. A record is trained on-policy with probability `lambda_on_policy`. Then the
student (adapter on) samples a rollout y for the student prompt x. The teacher (adapter
off, or the "ema" adapter) scores y after the teacher prompt, which contains the expert
reference, and the student scores y after x with gradients. The loss is the per-token
divergence between the two next-token distributions. Otherwise the loss is cross-entropy
on the expert turn's tokens after x.

Normalisation: the loss of a micro-batch is the sum of per-token losses over every scored
token in it (rollout tokens of on-policy records, expert tokens of the others), divided by
that token count and by `gradient_accumulation_steps`. Each token weighs the same whatever
the length of its rollout, and an empty micro-batch contributes zero.

Records are processed one at a time inside a micro-batch, so memory keeps the autograd
graph of one sequence at a time. Rollouts of a micro-batch are sampled first, which fixes
the token count before any backward pass.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from peft import PeftModel

from sdft.checkpoint import (
    DataPosition,
    RandomState,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from sdft.config import SDFTConfig
from sdft.data.records import Record
from sdft.metrics import MetricsLog, divergence_metric
from sdft.models.adapters import (
    EMA_ADAPTER,
    STUDENT_ADAPTER,
    AdapterReport,
    add_ema_adapter,
    attach_adapter,
    update_ema_adapter,
    use_adapter,
)
from sdft.models.loading import load_model_and_tokenizer, resolve_device_dtype
from sdft.prompts import ExamplePrompts, PromptBuilder, PromptError
from sdft.rollout import Rollout, sample_rollout
from sdft.scoring import (
    chunked_token_logprobs,
    chunked_token_stats,
    lm_head_of,
    rollout_hidden_states,
)
from sdft.teacher_check import TeacherCheckReport, run_teacher_check

logger = logging.getLogger(__name__)

_SCHEDULERS = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}

# Config options that may change between a run and its resumption without breaking the
# exact continuation of the data order, optimizer and RNG streams.
_RESUMABLE_CHANGES = frozenset({"max_steps", "checkpoint_every", "device"})


class TrainingError(RuntimeError):
    """A run that cannot continue; the message names the input to change."""


class SupportsTrainCallbacks(Protocol):
    """The three methods of `TrainCallbacks`, which is all that `SDFTRun` calls."""

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None: ...

    def on_event(self, kind: str, data: dict[str, Any]) -> None: ...

    def should_stop(self) -> bool: ...


class TrainCallbacks:
    """Hooks through which a caller follows and stops a run.

    Subclass and override what you need; the defaults do nothing. Any object with these
    three methods works too (see `SupportsTrainCallbacks`).

    Event kinds and their data:
    - "teacher_check": `TeacherCheckReport.to_dict()`, once before the first step.
    - "example_skipped": step, record_index, reason, tokens, limit.
    - "checkpoint_saved": path, step.
    - "resumed": path, step.
    - "stopped": step, the last completed step.
    """

    def on_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Receive the metrics of optimizer step `step` (1-based) once it is done."""

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """Receive a lifecycle event."""

    def should_stop(self) -> bool:
        """Return True to stop before the next step; no further checkpoint is written."""
        return False


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    steps_done: int
    stopped: bool
    last_checkpoint: Path | None
    skipped: dict[str, int]
    rollouts: int
    truncated_rollouts: int
    final_metrics: dict[str, Any]
    teacher_check: TeacherCheckReport | None = None


@dataclass(frozen=True)
class _Skip:
    reason: str
    tokens: int
    limit: int
    detail: str


@dataclass
class _Example:
    index: int
    prompts: ExamplePrompts
    on_policy: bool = True
    rollout: Rollout | None = None

    @property
    def targets(self) -> list[int]:
        """Token ids this example is scored on: its rollout, or the expert turn."""
        if self.on_policy:
            return [] if self.rollout is None else self.rollout.tokens.tolist()
        return self.prompts.expert.token_ids


@dataclass
class _StepTotals:
    """Sums over the examples of one optimizer step, turned into metrics at its end."""

    loss: float = 0.0
    on_policy: int = 0
    off_policy: int = 0
    truncated: int = 0
    rollout_tokens: int = 0
    divergence_sum: float = 0.0
    student_logprob_sum: float = 0.0
    teacher_logprob_sum: float = 0.0
    expert_tokens: int = 0
    expert_nll_sum: float = 0.0
    rollout_s: float = 0.0


class SDFTRun:
    """One SDFT training run over `records`, writing everything under `output_dir`.

    Writes `metrics.jsonl` (one line per optimizer step) and `checkpoints/step-NNNNNN/`
    every `checkpoint_every` steps and at the end. `teacher_check_records` records are
    scored by `sdft.teacher_check` before the first step; 0 turns that off.
    """

    def __init__(
        self,
        config: SDFTConfig,
        model_dir: str | Path,
        records: Sequence[Record],
        output_dir: str | Path,
        callbacks: SupportsTrainCallbacks | None = None,
        *,
        teacher_check_records: int = 2,
    ) -> None:
        if not records:
            raise TrainingError("the dataset has no records; pass at least one record")
        self.config = config
        self.model_dir = Path(model_dir)
        self.records = list(records)
        self.output_dir = Path(output_dir)
        self.callbacks = callbacks or TrainCallbacks()
        self.teacher_check_records = teacher_check_records
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_log = MetricsLog(self.output_dir)

        self._model: PeftModel | None = None
        self.tokenizer: Any = None
        self.adapter_report: AdapterReport | None = None
        self.state = TrainState(data=DataPosition(seed=config.seed))
        self._prepared: dict[int, _Example | _Skip] = {}
        self._epoch_orders: dict[int, list[int]] = {}
        self._warned_records: set[int] = set()
        self._last_skip_detail = ""
        self._trained = False

    # Public API.

    @property
    def model(self) -> PeftModel:
        """The student model with its adapters, loaded by `train()`."""
        if self._model is None:
            raise TrainingError(
                "the model is not loaded: call train() first, and do not use the run after "
                "save_merged(), which consumes the adapter model"
            )
        return self._model

    def train(self, resume_from: Path | None = None) -> TrainResult:
        """Train to `config.max_steps`, or resume from a checkpoint folder and continue.

        Returns early with `stopped=True` when `callbacks.should_stop()` turns true.
        """
        if self._trained:
            raise TrainingError("train() was already called on this SDFTRun; create a new one")
        self._trained = True
        resume = read_checkpoint(Path(resume_from)) if resume_from is not None else None
        if resume is not None:
            self._check_resumable(resume.config, resume.records, resume.path)
        elif (existing := latest_checkpoint(self.output_dir)) is not None:
            # A fresh run would mix its checkpoints with the old run's, and `latest` would
            # then pick whichever has the higher step.
            raise TrainingError(
                f"{self.output_dir} already contains checkpoints of another run (latest: "
                f"{existing.name}); resume from one of them or choose a new output folder"
            )

        self._setup()
        teacher_report = None
        last_checkpoint = None
        if resume is None:
            self.metrics_log.path.unlink(missing_ok=True)
            teacher_report = self._teacher_check()
        else:
            loaded = load_checkpoint(
                resume.path,
                model=self.model,
                adapter_names=self._adapter_names,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                random_state=self._random_state,
            )
            self.state = loaded.state
            self._reapply_schedule()
            self.metrics_log.truncate_after(self.state.step)
            last_checkpoint = loaded.path
            logger.info("resumed from step %d (%s)", self.state.step, loaded.path)
            self._emit("resumed", {"path": str(loaded.path), "step": self.state.step})

        metrics: dict[str, Any] = {}
        while self.state.step < self.config.max_steps:
            if self.callbacks.should_stop():
                logger.info("stop requested after step %d", self.state.step)
                self._emit("stopped", {"step": self.state.step})
                return self._result(True, last_checkpoint, metrics, teacher_report)

            metrics = self._train_step()
            self.metrics_log.append(metrics)
            self.callbacks.on_metrics(self.state.step, metrics)

            at_end = self.state.step == self.config.max_steps
            if at_end or self.state.step % self.config.checkpoint_every == 0:
                last_checkpoint = self._save_checkpoint()

        logger.info("finished %d steps; output in %s", self.state.step, self.output_dir)
        return self._result(False, last_checkpoint, metrics, teacher_report)

    def save_merged(self, out_dir: str | Path) -> Path:
        """Merge the student adapter into the base weights and save them as bf16 safetensors.

        The merge changes the loaded model in place, so call this once, after `train`.
        """
        from sdft.models.export import save_merged

        if self._model is None:
            raise TrainingError("save_merged() needs a trained model; call train() first")
        run_info = {
            "config": self.config.to_dict(),
            "dataset_records": len(self.records),
            "steps": self.state.step,
            "skipped": dict(self.state.skipped),
            "rollouts": self.state.rollouts,
            "truncated_rollouts": self.state.truncated_rollouts,
        }
        if self.adapter_report is not None:
            run_info["adapter"] = self.adapter_report.to_dict()
        report = save_merged(
            self.model,
            self.tokenizer,
            Path(out_dir),
            base_model_dir=self.model_dir,
            run_info=run_info,
        )
        self._model = None  # the merge consumed the adapter model
        return report.out_dir

    # Setup.

    def _setup(self) -> None:
        config = self.config
        transformers.set_seed(config.seed)
        self.device, self.dtype = resolve_device_dtype(config)
        model, self.tokenizer = load_model_and_tokenizer(
            self.model_dir, device=self.device, dtype=self.dtype
        )
        if config.gradient_checkpointing:
            _enable_activation_checkpointing(model)

        self._model, self.adapter_report = attach_adapter(model, config)
        self._adapter_names = [STUDENT_ADAPTER]
        if config.teacher == "ema":
            add_ema_adapter(self.model)
            self._adapter_names.append(EMA_ADAPTER)

        self.trainable_params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable_params,
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
        )
        if config.warmup_steps >= config.max_steps:
            logger.warning(
                "warmup_steps=%d is not below max_steps=%d, so the learning rate never reaches "
                "learning_rate=%g; lower warmup_steps for a short run",
                config.warmup_steps,
                config.max_steps,
                config.learning_rate,
            )
        self.scheduler = transformers.get_scheduler(
            _SCHEDULERS[config.lr_scheduler],
            optimizer=self.optimizer,
            num_warmup_steps=config.warmup_steps,
            num_training_steps=config.max_steps,
        )

        self.eos_token_ids = _eos_token_ids(self.model, self.tokenizer)
        self.builder = PromptBuilder(
            self.tokenizer, config, self.records, eos_token_ids=self.eos_token_ids
        )
        self.lm_head = lm_head_of(self.model)
        self._policy_rng = random.Random(f"{config.seed}:policy")
        self._rollout_generator = torch.Generator(device=self.device)
        self._rollout_generator.manual_seed(config.seed)
        self._random_state = RandomState(
            python={"policy": self._policy_rng}, torch={"rollout": self._rollout_generator}
        )

    def _reapply_schedule(self) -> None:
        """Set the learning rate of the restored step from this run's schedule.

        The checkpoint stores the learning rate that the original run's schedule gave. When
        `max_steps` changed (a finished run extended, say), the linear and cosine schedules
        give another rate for the same step, and this run's schedule must win.
        """
        scheduler = self.scheduler
        lambdas = getattr(scheduler, "lr_lambdas", None)
        if lambdas is None:
            return
        step = scheduler.last_epoch
        rates = [base * fn(step) for base, fn in zip(scheduler.base_lrs, lambdas, strict=True)]
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = rate
        scheduler._last_lr = rates  # what get_last_lr() returns

    def _check_resumable(
        self, saved_config: dict[str, Any], saved_records: int, path: Path
    ) -> None:
        if saved_records != len(self.records):
            raise TrainingError(
                f"{path} was trained on {saved_records} records but this run has "
                f"{len(self.records)}; resume with the same dataset"
            )
        current = self.config.to_dict()
        changed = sorted(
            key
            for key in set(saved_config) | set(current)
            if saved_config.get(key) != current.get(key) and key not in _RESUMABLE_CHANGES
        )
        if changed:
            logger.warning(
                "resuming from %s with changed options %s; the run will not match an "
                "uninterrupted one",
                path,
                ", ".join(changed),
            )

    # One optimizer step.

    def _train_step(self) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        totals = _StepTotals()

        # Learning rate of this step, set by the scheduler after the previous one.
        lr = self.scheduler.get_last_lr()[0]

        # Micro-batches: each backward adds its share of the step's gradient.
        for _ in range(config.gradient_accumulation_steps):
            examples = [self._next_example() for _ in range(config.batch_size)]
            self._run_micro_batch(examples, totals)

        # Clip, update the adapter, advance the schedule, clear the gradients.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable_params, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        # The EMA teacher trails the student by `ema_decay` per step.
        if config.teacher == "ema":
            update_ema_adapter(self.model, config.ema_decay)

        self.state.step += 1
        step_s = time.perf_counter() - started
        return self._step_metrics(totals, lr, float(grad_norm), step_s)

    def _run_micro_batch(self, examples: list[_Example], totals: _StepTotals) -> None:
        config = self.config

        # Choose on- or off-policy per example, then sample every rollout, so that the
        # token count that normalises the loss is known before the first backward.
        for example in examples:
            example.on_policy = self._policy_rng.random() < config.lambda_on_policy
            if example.on_policy:
                example.rollout = self._sample_rollout(example, totals)
        num_tokens = sum(len(example.targets) for example in examples)
        if num_tokens == 0:
            return
        scale = 1.0 / (num_tokens * config.gradient_accumulation_steps)

        # Score each example with gradients and backpropagate its share of the loss.
        for example in examples:
            if not example.targets:
                continue
            if example.on_policy:
                loss = self._divergence_loss(example, totals) * scale
            else:
                loss = self._cross_entropy_loss(example, totals) * scale
            loss.backward()
            totals.loss += float(loss.detach())

    def _sample_rollout(self, example: _Example, totals: _StepTotals) -> Rollout:
        started = time.perf_counter()
        prompt_ids = self._tensor(example.prompts.student.token_ids)
        rollout = sample_rollout(
            self.model,
            prompt_ids,
            max_new_tokens=self.config.max_rollout_tokens,
            temperature=self.config.rollout_temperature,
            top_p=self.config.rollout_top_p,
            eos_token_ids=self.eos_token_ids,
            generator=self._rollout_generator,
        )
        totals.rollout_s += time.perf_counter() - started
        totals.on_policy += 1
        totals.truncated += int(rollout.truncated)
        self.state.rollouts += 1
        self.state.truncated_rollouts += int(rollout.truncated)
        return rollout

    def _divergence_loss(self, example: _Example, totals: _StepTotals) -> torch.Tensor:
        """Return the summed per-token divergence of the example's rollout, with grad."""
        assert example.rollout is not None
        rollout_ids = example.rollout.tokens.tolist()
        num_tokens = len(rollout_ids)
        targets = example.rollout.tokens.to(self.device)  # (T,)

        # Teacher: adapter off (or the EMA adapter), teacher prompt, no gradients.
        teacher_ids = self._tensor(example.prompts.teacher.token_ids + rollout_ids)
        self.model.eval()
        with torch.no_grad(), self._teacher():
            teacher_hidden = rollout_hidden_states(self.model, teacher_ids, num_tokens)  # (T, H)

        # Student: adapter on, student prompt, gradients into the adapter.
        student_ids = self._tensor(example.prompts.student.token_ids + rollout_ids)
        self.model.train()
        student_hidden = rollout_hidden_states(self.model, student_ids, num_tokens)  # (T, H)

        stats = chunked_token_stats(
            student_hidden,
            teacher_hidden,
            self.lm_head,
            targets,
            loss=self.config.loss,
            temperature=self.config.kl_temperature,
            jsd_beta=self.config.jsd_beta,
            top_k=self.config.top_k_logits,
            chunk_bytes=self.config.logits_chunk_bytes,
        )
        assert stats.divergence is not None and stats.teacher_logprobs is not None
        totals.rollout_tokens += num_tokens
        totals.divergence_sum += float(stats.divergence.detach().sum())
        totals.student_logprob_sum += float(stats.student_logprobs.sum())
        totals.teacher_logprob_sum += float(stats.teacher_logprobs.sum())
        return stats.divergence.sum()

    def _cross_entropy_loss(self, example: _Example, totals: _StepTotals) -> torch.Tensor:
        """Return the summed negative log-likelihood of the expert turn, with grad."""
        expert_ids = example.prompts.expert.token_ids
        input_ids = self._tensor(example.prompts.student.token_ids + expert_ids)
        self.model.train()
        hidden = rollout_hidden_states(self.model, input_ids, len(expert_ids))  # (T, H)
        logprobs = chunked_token_logprobs(
            hidden,
            self.lm_head,
            torch.tensor(expert_ids, device=self.device),
            chunk_bytes=self.config.logits_chunk_bytes,
        )  # (T,)
        totals.off_policy += 1
        totals.expert_tokens += len(expert_ids)
        totals.expert_nll_sum += float(-logprobs.detach().sum())
        return -logprobs.sum()

    @contextmanager
    def _teacher(self) -> Iterator[None]:
        """Make the model act as the teacher inside the block."""
        if self.config.teacher == "ema":
            with use_adapter(self.model, EMA_ADAPTER):
                yield
        else:
            with self.model.disable_adapter():
                yield

    def _step_metrics(
        self,
        totals: _StepTotals,
        lr: float,
        grad_norm: float,
        step_s: float,
    ) -> dict[str, Any]:
        scored_tokens = totals.rollout_tokens + totals.expert_tokens
        metrics: dict[str, Any] = {
            "step": self.state.step,
            "loss": totals.loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "rollout/tokens": totals.rollout_tokens,
            "rollout/truncated_fraction": (
                totals.truncated / totals.on_policy if totals.on_policy else 0.0
            ),
            "examples/on_policy": totals.on_policy,
            "examples/off_policy": totals.off_policy,
            # Cumulative over the run, resumptions included; each skip of a record counts.
            "examples/skipped": self.state.skipped_total,
            "time/step_s": step_s,
            "time/rollout_s": totals.rollout_s,
            "throughput/tokens_per_s": scored_tokens / step_s if step_s > 0 else 0.0,
        }
        if totals.rollout_tokens:
            metrics[divergence_metric(self.config.loss)] = (
                totals.divergence_sum / totals.rollout_tokens
            )
            metrics["student/logprob_mean"] = totals.student_logprob_sum / totals.rollout_tokens
            metrics["teacher/logprob_mean"] = totals.teacher_logprob_sum / totals.rollout_tokens
        if totals.expert_tokens:
            metrics["expert/nll_mean"] = totals.expert_nll_sum / totals.expert_tokens
        return metrics

    # Data.

    def _next_example(self) -> _Example:
        """Return the next usable record in the shuffled order, skipping over-long ones."""
        for _ in range(len(self.records)):
            index = self._advance_data_position()
            prepared = self._prepare(index)
            if isinstance(prepared, _Example):
                return _Example(index=prepared.index, prompts=prepared.prompts)
            self._record_skip(index, prepared)
        raise TrainingError(
            f"all {len(self.records)} records are skipped (for example: "
            f"{self._last_skip_detail}); raise max_seq_length, max_teacher_prompt_tokens or "
            "lower max_rollout_tokens, or use shorter records"
        )

    def _advance_data_position(self) -> int:
        position = self.state.data
        if position.index >= len(self.records):
            position.epoch += 1
            position.index = 0
        order = self._epoch_order(position.epoch)
        index = order[position.index]
        position.index += 1
        return index

    def _epoch_order(self, epoch: int) -> list[int]:
        if epoch not in self._epoch_orders:
            order = list(range(len(self.records)))
            random.Random(f"{self.state.data.seed}:epoch:{epoch}").shuffle(order)
            self._epoch_orders = {epoch: order}
        return self._epoch_orders[epoch]

    def _prepare(self, index: int) -> _Example | _Skip:
        """Build and length-check the prompts of one record; cached per record."""
        if index in self._prepared:
            return self._prepared[index]
        config = self.config
        prepared: _Example | _Skip
        try:
            prompts = self.builder.build(self.records[index], index)
        except PromptError as exc:
            prepared = _Skip("template_error", 0, 0, str(exc))
        else:
            teacher_len = len(prompts.teacher)
            student_len = len(prompts.student)
            if teacher_len > config.max_teacher_prompt_tokens:
                prepared = _Skip(
                    "teacher_prompt_too_long",
                    teacher_len,
                    config.max_teacher_prompt_tokens,
                    f"teacher prompt of {teacher_len} tokens > max_teacher_prompt_tokens="
                    f"{config.max_teacher_prompt_tokens}",
                )
            elif student_len + config.max_rollout_tokens > config.max_seq_length:
                prepared = _Skip(
                    "student_prompt_too_long",
                    student_len + config.max_rollout_tokens,
                    config.max_seq_length,
                    f"student prompt of {student_len} tokens + max_rollout_tokens="
                    f"{config.max_rollout_tokens} > max_seq_length={config.max_seq_length}",
                )
            elif teacher_len + config.max_rollout_tokens > config.max_seq_length:
                prepared = _Skip(
                    "teacher_sequence_too_long",
                    teacher_len + config.max_rollout_tokens,
                    config.max_seq_length,
                    f"teacher prompt of {teacher_len} tokens + max_rollout_tokens="
                    f"{config.max_rollout_tokens} > max_seq_length={config.max_seq_length}",
                )
            elif (
                config.lambda_on_policy < 1
                and student_len + len(prompts.expert) > config.max_seq_length
            ):
                prepared = _Skip(
                    "expert_sequence_too_long",
                    student_len + len(prompts.expert),
                    config.max_seq_length,
                    f"student prompt of {student_len} tokens + expert turn of "
                    f"{len(prompts.expert)} tokens > max_seq_length={config.max_seq_length}",
                )
            else:
                prepared = _Example(index=index, prompts=prompts)
        self._prepared[index] = prepared
        return prepared

    def _record_skip(self, index: int, skip: _Skip) -> None:
        self.state.skipped[skip.reason] = self.state.skipped.get(skip.reason, 0) + 1
        self._last_skip_detail = f"record {index}: {skip.detail}"
        if index not in self._warned_records:
            self._warned_records.add(index)
            logger.warning("skipping record %d: %s", index, skip.detail)
        self._emit(
            "example_skipped",
            {
                "step": self.state.step + 1,
                "record_index": index,
                "reason": skip.reason,
                "tokens": skip.tokens,
                "limit": skip.limit,
            },
        )

    # Teacher check, checkpoints, results.

    def _teacher_check(self) -> TeacherCheckReport | None:
        if self.teacher_check_records <= 0:
            return None
        started = time.perf_counter()
        with self._teacher():
            report = run_teacher_check(
                self.model,
                self.tokenizer,
                self.config,
                self.records,
                layouts=[self.config.teacher_layout],
                num_records=self.teacher_check_records,
                max_new_tokens=min(64, self.config.max_rollout_tokens),
                eos_token_ids=self.eos_token_ids,
            )
        logger.info(
            "teacher check (%.1f s):\n%s", time.perf_counter() - started, report.format_table()
        )
        self._emit("teacher_check", report.to_dict())
        return report

    def _save_checkpoint(self) -> Path:
        path = save_checkpoint(
            self.output_dir,
            model=self.model,
            adapter_names=self._adapter_names,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            state=self.state,
            random_state=self._random_state,
            config=self.config.to_dict(),
            records=len(self.records),
        )
        self._emit("checkpoint_saved", {"path": str(path), "step": self.state.step})
        return path

    def _result(
        self,
        stopped: bool,
        last_checkpoint: Path | None,
        metrics: dict[str, Any],
        teacher_report: TeacherCheckReport | None,
    ) -> TrainResult:
        return TrainResult(
            output_dir=self.output_dir,
            steps_done=self.state.step,
            stopped=stopped,
            last_checkpoint=last_checkpoint,
            skipped=dict(self.state.skipped),
            rollouts=self.state.rollouts,
            truncated_rollouts=self.state.truncated_rollouts,
            final_metrics=metrics,
            teacher_check=teacher_report,
        )

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        self.callbacks.on_event(kind, data)

    def _tensor(self, ids: list[int]) -> torch.Tensor:
        return torch.tensor([ids], dtype=torch.long, device=self.device)  # (1, L)


def _enable_activation_checkpointing(model: transformers.PreTrainedModel) -> None:
    """Turn on activation (gradient) checkpointing, non-reentrant, with input grads.

    Non-reentrant checkpointing computes LoRA gradients even though the embedding output
    does not require grad; the input-grad hook keeps the reentrant path correct as well.
    transformers 5.25 renamed `gradient_checkpointing_enable` to
    `activation_checkpointing_enable` and keeps the old name as a deprecated alias.
    """
    kwargs = {"use_reentrant": False}
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if not getattr(model, "_require_grads_hooks", None):
        model.enable_input_require_grads()


def _eos_token_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Collect the ids that end an assistant turn: generation config and tokenizer EOS."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    configured = getattr(generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(i) for i in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    if not ids:
        raise TrainingError(
            "neither the generation config nor the tokenizer defines an EOS token, so rollouts "
            "could never end; set eos_token_id in generation_config.json"
        )
    return sorted(ids)
