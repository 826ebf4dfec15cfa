"""Preference training: DPO, ORPO and KTO, as configuration of the one training run.

The losses are TRL's (`DPOTrainer`, `ORPOTrainer`, `KTOTrainer`); what tunelab adds is the
data (every preference format of `app.contract.formats`, as TRL's rows), the spec in the
trainers' terms, the reference model and the same callbacks, checkpoints and reports as
supervised training.

The reference model:
- with adapters (LoRA, QLoRA), the one base model serves both: TRL keeps a frozen copy of the
  adapter ("ref") and scores the reference with it, so a fresh adapter's reference is the base
  model and a job continued from a supervised adapter (SFT then DPO) is measured against that
  adapter. There is never a second base model in memory.
- with full fine-tuning, a frozen copy of the model as training starts (the memory estimate
  counts it). ORPO needs no reference at all.
- reference-free DPO (`preference.reference_free`) has none either: the reference's
  log-probabilities are taken as 0 (TRL's former `reference_free`), handed to TRL as
  precomputed ones, so it neither keeps a reference nor runs one. (TRL still hashes the weights
  once as the trainer is built, for its cache of precomputed values: 21 s per billion bf16
  parameters, measured on a busy 2-core CPU.)

Pairs are batched by length (no padding to the maximum length): TRL's collators pad each batch
to its longest sequence, and the sampler groups sequences of similar length.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.contract import formats
from app.contract.spec import Objective, TrainingSpec

from . import data
from .arguments import training_argument_values
from .data import REAL_TOKENS_KEY
from .errors import ConfigurationError, DatasetError
from .loading import DevicePlan
from .reporting import Reporter, counted


@dataclass
class PreferenceData:
    """A file's rows in TRL's shape: pairs for DPO and ORPO, single answers with a label for KTO."""

    rows: list[dict[str, Any]]
    source_rows: int
    format_counts: dict[str, int]

    @property
    def labels(self) -> Counter:
        return Counter(bool(row["label"]) for row in self.rows if "label" in row)

    def to_dataset(self):
        from datasets import Dataset

        rows = self.rows
        if any("tools" in row for row in rows):
            # Tool schemas differ from row to row: TRL reads them as JSON text.
            rows = [{**row, "tools": json.dumps(row.get("tools"))} for row in rows]
        return Dataset.from_list(rows)

    def split(self, fraction: float, seed: int) -> tuple[PreferenceData, PreferenceData]:
        import random

        order = list(range(len(self.rows)))
        random.Random(seed).shuffle(order)
        held = max(1, round(len(order) * fraction))
        if held >= len(order):
            raise DatasetError(f"eval_split {fraction} leaves no pair to train on: the dataset has {len(order)}")
        keep, hold = sorted(order[held:]), sorted(order[:held])
        return (
            PreferenceData([self.rows[i] for i in keep], len(keep), self.format_counts),
            PreferenceData([self.rows[i] for i in hold], len(hold), self.format_counts),
        )


def read_preferences(path: Path, objective: Objective) -> PreferenceData:
    """The rows of a preference dataset file as TRL takes them for `objective`: a pair becomes two
    labelled answers for KTO; single answers (KTO feedback) cannot train DPO or ORPO."""
    rows = data.read_jsonl(Path(path))
    found = Counter(formats.detect_format(row) for row in rows)
    other = sorted(fmt for fmt in found if fmt not in formats.PREFERENCE_FORMATS)
    if other:
        raise DatasetError(
            f"{objective.value} trains on preference data (pairs of a chosen and a rejected answer"
            f"{', or answers labelled good or bad' if objective == Objective.kto else ''}); "
            f"{Path(path).name} has {', '.join(formats.FORMAT_TITLES[fmt] for fmt in other)} rows"
        )
    if objective != Objective.kto and formats.FEEDBACK in found:
        raise DatasetError(
            f"{objective.value} learns from pairs of a chosen and a rejected answer; {Path(path).name} holds single "
            "answers labelled good or bad (feedback), which only kto trains on"
        )
    examples = [formats.to_canonical(row).example for row in rows]
    if objective == Objective.kto:
        examples = [single for example in examples for single in example.unpaired()]
    kinds = {isinstance(example.chosen, str) for example in examples}
    if len(kinds) > 1:
        raise DatasetError(
            f"{Path(path).name} mixes plain-text rows and chat-message rows: a preference dataset is one or the other"
        )
    return PreferenceData([example.trl_row() for example in examples], len(rows), dict(found))


def read_data(
    spec: TrainingSpec, train_file: Path, eval_file: Path | None, reporter: Reporter, dataset_name: str
) -> tuple[PreferenceData, PreferenceData | None]:
    """The training and evaluation rows, with an event for each file and for a held-out part."""
    train = read_preferences(train_file, spec.objective)
    _report_read(reporter, dataset_name, train, spec.objective)
    evaluation = None
    if eval_file is not None:
        evaluation = read_preferences(eval_file, spec.objective)
        _report_read(reporter, Path(eval_file).name, evaluation, spec.objective)
    elif spec.eval_split > 0:
        train, evaluation = train.split(spec.eval_split, spec.seed)
        reporter.event(
            f"Held out {counted(len(evaluation.rows), _unit(spec.objective))} of "
            f"{len(train.rows) + len(evaluation.rows)} for evaluation"
        )
    if spec.objective == Objective.kto:
        labels = train.labels
        if not labels[True] or not labels[False]:
            raise DatasetError(
                "kto learns from both good and bad answers: the training data has "
                f"{labels[True]} good and {labels[False]} bad"
            )
    return train, evaluation


def _unit(objective: Objective) -> str:
    return "labelled answer" if objective == Objective.kto else "pair"


def _report_read(reporter: Reporter, name: str, read: PreferenceData, objective: Objective) -> None:
    kinds = ", ".join(f"{count} {fmt}" for fmt, count in read.format_counts.items())
    message = (
        f"Read {counted(read.source_rows, 'row')} from {name} ({kinds}): {counted(len(read.rows), _unit(objective))}"
    )
    if objective == Objective.kto:
        labels = read.labels
        message += f" ({labels[True]} good, {labels[False]} bad)"
    reporter.event(message, rows=read.source_rows, examples=len(read.rows))


def kto_weights(spec: TrainingSpec, labels: Counter) -> tuple[float, float]:
    """KTO's (desirable, undesirable) weights: the spec's, or ones that balance the labels' counts
    (KTO's authors: weighted good over weighted bad between 1 and 4/3)."""
    settings = spec.preference
    good, bad = labels[True], labels[False]
    desirable = settings.desirable_weight or (bad / good if bad > good else 1.0)
    undesirable = settings.undesirable_weight or (good / bad if good > bad else 1.0)
    return desirable, undesirable


def trainer_config(
    spec: TrainingSpec, plan: DevicePlan, checkpoint_dir: Path, *, has_eval: bool, labels: Counter | None = None
):
    """The spec as the config of the objective's TRL trainer."""
    values = training_argument_values(spec, plan, checkpoint_dir, packed=False, has_eval=has_eval)
    del values["label_names"]  # the preference trainers name their own inputs
    values.update(max_length=spec.max_seq_length, beta=spec.preference.beta)
    if spec.objective == Objective.dpo:
        from trl import DPOConfig

        settings = spec.preference
        loss_type, loss_weights = [settings.loss_type], None
        if settings.rpo_alpha is not None:  # RPO: DPO plus the supervised loss on the chosen answers
            loss_type, loss_weights = [settings.loss_type, "sft"], [1.0, settings.rpo_alpha]
        return DPOConfig(
            **values,
            loss_type=loss_type,
            loss_weights=loss_weights,
            # Reference-free: the reference's log-probabilities come with the data (all 0), so TRL keeps no reference.
            precompute_ref_log_probs=settings.reference_free,
        )
    if spec.objective == Objective.kto:
        from trl import KTOConfig

        desirable, undesirable = kto_weights(spec, labels or Counter({True: 1, False: 1}))
        # KTO's KL baseline pairs each answer with its neighbour's prompt in a fixed order: TRL
        # shuffles once while preparing, then reads in order.
        del values["train_sampling_strategy"]
        return KTOConfig(**values, desirable_weight=desirable, undesirable_weight=undesirable)
    if spec.objective == Objective.orpo:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "experimental" is where TRL keeps ORPO
            from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**values)
    raise ConfigurationError(f"{spec.objective.value} is not a preference objective")


