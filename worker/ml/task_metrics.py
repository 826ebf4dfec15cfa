"""The metrics of the tasks beyond language modelling and classification, by their usual
definitions: entity-level precision / recall / F1 (seqeval, overall and per entity type) for
token classification, SQuAD's exact match and F1 for question answering, ROUGE-1/2/L F-measures
(Google's rouge-score) for seq2seq. Fractions from 0 to 1.

The trainer logs them with `eval_` in front at each evaluation; `task_eval_metrics` picks them
out of a log entry for the reporter and the final metrics."""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence

from app.contract.formats import TASK_EVAL_PREFIXES


def task_eval_metrics(logs: Mapping[str, float]) -> dict[str, float]:
    """The task metrics of a log entry at an evaluation (eval_f1, eval_f1_PER, eval_exact_match...)."""
    return {key: float(value) for key, value in logs.items() if key.startswith(TASK_EVAL_PREFIXES)}


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict[str, float]:
    """seqeval's entity-level scores (IOB2, an entity counts when its type and every token match):
    precision, recall and f1 over all entities, and f1_TYPE for each entity type of the gold tags."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    gold_tags, predicted_tags = [list(tags) for tags in gold], [list(tags) for tags in predicted]
    report = classification_report(
        gold_tags, predicted_tags, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    overall = report["micro avg"]
    scores = {"precision": overall["precision"], "recall": overall["recall"], "f1": overall["f1-score"]}
    for name, values in report.items():
        if name not in ("micro avg", "macro avg", "weighted avg"):
            scores[f"f1_{name}"] = values["f1-score"]
    return {key: float(value) for key, value in scores.items()}


def _normalized(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(predicted: str, gold: str) -> float:
    predicted_words, gold_words = _normalized(predicted).split(), _normalized(gold).split()
    if not predicted_words or not gold_words:
        return float(predicted_words == gold_words)  # no answer: right only when both are empty
    common = sum((collections.Counter(predicted_words) & collections.Counter(gold_words)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted_words), common / len(gold_words)
    return 2 * precision * recall / (precision + recall)


def squad_scores(gold: Sequence[Sequence[str]], predicted: Sequence[str]) -> dict[str, float]:
    """SQuAD (v2) exact match and F1: each prediction against the best of its gold answers; a
    question without a gold answer is right when the prediction is empty."""
    exact = f1 = 0.0
    for answers, prediction in zip(gold, predicted, strict=True):
        answers = list(answers) or [""]
        exact += max(float(_normalized(prediction) == _normalized(answer)) for answer in answers)
        f1 += max(_f1(prediction, answer) for answer in answers)
    count = max(1, len(predicted))
    return {"exact_match": exact / count, "f1": f1 / count}


def rouge_scores(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures of the predictions against the targets."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    totals = dict.fromkeys(("rouge1", "rouge2", "rougeL"), 0.0)
    for target, prediction in zip(targets, predictions, strict=True):
        for name, score in scorer.score(target, prediction).items():
            totals[name] += score.fmeasure
    return {name: total / max(1, len(targets)) for name, total in totals.items()}
