"""Training token classifiers (NER), extractive question answerers and encoder-decoders (seq2seq)
with the one training function: `training_run.prepare` hands these tasks to `prepare` here,
and `build_trainer` builds their trainer.

The task follows from the data and the base model's architecture (`task_for`): tagged tokens
and QA rows put a head on an encoder (BERT and its kin), input/target rows (and prompt /
completion or instruction rows, when the base is one) train an encoder-decoder (T5, BART).
A pairing that cannot work (a causal LM with NER data, a BERT with input/target rows) is a
ConfigurationError that says what would.

Batches come from transformers' collators (`DataCollatorForTokenClassification`,
`DataCollatorWithPadding` for QA windows, `DataCollatorForSeq2Seq`), counting the real tokens
for throughput as `data.BatchCollator` does. At each evaluation `TaskTrainer` predicts the
held-out rows as a user would (`token_tasks`, `seq2seq`) and logs the task's metrics
(`task_metrics`) beside the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from transformers import Trainer

from app.contract import formats
from app.contract.spec import TrainingSpec

from . import data, distributed, seq2seq, task_metrics, token_tasks
from .data import REAL_TOKENS_KEY, Task
from .errors import ConfigurationError, DatasetError
from .reporting import Reporter, counted

TASK_TITLES = {
    Task.token_classification: "token classification",
    Task.question_answering: "question answering",
    Task.seq2seq: "sequence to sequence",
}
HEAD_TASKS = frozenset(TASK_TITLES)


def _is_causal_lm(config) -> bool:
    return any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in config.architectures or ())


def task_for(rows: Sequence[dict[str, Any]], source: Path, model_name: str) -> Task:
    """The task of `rows` on the base model in `source`; a ConfigurationError when they do not fit."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(source)
    encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
    task = data.task_of(rows, encoder_decoder=encoder_decoder)
    kind = (
        "an encoder-decoder"
        if encoder_decoder
        else "a causal language model"
        if _is_causal_lm(config)
        else "an encoder"
    )
    described = f"{model_name} is {kind} ({', '.join(config.architectures or [config.model_type])})"
    if encoder_decoder and task != Task.seq2seq:
        raise ConfigurationError(
            f"{described}: it trains on input / target rows (or prompt / completion, or instruction rows), "
            f"not on {_titles(rows)}"
        )
    if task in (Task.token_classification, Task.question_answering) and (encoder_decoder or _is_causal_lm(config)):
        raise ConfigurationError(
            f"{described}: {TASK_TITLES[task]} puts a head on an encoder such as BERT, RoBERTa or MiniLM; "
            "choose one as the base model"
        )
    if task == Task.seq2seq and not encoder_decoder:
        raise ConfigurationError(
            f"{described}: input / target rows train an encoder-decoder such as T5 or BART; choose one as the base "
            "model, or write the rows as prompt / completion to train a causal language model"
        )
    return task


def _titles(rows: Sequence[dict[str, Any]]) -> str:
    found = sorted({formats.FORMAT_TITLES[formats.detect_format(row)] for row in rows})
    return ", ".join(found)


