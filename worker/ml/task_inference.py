"""Trying a token classifier, a question answerer or an encoder-decoder in the playground: the
job's weights loaded with the ordinary transformers classes, and one request answered with
the same predictions the job's evaluation made (`token_tasks`, `seq2seq`).

    with models.task_model("tiny-bert", weights_dir=Path("runs/9/final")) as model:
        predict(model, {"text": "Ada lives in Paris"})
        # {"task": "token_classification", "tokens": [...], "tags": [...], "entities": [{"type": "PER", ...}]}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.contract.formats import entity_spans

from . import seq2seq, token_tasks
from .data import Task
from .errors import InferenceError
from .loading import LABELLED_TASKS, auto_model_class, classifier_kwargs, load_tokenizer, read_class_names, saved_task

# The tasks a job's weights can be tried on here (chat and classification have their own).
PREDICTED_TASKS = frozenset({Task.token_classification, Task.question_answering, Task.seq2seq})
MAX_CHARS = 20_000


@dataclass(frozen=True)
class TaskModel:
    model: Any
    tokenizer: Any
    task: Task


def load_task_model(base: Path, weights_dir: Path, device: str, dtype) -> tuple[Any, Any, Task]:
    """The model a job left in `weights_dir` (an adapter on `base`, or whole weights), in eval mode,
    with the base's tokenizer and its task."""
    task = saved_task(weights_dir)
    if task not in PREDICTED_TASKS:
        raise InferenceError(
            f"this job trained a {task.value.replace('_', ' ')} model, not a tagger, QA or seq2seq one"
        )
    tokenizer = load_tokenizer(base)
    adapter = (weights_dir / "adapter_config.json").is_file()
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": {"": device}}
    if task in LABELLED_TASKS:
        kwargs.update(classifier_kwargs(read_class_names(weights_dir), tokenizer.pad_token_id))
    model = auto_model_class(task).from_pretrained(base if adapter else weights_dir, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, weights_dir)
    return model.eval(), tokenizer, task


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InferenceError(f'give the "{key}" to try the model on')
    if len(value) > MAX_CHARS:
        raise InferenceError(f'the "{key}" is longer than {MAX_CHARS:,} characters')
    return value


def predict(model: TaskModel, request: dict[str, Any]) -> dict[str, Any]:
    """Answer one playground request: `text` for a tagger (its entities) or an encoder-decoder
    (its output), `question` and `context` for a question answerer (the answer span and its score)."""
    if model.task == Task.token_classification:
        words = token_tasks.words_of(_text(request, "text"))
        tags = token_tasks.predict_tags(model.model, model.tokenizer, [words])[0]
        entities = [
            {"type": kind, "text": " ".join(words[start:end]), "start": start, "end": end}
            for kind, start, end in entity_spans(tags)
        ]
        return {"task": model.task.value, "tokens": words, "tags": tags, "entities": entities}
    if model.task == Task.question_answering:
        question, context = _text(request, "question"), _text(request, "context")
        answer = token_tasks.predict_answers(model.model, model.tokenizer, [(question, context)])[0]
        return {"task": model.task.value, "answer": answer.text, "start": answer.start, "score": answer.score}
    target = seq2seq.generate(model.model, model.tokenizer, [_text(request, "text")])[0]
    return {"task": model.task.value, "target": target}
