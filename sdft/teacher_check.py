"""Check, before training, whether the teacher prompt makes the teacher behave like the expert.

SDFT can only teach what the teacher does when it is given the expert reference. For each
teacher layout this measures, on a few records:

- the mean log-probability per token of the expert turn under the teacher prompt (with the
  reference) and under the student prompt (without it); a teacher that uses the reference
  scores the expert turn much higher with it;
- the teacher's greedy output under the teacher prompt, to read beside the expert turn.

The model passed in acts as the teacher as it is: pass the base model, or a PeftModel inside
`disable_adapter()`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sdft.config import SDFTConfig, TeacherLayout
from sdft.data.records import Record
from sdft.prompts import ExamplePrompts, PromptBuilder, PromptError
from sdft.scoring import chunked_token_logprobs, lm_head_of, rollout_hidden_states

logger = logging.getLogger(__name__)

LAYOUTS: tuple[TeacherLayout, ...] = ("reference_block", "demonstration")


@dataclass(frozen=True)
class TeacherCheckRow:
    """The teacher's figures on one record under one layout."""

    layout: str
    record_index: int
    expert_tokens: int
    logprob_with_reference: float
    logprob_without_reference: float
    teacher_output: str
    expert_turn: str

    @property
    def gain(self) -> float:
        return self.logprob_with_reference - self.logprob_without_reference


@dataclass(frozen=True)
class TeacherCheckReport:
    rows: list[TeacherCheckRow]

    def summary(self) -> dict[str, dict[str, float]]:
        """Return the mean figures per layout, keyed by layout name."""
        out: dict[str, dict[str, float]] = {}
        for layout in dict.fromkeys(row.layout for row in self.rows):
            rows = [row for row in self.rows if row.layout == layout]
            with_ref = sum(r.logprob_with_reference for r in rows) / len(rows)
            without = sum(r.logprob_without_reference for r in rows) / len(rows)
            out[layout] = {
                "records": len(rows),
                "logprob_with_reference": with_ref,
                "logprob_without_reference": without,
                "gain": with_ref - without,
            }
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "rows": [asdict(row) for row in self.rows]}

    def format_table(self, text_width: int = 160) -> str:
        """Render the report as a plain-text table with the outputs under each row."""
        lines: list[str] = []
        for layout, figures in self.summary().items():
            lines.append(
                f"teacher layout {layout}: expert turn log-prob/token "
                f"{figures['logprob_with_reference']:.3f} with the reference, "
                f"{figures['logprob_without_reference']:.3f} without "
                f"(gain {figures['gain']:+.3f}, {int(figures['records'])} records)"
            )
            lines.append(
                f"  {'record':>6}  {'tokens':>6}  {'with':>8}  {'without':>8}  {'gain':>7}"
            )
            for row in (r for r in self.rows if r.layout == layout):
                lines.append(
                    f"  {row.record_index:>6}  {row.expert_tokens:>6}  "
                    f"{row.logprob_with_reference:>8.3f}  {row.logprob_without_reference:>8.3f}  "
                    f"{row.gain:>+7.3f}"
                )
                lines.append(f"      expert:  {_one_line(row.expert_turn, text_width)}")
                lines.append(f"      teacher: {_one_line(row.teacher_output, text_width)}")
            lines.append("")
        return "\n".join(lines).rstrip() + "\n"