def _trainer_class(objective: Objective):
    if objective == Objective.dpo:
        from trl import DPOTrainer

        return DPOTrainer
    if objective == Objective.kto:
        from trl import KTOTrainer

        return KTOTrainer
    from trl.experimental.orpo import ORPOTrainer

    return ORPOTrainer


def _real_tokens(batch: dict[str, Any]) -> int:
    """The tokens of a batch that are not padding: its attention masks' ones (KTO's mismatched
    KL pairs excluded: they only estimate a baseline)."""
    return int(
        sum(
            value.sum()
            for key, value in batch.items()
            if key.endswith("attention_mask") and not key.startswith("KL") and hasattr(value, "sum")
        )
    )


class CountingCollator:
    """The trainer's collator, adding the batch's real tokens (counted on the CPU, before the
    batch goes to the device) under `REAL_TOKENS_KEY` for the trainer to add up."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        batch = self.collator(examples)
        batch[REAL_TOKENS_KEY] = _real_tokens(batch)
        return batch


def _counting(trainer_class):
    """`trainer_class` counting real tokens into `state.num_input_tokens_seen` as tunelab's own trainer does."""

    class Counting(trainer_class):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            real_tokens = inputs.pop(REAL_TOKENS_KEY, 0)
            if model.training:
                self.state.num_input_tokens_seen += real_tokens
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    Counting.__name__ = f"Counting{trainer_class.__name__}"
    return Counting