def split_rows(rows: list[dict[str, Any]], fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random hold-out of `fraction` of the rows (at least one each side), as `data.split_for_eval`."""
    if len(rows) < 2:
        raise DatasetError("an evaluation split needs at least two rows")
    order = np.random.default_rng(seed).permutation(len(rows))
    held_out = min(max(1, round(len(rows) * fraction)), len(rows) - 1)
    return [rows[i] for i in sorted(order[held_out:])], [rows[i] for i in sorted(order[:held_out])]


def examples_of(rows: Sequence[dict[str, Any]], task: Task) -> list[Any]:
    """The rows as the task's examples (TaggedTokens, Answered or SourceTarget)."""
    if task == Task.seq2seq:
        return [formats.source_target(row, formats.detect_format(row)) for row in rows]
    return [formats.to_canonical(row).example for row in rows]


@dataclass
class TaskData:
    """Rows of one file turned into the trainer's features."""

    examples: list[Any]
    features: dict[str, list]
    truncated: int
    note: str = ""  # what tokenizing did beyond one feature per row (QA's windows)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.features["input_ids"])

    def dataset(self):
        from datasets import Dataset

        columns = dict(self.features)
        columns["length"] = [len(ids) for ids in columns["input_ids"]]
        return Dataset.from_dict(columns)


def featurize(task: Task, tokenizer, examples: list[Any], max_length: int, tag_names: Sequence[str]) -> TaskData:
    if task == Task.token_classification:
        tagged = token_tasks.tag_features(tokenizer, examples, tag_names, max_length)
        return TaskData(examples, tagged.rows(), tagged.truncated)
    if task == Task.question_answering:
        windows = token_tasks.answer_features(tokenizer, examples, max_length)
        note = ""
        if windows.windows > len(examples):
            note = (
                f"contexts longer than {max_length} tokens were cut into overlapping windows "
                f"(stride {token_tasks.answer_stride(max_length)}): {len(examples)} questions became "
                f"{windows.windows} windows"
            )
        return TaskData(examples, windows.rows(), windows.answers_cut, note)
    pairs = seq2seq.seq2seq_features(tokenizer, examples, max_length)
    return TaskData(examples, pairs.rows(), pairs.truncated)


@dataclass
class PreparedTask:
    """Everything a token classification, QA or seq2seq run needs (`training_run.Prepared`'s sibling)."""

    spec: TrainingSpec
    plan: Any
    tokenizer: Any
    model: Any
    task: Task
    train: TaskData
    evaluation: TaskData | None
    class_names: list[str] | None  # the tag names of a token classifier, saved with it
    formats: dict[str, int]

    @property
    def truncated_rows(self) -> int:
        return self.train.truncated + (self.evaluation.truncated if self.evaluation else 0)

    def data_summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "format": ", ".join(f"{name} ({count} rows)" for name, count in self.formats.items()),
            "task": TASK_TITLES[self.task],
            "training_examples": len(self.train.examples),
            "training_tokens": self.train.tokens,
        }
        if self.class_names:
            summary["tags"] = ", ".join(self.class_names)
        if self.evaluation is not None:
            summary["evaluation_examples"] = len(self.evaluation.examples)
        return summary


def prepare(
    spec: TrainingSpec,
    *,
    plan,
    tokenizer,
    task: Task,
    rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]] | None,
    reporter: Reporter,
    dataset_name: str,
    load: Callable[[Task, list[str] | None], Any],
) -> PreparedTask:
    """Features of the training (and evaluation) rows, and the model from `load(task, tag names)`."""
    if eval_rows is None and spec.eval_split > 0:
        rows, eval_rows = split_rows(rows, spec.eval_split, spec.seed)
        reporter.event(f"Held out {counted(len(eval_rows), 'row')} of {len(rows) + len(eval_rows)} for evaluation")
    examples = examples_of(rows, task)
    tag_names = token_tasks.tag_names(examples) if task == Task.token_classification else None
    if tag_names is not None and len(tag_names) < 2:
        raise DatasetError('token classification needs at least two different tags (an entity\'s and "O")')
    train = featurize(task, tokenizer, examples, spec.max_seq_length, tag_names or ())
    _report(reporter, dataset_name, task, train, spec.max_seq_length)
    evaluation = None
    if eval_rows:
        evaluation = featurize(task, tokenizer, examples_of(eval_rows, task), spec.max_seq_length, tag_names or ())
        _report(reporter, "the evaluation rows", task, evaluation, spec.max_seq_length)
    model = load(task, tag_names)
    counts: dict[str, int] = {}
    for row in rows:
        fmt = formats.detect_format(row)
        counts[fmt] = counts.get(fmt, 0) + 1
    return PreparedTask(spec, plan, tokenizer, model, task, train, evaluation, tag_names, counts)


def _report(reporter: Reporter, name: str, task: Task, features: TaskData, max_length: int) -> None:
    reporter.event(
        f"Read {counted(len(features.examples), 'row')} from {name} for {TASK_TITLES[task]}: "
        f"{counted(features.tokens, 'token')}" + (f"; {features.note}" if features.note else ""),
        rows=len(features.examples),
        tokens=features.tokens,
    )
    if features.truncated:
        what = {
            Task.token_classification: "rows longer than {n} tokens: their last words are not learnt",
            Task.question_answering: "answers that no window of {n} tokens holds whole: those windows learn 'no answer'",
            Task.seq2seq: "rows whose input or target is longer than {n} tokens: cut to it",
        }[task].format(n=max_length)
        reporter.event(
            f"{counted(features.truncated, 'row')}: {what}", level="warning", truncated_rows=features.truncated
        )


