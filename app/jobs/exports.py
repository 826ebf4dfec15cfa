"""What a job hands out beyond its own files: the metrics as CSV (the columns of OpenAI's
result files), and, built on request by a worker, the merged model and GGUF files of it."""

from __future__ import annotations

import csv
import io
import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.chat.catalog import find_model
from app.chat.model_names import is_classifier, job_task
from app.config import get_settings
from app.contract.export import GgufQuantization, gguf_refusal
from app.contract.formats import QUESTION_ANSWERING, SEQ2SEQ, TASK_EVAL_PREFIXES, TOKEN_CLASSIFICATION
from app.contract.spec import Method
from app.core.errors import Conflict, DomainError, InvalidField
from app.core.queue import commit_then_enqueue, enqueue_gguf_export, enqueue_merge
from app.core.tables import Artifact, ArtifactKind, Job
from app.jobs.artifacts import final_weights, merged_model
from app.jobs.timeline import add_event, metrics

# OpenAI's metric names, each with the tunelab metric keys that fill it (the first present wins).
# Accuracy is per token for language models, per row for classifiers. tunelab evaluates on the
# whole validation set every time, so `valid_*` (OpenAI: a sampled validation batch) and
# `full_valid_*` (OpenAI: the whole validation set) carry the same figure: that of an evaluation
# at that step, of the weights saved there; a step without an evaluation has neither.
OPENAI_METRICS = [
    ("train_loss", ("loss",)),
    ("train_mean_token_accuracy", ("mean_token_accuracy", "accuracy")),
    ("valid_loss", ("eval_loss",)),
    ("valid_mean_token_accuracy", ("eval_mean_token_accuracy", "eval_accuracy")),
    ("full_valid_loss", ("eval_loss",)),
    ("full_valid_mean_token_accuracy", ("eval_mean_token_accuracy", "eval_accuracy")),
]
# The result file's columns: those of OpenAI's result files in their order, its other names, then
# what tunelab also records: (column, the metric keys that fill it).
METRIC_COLUMNS = [
    ("step", ()),
    ("train_loss", ("loss",)),
    ("train_accuracy", ("mean_token_accuracy", "accuracy")),
    ("valid_loss", ("eval_loss",)),
    ("valid_mean_token_accuracy", ("eval_mean_token_accuracy", "eval_accuracy")),
    *[
        column
        for column in OPENAI_METRICS
        if column[0] not in ("train_loss", "valid_loss", "valid_mean_token_accuracy")
    ],
    ("valid_accuracy", ("eval_accuracy", "eval_mean_token_accuracy")),
    ("valid_f1_macro", ("eval_f1_macro",)),
    ("valid_perplexity", ("eval_perplexity",)),
    ("epoch", ("epoch",)),
    ("learning_rate", ("learning_rate",)),
    ("grad_norm", ("grad_norm",)),
    ("tokens_per_second", ("tokens_per_second",)),
    ("peak_memory_mb", ("peak_memory_mb",)),
]
# A preference job's (DPO, ORPO, KTO) columns besides: its rewards and log-probabilities.
PREFERENCE_METRICS = (
    "reward_accuracy",
    "reward_margin",
    "reward_chosen",
    "reward_rejected",
    "logp_chosen",
    "logp_rejected",
)
PREFERENCE_COLUMNS = [(f"train_{name}", (name,)) for name in PREFERENCE_METRICS] + [
    (f"valid_{name}", (f"eval_{name}",)) for name in PREFERENCE_METRICS
]


def task_columns(points) -> list[tuple[str, tuple[str, ...]]]:
    """A tagger's, question answerer's or seq2seq job's evaluation metrics, a column each when the
    job has them: valid_f1, valid_f1_PER..., valid_exact_match, valid_rougeL."""
    names = sorted({key for values in points for key in values if key.startswith(TASK_EVAL_PREFIXES)})
    return [(f"valid_{name[5:]}", (name,)) for name in names]


def metric_value(values: dict, keys: tuple[str, ...]):
    """The first of `keys` that the point has a value for, or None."""
    return next((values[key] for key in keys if values.get(key) is not None), None)


# A classifier's own figures, under the names of the result file's columns, beside OpenAI's.
CLASSIFIER_METRICS = [
    ("train_accuracy", ("accuracy",)),
    ("valid_accuracy", ("eval_accuracy",)),
    ("valid_f1_macro", ("eval_f1_macro",)),
]


def openai_metrics(values: dict, preference: bool = False) -> dict[str, float]:
    """One step's train and eval values under OpenAI's names (a checkpoint's `metrics`); those
    the step has no value for are left out."""
    columns = OPENAI_METRICS + CLASSIFIER_METRICS + (PREFERENCE_COLUMNS if preference else [])
    named = {name: metric_value(values, keys) for name, keys in columns}
    return {name: value for name, value in named.items() if value is not None}


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