def run_teacher_check(
    model: nn.Module,
    tokenizer: Any,
    config: SDFTConfig,
    records: Sequence[Record],
    *,
    layouts: Sequence[TeacherLayout] = LAYOUTS,
    num_records: int = 3,
    max_new_tokens: int = 64,
    eos_token_ids: Sequence[int] | None = None,
) -> TeacherCheckReport:
    """Score the expert turn with and without the reference, per layout, on a few records.

    The records are the first `num_records` whose prompts fit `max_teacher_prompt_tokens`
    and `max_seq_length`; the others are passed over, as training skips them.
    """
    device = next(model.parameters()).device
    rows: list[TeacherCheckRow] = []
    was_training = model.training
    model.eval()
    try:
        for layout in layouts:
            builder = PromptBuilder(tokenizer, config, records, eos_token_ids=eos_token_ids)
            for index, prompts in _fitting_prompts(builder, config, records, layout, num_records):
                with_ref = expert_logprobs(
                    model, prompts.teacher.token_ids, prompts, config, device
                )
                without = expert_logprobs(model, prompts.student.token_ids, prompts, config, device)
                output = greedy_output(
                    model,
                    tokenizer,
                    prompts.teacher.token_ids,
                    max_new_tokens=max_new_tokens,
                    eos_token_ids=sorted(builder.eos_token_ids),
                    device=device,
                )
                rows.append(
                    TeacherCheckRow(
                        layout=layout,
                        record_index=index,
                        expert_tokens=len(prompts.expert),
                        logprob_with_reference=float(with_ref.mean()),
                        logprob_without_reference=float(without.mean()),
                        teacher_output=output,
                        expert_turn=prompts.reference,
                    )
                )
    finally:
        model.train(was_training)
    if not rows:
        logger.warning(
            "teacher check: no record fits max_teacher_prompt_tokens=%d and max_seq_length=%d",
            config.max_teacher_prompt_tokens,
            config.max_seq_length,
        )
    return TeacherCheckReport(rows=rows)


@torch.no_grad()
def expert_logprobs(
    model: nn.Module,
    prompt_ids: list[int],
    prompts: ExamplePrompts,
    config: SDFTConfig,
    device: torch.device,
) -> torch.Tensor:
    """Return the (T,) log-probabilities of the expert turn's tokens after `prompt_ids`."""
    expert_ids = prompts.expert.token_ids
    input_ids = torch.tensor([prompt_ids + expert_ids], device=device)  # (1, P+T)
    hidden = rollout_hidden_states(model, input_ids, len(expert_ids))  # (T, H)
    targets = torch.tensor(expert_ids, device=device)  # (T,)
    return chunked_token_logprobs(
        hidden, lm_head_of(model), targets, chunk_bytes=config.logits_chunk_bytes
    )


@torch.no_grad()
def greedy_output(
    model: nn.Module,
    tokenizer: Any,
    prompt_ids: list[int],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    device: torch.device,
) -> str:
    """Decode the model's greedy continuation of `prompt_ids`, without the end-of-turn token."""
    input_ids = torch.tensor([prompt_ids], device=device)
    # nn.Module types unknown attributes as Tensor | Module; causal LMs and PeftModel have generate.
    output = model.generate(  # type: ignore[operator]
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(eos_token_ids) or None,
        pad_token_id=tokenizer.pad_token_id,
    )
    new_tokens = output[0, input_ids.shape[1] :].tolist()
    while new_tokens and new_tokens[-1] in eos_token_ids:
        new_tokens.pop()
    return str(tokenizer.decode(new_tokens, skip_special_tokens=False))


def _fitting_prompts(
    builder: PromptBuilder,
    config: SDFTConfig,
    records: Sequence[Record],
    layout: TeacherLayout,
    wanted: int,
) -> list[tuple[int, ExamplePrompts]]:
    found: list[tuple[int, ExamplePrompts]] = []
    for index, record in enumerate(records):
        if len(found) == wanted:
            break
        try:
            prompts = builder.build(record, index, layout=layout)
        except PromptError as exc:
            logger.warning("teacher check: record %d cannot be rendered: %s", index, exc)
            continue
        if len(prompts.teacher) > config.max_teacher_prompt_tokens:
            continue
        if len(prompts.student) + config.max_rollout_tokens > config.max_seq_length:
            continue
        found.append((index, prompts))
    return found


def _one_line(text: str, width: int) -> str:
    flat = text.replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 3] + "..."
