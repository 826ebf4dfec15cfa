"""Jobs side by side: the settings that differ between them (the spec as the worker resolved
it, and the datasets), and their final and best metrics. What the compare page shows beside the curves.

    comparison = compare_jobs(session, access, [12, 15])
    comparison.differing   # [Row("learning_rate", [0.0002, 0.001]), ...]
    len(comparison.equal)  # the settings the jobs share
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.accounts.access import TeamAccess
from app.contract.spec import Method, TrainingSpec
from app.core.errors import DomainError, NotFound
from app.core.tables import Dataset, Job, JobMetric, JobSamples, utcnow
from app.jobs.exports import metric_value

MAX_JOBS = 12  # as many as the compare page picks


@dataclass(frozen=True)
class Row:
    name: str
    values: list[Any]  # one per job, in the order of `Comparison.jobs`; None: not set, or not used by its method
    better: str | None = None  # metrics: "lower" or "higher" is better; None: neither


@dataclass(frozen=True)
class Comparison:
    jobs: list[Job]
    differing: list[Row]  # settings not the same for every job
    equal: list[Row]  # settings every job shares
    metrics: list[Row]


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def resolved_settings(job: Job, datasets: dict[int, str]) -> dict[str, Any]:
    """The job's settings as training used them: every spec field with its default filled in,
    the learning rate the method picks when none was given, and the datasets by name. Settings
    the job's method does not use (LoRA's for full fine-tuning, quantization's but for QLoRA)
    are None."""
    try:
        spec = TrainingSpec.model_validate(job.spec)
    except ValidationError:  # a spec stored by an older version: shown as it was given
        settings = _flatten(dict(job.spec))
    else:
        settings = _flatten(spec.model_dump(mode="json"))
        for integration in settings.pop("integrations"):  # a row per tracker setting, not one list
            settings.update(_flatten(integration[integration["type"]], f"integrations.{integration['type']}."))
        settings["learning_rate"] = spec.effective_learning_rate
        for section, used in (("lora.", spec.uses_adapter), ("quantization.", spec.method == Method.qlora)):
            if not used:
                settings.update({name: None for name in settings if name.startswith(section)})
    settings["dataset"] = datasets.get(job.dataset_id) if job.dataset_id else None
    settings["validation_dataset"] = datasets.get(job.validation_dataset_id) if job.validation_dataset_id else None
    return settings


def _last_point(session: Session, job: Job, split: str) -> dict[str, Any]:
    query = select(JobMetric.values).where(JobMetric.job_id == job.id, JobMetric.split == split)
    return session.scalar(query.order_by(JobMetric.step.desc()).limit(1)) or {}


# The evaluation metrics a best is found for: (metric key(s), row name, better).
BEST_METRICS = [
    (("eval_loss",), "eval_loss", "lower"),
    (("eval_mean_token_accuracy", "eval_accuracy"), "eval_accuracy", "higher"),
    (("eval_f1_macro",), "eval_f1_macro", "higher"),
]


def _best_evaluations(session: Session, job: Job) -> dict[str, tuple[int, float]]:
    """Per metric of BEST_METRICS, the (step, value) of the job's best evaluation after step 0
    (the base model's baseline): the earliest of equals."""
    query = select(JobMetric.step, JobMetric.values).where(
        JobMetric.job_id == job.id, JobMetric.split == "eval", JobMetric.step > 0
    )
    best: dict[str, tuple[int, float]] = {}
    for step, values in session.execute(query.order_by(JobMetric.step)):
        for keys, name, better in BEST_METRICS:
            value = metric_value(values, keys)
            if value is None:
                continue
            if name not in best or (value < best[name][1] if better == "lower" else value > best[name][1]):
                best[name] = (step, value)
    return best


def best_metrics(session: Session, jobs: list[Job]) -> list[Row]:
    """Each job's best evaluation per metric, with its step: where a job peaked, which its final
    metrics do not show once it overfits."""
    best = [_best_evaluations(session, job) for job in jobs]
    rows = []
    for _, name, better in BEST_METRICS:
        if any(name in each for each in best):
            rows.append(Row(f"best_{name}", [each[name][1] if name in each else None for each in best], better))
            rows.append(Row(f"best_{name}_step", [each[name][0] if name in each else None for each in best]))
    return rows


def final_metrics(session: Session, jobs: list[Job]) -> list[Row]:
    """Where each job ended: its losses and accuracies (per token for language models, per row
    for classifiers), steps, tokens and time; then its best evaluations (`best_metrics`)."""
    last = [(_last_point(session, job, "train"), _last_point(session, job, "eval")) for job in jobs]
    now = utcnow()
    return [
        Row("state", [job.state.value for job in jobs]),
        Row("train_loss", [job.train_loss for job in jobs], "lower"),
        Row("eval_loss", [job.eval_loss for job in jobs], "lower"),
        Row(
            "train_accuracy", [metric_value(train, ("mean_token_accuracy", "accuracy")) for train, _ in last], "higher"
        ),
        Row(
            "eval_accuracy",
            [metric_value(evals, ("eval_mean_token_accuracy", "eval_accuracy")) for _, evals in last],
            "higher",
        ),
        *(
            [Row("eval_f1_macro", [evals.get("eval_f1_macro") for _, evals in last], "higher")]
            if any(evals.get("eval_f1_macro") is not None for _, evals in last)
            else []
        ),
        Row("steps", [job.step for job in jobs]),
        Row("trained_tokens", [job.trained_tokens for job in jobs]),
        Row(
            "duration_s",
            [
                round(((job.finished_at or now) - job.started_at).total_seconds(), 1) if job.started_at else None
                for job in jobs
            ],
        ),
        *best_metrics(session, jobs),
    ]


def compare_jobs(session: Session, access: TeamAccess, job_ids: list[int]) -> Comparison:
    """The jobs `job_ids` (in that order, duplicates once) side by side. NotFound when one is
    missing or another team's; DomainError for fewer than one or more than MAX_JOBS."""
    ids = list(dict.fromkeys(job_ids))
    if not 1 <= len(ids) <= MAX_JOBS:
        raise DomainError(f"compare 1 to {MAX_JOBS} jobs at a time", 422)
    found = {job.id: job for job in session.scalars(access.scope(select(Job).where(Job.id.in_(ids)), Job))}
    if missing := [job_id for job_id in ids if job_id not in found]:
        raise NotFound(f"job not found: {', '.join(map(str, missing))}")
    jobs = [found[job_id] for job_id in ids]
    dataset_ids = {i for job in jobs for i in (job.dataset_id, job.validation_dataset_id) if i is not None}
    datasets = dict(session.execute(select(Dataset.id, Dataset.name).where(Dataset.id.in_(dataset_ids))).all())
    settings = [resolved_settings(job, datasets) for job in jobs]
    names = list(dict.fromkeys(name for each in settings for name in each))
    rows = [Row(name, [each.get(name) for each in settings]) for name in names]
    differing = [row for row in rows if any(value != row.values[0] for value in row.values)]
    equal = [row for row in rows if all(value == row.values[0] for value in row.values)]
    return Comparison(jobs, differing, equal, final_metrics(session, jobs))


@dataclass(frozen=True)
class ComparedPrompt:
    prompt: str
    reference: str
    answers: list[str | None]  # one per job: its answer at its last evaluation; None: not asked of it
    losses: list[float | None]


def compared_samples(
    session: Session, access: TeamAccess, job_ids: list[int]
) -> tuple[list[Job], list[ComparedPrompt]]:
    """The jobs' answers at their last evaluation to the same prompts, side by side. Jobs trained
    on the same evaluation data with the same seed answer the same prompts; a prompt only some
    were asked has None for the others."""
    jobs = compare_jobs(session, access, job_ids).jobs
    prompts: dict[tuple[str, str], ComparedPrompt] = {}
    for index, job in enumerate(jobs):
        latest = session.scalar(
            select(JobSamples)
            .where(JobSamples.job_id == job.id, JobSamples.kind == "generation")
            .order_by(JobSamples.step.desc())
            .limit(1)
        )
        for row in latest.rows if latest else []:
            key = (row["prompt"], row["reference"])
            if key not in prompts:
                prompts[key] = ComparedPrompt(row["prompt"], row["reference"], [None] * len(jobs), [None] * len(jobs))
            prompts[key].answers[index], prompts[key].losses[index] = row["answer"], row["loss"]
    return jobs, list(prompts.values())