# -- the trainer -------------------------------------------------------------------------------


@dataclass
class CountingCollator:
    """A transformers collator, with the batch's real (non-pad) tokens counted under REAL_TOKENS_KEY
    and the `length` column (for length-grouped batches) left out."""

    collator: Any

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [{key: value for key, value in row.items() if key != "length"} for row in rows]
        batch = self.collator(rows)
        batch[REAL_TOKENS_KEY] = sum(len(row["input_ids"]) for row in rows)
        return batch


def collator_for(task: Task, tokenizer, model) -> CountingCollator:
    from transformers import DataCollatorForSeq2Seq, DataCollatorForTokenClassification, DataCollatorWithPadding

    if task == Task.token_classification:
        return CountingCollator(DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=8))
    if task == Task.question_answering:
        return CountingCollator(DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))
    return CountingCollator(DataCollatorForSeq2Seq(tokenizer, model=model, pad_to_multiple_of=8))


def score(task: Task, model, tokenizer, examples: list[Any], max_length: int) -> dict[str, float]:
    """The task's metrics of `model` on `examples`, predicted as the playground predicts."""
    if task == Task.token_classification:
        predicted = token_tasks.predict_tags(model, tokenizer, [e.tokens for e in examples], max_length)
        return task_metrics.entity_scores([e.tags for e in examples], predicted)
    if task == Task.question_answering:
        answers = token_tasks.predict_answers(model, tokenizer, [(e.question, e.context) for e in examples], max_length)
        return task_metrics.squad_scores([[text for text, _ in e.answers] for e in examples], [a.text for a in answers])
    # Room for twice the longest target: an untrained model would otherwise ramble to MAX_NEW_TOKENS.
    longest = max(len(ids) for ids in tokenizer(text_target=[e.target for e in examples])["input_ids"])
    generated = seq2seq.generate(
        model,
        tokenizer,
        [e.source for e in examples],
        max_length=max_length,
        max_new_tokens=min(seq2seq.MAX_NEW_TOKENS, 2 * longest + 8),
    )
    return task_metrics.rouge_scores([e.target for e in examples], generated)


class TaskTrainer(Trainer):
    """The Trainer, counting real tokens (as `callbacks.CountingTrainer`) and adding the task's
    metrics on the held-out rows to every evaluation's log entry."""

    def __init__(self, *args, task: Task, eval_examples: list[Any] | None, max_length: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.task = task
        self.eval_examples = eval_examples
        self.max_length = max_length

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        real_tokens = inputs.pop(REAL_TOKENS_KEY)
        if model.training:
            # Every rank's tokens, once; and this rank's own, for its throughput on the job page.
            self.state.num_input_tokens_seen += distributed.count_tokens(real_tokens)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs and self.eval_examples:
            was_training = self.model.training
            self.model.eval()
            try:
                metrics = score(self.task, self.model, self.processing_class, self.eval_examples, self.max_length)
            finally:
                self.model.train(was_training)
            logs.update({f"eval_{name}": value for name, value in metrics.items()})
        super().log(logs, start_time)


def build_trainer(prepared: PreparedTask, args, callbacks: list) -> TaskTrainer:
    """The trainer of a prepared task run, with the training arguments of `arguments.training_arguments`."""
    if prepared.task == Task.question_answering:
        args.label_names = ["start_positions", "end_positions"]
    return TaskTrainer(
        model=prepared.model,
        args=args,
        train_dataset=prepared.train.dataset(),
        eval_dataset=prepared.evaluation.dataset() if prepared.evaluation else None,
        data_collator=collator_for(prepared.task, prepared.tokenizer, prepared.model),
        processing_class=prepared.tokenizer,
        callbacks=callbacks,
        task=prepared.task,
        eval_examples=prepared.evaluation.examples if prepared.evaluation else None,
        max_length=prepared.spec.max_seq_length,
    )