def _reference_free(trainer_class):
    """`trainer_class` (DPO's) with the reference's log-probabilities all 0 instead of computed:
    TRL reads precomputed ones from the rows, and this computes none."""

    class ReferenceFree(trainer_class):
        def _precompute_ref_logps(self, dataset, name, batch_size):
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    ReferenceFree.__name__ = f"ReferenceFree{trainer_class.__name__}"
    return ReferenceFree


def frozen_copy(model):
    """The reference model of full fine-tuning: the model as training starts, frozen."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def build_trainer(
    spec: TrainingSpec,
    *,
    plan: DevicePlan,
    model,
    tokenizer,
    train: PreferenceData,
    evaluation: PreferenceData | None,
    checkpoint_dir: Path,
    reporter: Reporter,
    callbacks: list,
):
    """The objective's TRL trainer on the data, with tunelab's callbacks, and its pairs grouped by length."""
    config = trainer_config(spec, plan, checkpoint_dir, has_eval=evaluation is not None, labels=train.labels)
    if spec.objective == Objective.kto:
        desirable, undesirable = kto_weights(spec, train.labels)
        if (desirable, undesirable) != (1.0, 1.0) and not (
            spec.preference.desirable_weight or spec.preference.undesirable_weight
        ):
            reporter.event(
                f"Weighing good answers by {desirable:.3g} and bad ones by {undesirable:.3g} to balance their counts",
                level="warning",
            )
    reference_free = spec.objective == Objective.dpo and not spec.has_reference
    trainer_class = _trainer_class(spec.objective)
    kwargs: dict[str, Any] = {}
    if reference_free:
        trainer_class = _reference_free(trainer_class)
        reporter.event("Reference-free DPO: no reference model, the chosen answers are preferred outright")
    elif spec.has_reference:
        kwargs["ref_model"] = None if spec.uses_adapter else frozen_copy(model)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        trainer = _counting(trainer_class)(
            model=model,
            args=config,
            train_dataset=train.to_dataset(),
            eval_dataset=evaluation.to_dataset() if evaluation is not None else None,
            processing_class=tokenizer,
            callbacks=callbacks,
            **kwargs,
        )
    if reference_free:
        drop_reference_adapter(trainer.model)  # the copy TRL makes of a continued adapter, unused
    trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train_dataset = _with_lengths(trainer.train_dataset)
    if trainer.eval_dataset is not None:
        trainer.eval_dataset = _with_lengths(trainer.eval_dataset)
    return trainer


def _with_lengths(dataset):
    """The tokenized rows with a "length" column, by which the sampler groups similar lengths."""
    id_columns = [name for name in dataset.column_names if name.endswith("_ids") and not name.startswith("KL")]
    lengths = [0] * len(dataset)
    for name in id_columns:
        for index, ids in enumerate(dataset[name]):
            lengths[index] += len(ids)
    return dataset.add_column("length", lengths)


def drop_reference_adapter(model) -> None:
    """TRL's frozen "ref" adapter copy, gone before the trained adapter is saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
