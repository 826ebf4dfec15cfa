"""What the model answers at each evaluation, for people to read beside the curves.

A causal LM answers the same few held-out prompts at every evaluation (chosen from the
evaluation data by the run's seed), greedily and batched with left padding; each answer is kept
with the reference answer and the loss of that reference under the model, so a table can show
the best and worst rows. The base model's answers come once, before training: the same model
with its adapter switched off (LoRA, QLoRA), or the weights before the first step (full). A
classifier lists its misclassified evaluation rows instead. Both are bounded in rows, tokens
and wall time (a share of the time since the last evaluation): evaluation must stay a small
share of a run, however often it evaluates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, TrainerCallback

from app.contract.spec import TrainingSpec

from .data import IGNORE_INDEX, Examples, Task
from .reporting import Reporter

GENERATION = "generation"  # a causal LM's answers at an evaluation
BASE = "base"  # the base model's answers to the same prompts, at step 0
MISCLASSIFIED = "misclassified"  # a classifier's wrong predictions at an evaluation

# Wall time the samples of one evaluation may take: this share of the time since the last
# ones (so that they stay a small part of the run however often it evaluates), at least
# MIN_TIME_S and at most TIME_LIMIT_S (the base model's, once, get BASE_TIME_S). Measured by
# bench/eval_cost.py on a 5-minute CPU run: 5% and 10 s put all evaluation at 15.1% of the
# training time, over the issue's 15%; 4% and 5 s leave room for the metrics' own pass. Generation stops where it is then: a late
# answer is cut short, never waited for.
TIME_SHARE = 0.04
MIN_TIME_S = 0.5
TIME_LIMIT_S = 30.0
BASE_TIME_S = 5.0
MAX_MISCLASSIFIED = 20
# A classifier's evaluation rows looked through for misclassified ones, at most.
MAX_SCANNED_ROWS = 2048
# A text document (no prompt of its own) is prompted with its beginning, up to this many tokens.
DOCUMENT_PROMPT_TOKENS = 64


@dataclass(frozen=True)
class SamplePrompt:
    row: int  # the example's index in the evaluation examples
    prompt: list[int]
    reference: list[int]


def sample_prompts(examples: Examples, count: int, seed: int, max_new_tokens: int) -> list[SamplePrompt]:
    """`count` examples of the evaluation data, chosen by `seed`, cut where their first trained
    span (the assistant's answer, the completion) begins: the same ones for the same data and seed."""
    chosen: list[SamplePrompt] = []
    for index in np.random.default_rng(seed).permutation(len(examples)):
        ids, labels = examples.input_ids[index], examples.labels[index]
        document = bool(examples.documents and examples.documents[index])
        if document:
            start = min(len(ids) // 2, DOCUMENT_PROMPT_TOKENS)
            end = min(len(ids), start + max_new_tokens)
        else:
            start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), 0)
            end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
        if start < 1 or end <= start:
            continue
        chosen.append(SamplePrompt(int(index), list(ids[:start]), list(ids[start:end])))
        if len(chosen) == count:
            break
    return chosen