def metrics_csv(session: Session, job: Job) -> str:
    """One row per step: train and eval values of the same step side by side."""
    by_step: dict[int, dict] = {}
    for point in metrics(session, job):
        by_step.setdefault(point.step, {}).update(point.values)
    columns = METRIC_COLUMNS + (PREFERENCE_COLUMNS if job.spec.get("objective", "sft") != "sft" else [])
    columns += task_columns(by_step.values())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([column for column, _ in columns])
    for step, values in sorted(by_step.items()):
        writer.writerow([_number(metric_value(values, keys)) if keys else step for _, keys in columns])
    return buffer.getvalue()


def request_merge(session: Session, access: TeamAccess, job_id: int) -> Artifact | None:
    """Have a worker of the job's queue build the base model with the job's adapter merged in
    (its progress shows in the job's events). Returns the merged model when it exists already,
    else None once the build is queued. Conflict when there is nothing to merge (yet)."""
    job = access.get(session, Job, job_id, write=True)
    if job.method == Method.full.value:
        raise Conflict("full fine-tuning has no adapter to merge: its weights are the model")
    if not job.state.is_terminal:
        raise Conflict(f"the job is {job.state.value}: merge it once it has finished")
    if final_weights(session, job) is None:
        raise Conflict("the job left no adapter to merge")
    if (merged := merged_model(session, job)) is not None:
        return merged
    add_event(session, job, f"Merged model requested by {access.user.email}", merge="queued")
    commit_then_enqueue(
        session,
        lambda: enqueue_merge(job.id, job.queue),
        on_failure=lambda: add_event(
            session, job, "The merge could not be queued: the broker is unreachable", level="error", merge="failed"
        ),
        message="the job queue is unreachable; try again later",
    )
    return None


# A Hugging Face repository id: owner/name, as the Hub accepts them.
HUB_REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}$")


def gguf_kind(quantization: GgufQuantization) -> ArtifactKind:
    return ArtifactKind(f"gguf-{quantization.value}")


def gguf_export(session: Session, job: Job, quantization: GgufQuantization) -> Artifact | None:
    kind = gguf_kind(quantization)
    return session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.kind == kind))


# What a job of a task format trains, as the GGUF refusal names it.
TASK_MODELS = {
    TOKEN_CLASSIFICATION: "a token classifier (NER)",
    QUESTION_ANSWERING: "an extractive question answerer",
    SEQ2SEQ: "an encoder-decoder (seq2seq)",
}


def gguf_unavailable(session: Session, job: Job) -> DomainError | None:
    """Why the job's model cannot be exported to GGUF (the error `request_gguf` answers with), or
    None when it can. The job page asks too, to show the reason instead of the export button."""
    if is_classifier(session, job):
        return Conflict("the job trains a text classifier: GGUF export converts language models, not classifier heads")
    if (task := job_task(session, job)) is not None:
        return InvalidField(
            ("quantization",),
            f"the job trains {TASK_MODELS[task]}: GGUF export converts causal language models "
            "(the Llama family), not task heads or encoder-decoders",
        )
    base = find_model(job.base_model)
    if base is not None and (refusal := gguf_refusal(base.architecture)) is not None:
        return InvalidField(("quantization",), refusal)
    return None


def request_gguf(
    session: Session, access: TeamAccess, job_id: int, quantization: GgufQuantization, hub_repo: str | None = None
) -> Artifact | None:
    """Have a worker of the job's queue write the job's model as one GGUF file at `quantization`
    with an Ollama Modelfile (merging the adapter first when the merged model is not built yet),
    and push it to the Hub repository `hub_repo` when one is named. Returns the export when it
    exists already and no push is asked, else None once the work is queued.

    Conflict when the job has no weights (yet), trains a classifier, or a push is asked with no Hub
    token configured; InvalidField for a task head (NER, QA, seq2seq) or a base model GGUF export
    does not convert, or a malformed repository id."""
    job = access.get(session, Job, job_id, write=True)
    if not job.state.is_terminal:
        raise Conflict(f"the job is {job.state.value}: export it once it has finished")
    if final_weights(session, job) is None:
        raise Conflict("the job left no weights to export")
    if (refusal := gguf_unavailable(session, job)) is not None:
        raise refusal
    if hub_repo is not None:
        if not HUB_REPO_PATTERN.match(hub_repo) or ".." in hub_repo:
            raise InvalidField(("hub_repo",), "a Hub repository is named owner/name (letters, digits, - _ .)")
        if get_settings().hf_token is None:
            raise Conflict("pushing to the Hugging Face Hub needs a token: set TUNELAB_HF_TOKEN on the workers")
    if hub_repo is None and (existing := gguf_export(session, job, quantization)) is not None:
        return existing
    label = quantization.value.upper()
    target = f", then a push to {hub_repo}" if hub_repo else ""
    add_event(session, job, f"GGUF {label} export requested by {access.user.email}{target}", gguf="queued")
    commit_then_enqueue(
        session,
        lambda: enqueue_gguf_export(job.id, job.queue, quantization.value, hub_repo),
        on_failure=lambda: add_event(
            session, job, "The GGUF export could not be queued: the broker is unreachable", level="error", gguf="failed"
        ),
        message="the job queue is unreachable; try again later",
    )
    return None