@contextmanager
def _inference(model) -> Iterator[torch.device]:
    """The model in eval mode without gradients, put back as it was after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _padded(sequences: Sequence[Sequence[int]], pad: int, *, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask of `sequences`, padded to the longest (on the left for generation)."""
    width = max(len(ids) for ids in sequences)
    ids, mask = [], []
    for sequence in sequences:
        padding = [pad] * (width - len(sequence))
        ids.append([*padding, *sequence] if left else [*sequence, *padding])
        ones, zeros = [1] * len(sequence), [0] * len(padding)
        mask.append([*zeros, *ones] if left else [*ones, *zeros])
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Sampler:
    """Answers (or misclassified rows) of one run's model, on the rows fixed when it was built."""

    def __init__(
        self,
        tokenizer,
        *,
        task: Task,
        prompts: list[SamplePrompt],
        examples: Examples,
        class_names: Sequence[str] = (),
        max_new_tokens: int,
        batch_size: int,
        time_limit_s: float = TIME_LIMIT_S,
    ) -> None:
        self.tokenizer = tokenizer
        self.task = task
        self.prompts = prompts
        self.examples = examples
        self.class_names = list(class_names)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.time_limit_s = time_limit_s
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def of(cls, spec: TrainingSpec, tokenizer, task: Task, examples: Examples, class_names=()) -> Sampler:
        prompts = (
            sample_prompts(examples, spec.eval_samples, spec.seed, spec.eval_sample_max_new_tokens)
            if task == Task.causal_lm
            else []
        )
        return cls(
            tokenizer,
            task=task,
            prompts=prompts,
            examples=examples,
            class_names=class_names or (),
            max_new_tokens=spec.eval_sample_max_new_tokens,
            batch_size=spec.batch_size,
        )

    @property
    def kind(self) -> str:
        return GENERATION if self.task == Task.causal_lm else MISCLASSIFIED

    def at_evaluation(self, model, time_limit_s: float | None = None) -> list[dict[str, Any]]:
        if self.task == Task.causal_lm:
            return self.answers(model, time_limit_s)
        return self.misclassified(model, time_limit_s)

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def answers(self, model, time_limit_s: float | None = None) -> list[dict[str, Any]]:
        """Each prompt's greedy answer, with the reference and the model's loss on the reference."""
        deadline = time.monotonic() + (time_limit_s or self.time_limit_s)
        with _inference(model) as device:
            losses = self._losses(model, device)
            answers = self._generate(model, device, deadline)
        return [
            {
                "row": prompt.row,
                "prompt": self._decode(prompt.prompt),
                "reference": self._decode(prompt.reference),
                "answer": answer,
                "cut": cut,
                "loss": loss,
            }
            for prompt, loss, (answer, cut) in zip(self.prompts, losses, answers)
        ]

    def _losses(self, model, device) -> list[float]:
        """The mean cross-entropy of each reference answer given its prompt (teacher-forced)."""
        losses: list[float] = []
        for batch in _batches(self.prompts, self.batch_size):
            ids, mask = _padded([p.prompt + p.reference for p in batch], self.pad, left=False, device=device)
            labels = torch.full_like(ids, IGNORE_INDEX)
            for i, prompt in enumerate(batch):
                start = len(prompt.prompt)
                labels[i, start : start + len(prompt.reference)] = ids[i, start : start + len(prompt.reference)]
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
            counted = (targets != IGNORE_INDEX).sum(1).clamp(min=1)
            losses.extend((per_token.sum(1) / counted).tolist())
        return losses

    def _generate(self, model, device, deadline: float) -> list[tuple[str, bool]]:
        """Greedy answers, a batch at a time, left-padded, each with whether the deadline cut it
        short (no end of sequence and fewer than max_new_tokens); a cut answer keeps what it has."""
        answers: list[tuple[str, bool]] = []
        for batch in _batches(self.prompts, self.batch_size):
            ids, mask = _padded([p.prompt for p in batch], self.pad, left=True, device=device)
            config = GenerationConfig(
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.pad,
                eos_token_id=self.tokenizer.eos_token_id,
                max_time=max(deadline - time.monotonic(), 0.01),
                use_cache=True,
            )
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            for row in out:
                generated = row[ids.shape[1] :].tolist()
                cut = self.tokenizer.eos_token_id not in generated and len(generated) < self.max_new_tokens
                answers.append((self._decode(generated), cut))
        return answers

    def misclassified(self, model, time_limit_s: float | None = None) -> list[dict[str, Any]]:
        """The first evaluation rows the classifier gets wrong: text, predicted and true label, the
        probability it gave its prediction."""
        deadline = time.monotonic() + (time_limit_s or self.time_limit_s)
        wrong: list[dict[str, Any]] = []
        rows = list(range(min(len(self.examples), MAX_SCANNED_ROWS)))
        with _inference(model) as device:
            for batch in _batches(rows, self.batch_size * 2):
                ids, mask = _padded([self.examples.input_ids[i] for i in batch], self.pad, left=False, device=device)
                probabilities = model(input_ids=ids, attention_mask=mask).logits.float().softmax(-1)
                predicted = probabilities.argmax(-1).tolist()
                for i, row in enumerate(batch):
                    label = int(self.examples.labels[row])
                    if predicted[i] != label:
                        wrong.append(
                            {
                                "row": row,
                                "text": self._decode(self.examples.input_ids[row]),
                                "predicted": self.class_names[predicted[i]],
                                "label": self.class_names[label],
                                "probability": float(probabilities[i, predicted[i]]),
                            }
                        )
                if len(wrong) >= MAX_MISCLASSIFIED or time.monotonic() > deadline:
                    break
        return wrong[:MAX_MISCLASSIFIED]


class SamplesCallback(TrainerCallback):
    """Reports the base model's answers when training begins and the model's at each evaluation."""

    def __init__(self, sampler: Sampler, reporter: Reporter) -> None:
        self.sampler = sampler
        self.reporter = reporter
        self._last_done = time.monotonic()
        self._base_reported = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0 or hasattr(model, "disable_adapter"):
            self._report_base(state, model)
        # else: a full fine-tune resumed; its base answers were reported when it began
        self._last_done = time.monotonic()

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if state.global_step == 0 and self.sampler.task == Task.causal_lm:
            # The step-0 baseline evaluation, before training: the model is the base model (or
            # the weights a continued job starts from), so its answers are the base answers.
            self._report_base(state, model)
            self._last_done = time.monotonic()
            return
        since = time.monotonic() - self._last_done
        budget = min(TIME_LIMIT_S, max(MIN_TIME_S, TIME_SHARE * since))
        self.reporter.samples(self.sampler.kind, state.global_step, self.sampler.at_evaluation(model, budget))
        self._last_done = time.monotonic()

    def _report_base(self, state, model) -> None:
        """The base model's answers, once: with the adapter off for a PeftModel, else the weights as they are."""
        if self._base_reported or not self.sampler.prompts or not state.is_world_process_zero:
            return
        if hasattr(model, "disable_adapter"):  # a PeftModel: the base model is the same one, adapter off
            with model.disable_adapter():
                rows = self.sampler.answers(model, BASE_TIME_S)
        else:
            rows = self.sampler.answers(model, BASE_TIME_S)
        self.reporter.samples(BASE, 0, rows)
        self._base_reported = True


def samples_callbacks(
    spec: TrainingSpec,
    tokenizer,
    task: Task,
    eval_examples: Examples | None,
    class_names: Sequence[str] | None,
    reporter: Reporter,
) -> list[TrainerCallback]:
    """The samples callback of a run that evaluates and asks for samples; none otherwise."""
    if not spec.eval_samples or not eval_examples:
        return []
    if spec.distributed:
        # Rank 0 alone would generate, and a sharded (FSDP) model cannot run a forward pass
        # without every rank: the other ranks would wait in vain.
        reporter.event("No sample answers in a run on several devices: its evaluations give the metrics only")
        return []
    return [SamplesCallback(Sampler.of(spec, tokenizer, task, eval_examples, class_names), reporter)]
