"""Token classification (NER) and extractive question answering: rows → features, and the
predictions the metrics, the playground and a reloaded download all read.

Both follow the Hugging Face course's recipes. Token classification tokenizes the words of a
row (`is_split_into_words`) and labels each word's first sub-word token with its tag; the
word's other pieces and the special tokens get -100 and carry no loss. Question answering
tokenizes question and context as a pair, the context cut into windows of `max_length`
tokens overlapping by `stride`; each window's label is the answer's first and last token
(found through the offset mapping), or the [CLS] token when the answer is not inside it or
there is none (SQuAD 2). A prediction takes, over all windows of an example, the best span
of at most `MAX_ANSWER_TOKENS` tokens, and answers "" when the [CLS] score beats it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.contract.formats import Answered, TaggedTokens

from .data import IGNORE_INDEX
from .errors import ConfigurationError, DatasetError

MAX_ANSWER_TOKENS = 30
BEST_STARTS = 20  # start and end candidates tried per window
PREDICT_BATCH = 16


def _fast(tokenizer) -> None:
    """Word ids and offset mappings come from a fast (Rust) tokenizer only."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigurationError(
            "token classification and question answering need the model's fast tokenizer (tokenizer.json): "
            "its word ids and character offsets place tags and answers on sub-word tokens"
        )


# -- token classification --------------------------------------------------------------------


def tag_names(examples: Sequence[TaggedTokens]) -> list[str]:
    """The tags of the training rows in a stable order: "O" first, then each entity type's B- and
    I- tags together (integer tags: in numeric order). Index i of the classifier is tag_names[i]."""
    found = {tag for example in examples for tag in example.tags}
    if all(tag.isdigit() for tag in found):
        return sorted(found, key=int)

    def order(tag: str) -> tuple:
        return (tag != "O", tag[2:], tag[:1])

    return sorted(found, key=order)


@dataclass
class TaggedFeatures:
    """Tokenized rows: token ids, and per token the tag index (-100 where nothing is learnt)."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    truncated: int = 0  # rows with words past the max length (those words are not learnt)

    def rows(self) -> dict[str, list]:
        return {"input_ids": self.input_ids, "labels": self.labels}


def align_tags(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """One label per token: the first token of each word gets the word's tag, the others -100."""
    labels = []
    previous = None
    for word in word_ids:
        labels.append(IGNORE_INDEX if word is None or word == previous else tags[word])
        previous = word
    return labels


def tag_features(tokenizer, examples: Sequence[TaggedTokens], names: Sequence[str], max_length: int) -> TaggedFeatures:
    _fast(tokenizer)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({tag for example in examples for tag in example.tags} - index.keys())
    if unknown:
        raise DatasetError(f"tags not seen in the training data: {', '.join(unknown[:10])}")
    encoded = tokenizer(
        [example.tokens for example in examples], is_split_into_words=True, truncation=True, max_length=max_length
    )
    out = TaggedFeatures([], [])
    for i, example in enumerate(examples):
        word_ids = encoded.word_ids(i)
        out.input_ids.append(encoded["input_ids"][i])
        out.labels.append(align_tags(word_ids, [index[tag] for tag in example.tags]))
        if max((word for word in word_ids if word is not None), default=-1) < len(example.tokens) - 1:
            out.truncated += 1
    return out


def predict_tags(model, tokenizer, sentences: Sequence[Sequence[str]], max_length: int = 512) -> list[list[str]]:
    """The tag of every word of each sentence, read from the first token of the word (a word
    cut off by the max length gets "O")."""
    import torch

    _fast(tokenizer)
    id2label = model.config.id2label
    device = next(model.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(sentences), PREDICT_BATCH):
        batch = [list(words) for words in sentences[start : start + PREDICT_BATCH]]
        encoded = tokenizer(
            batch, is_split_into_words=True, truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            logits = model(**_inputs(model, encoded, device)).logits
        predicted = logits.argmax(-1).tolist()
        for row, words in enumerate(batch):
            tags = ["O"] * len(words)
            seen = set()
            for position, word in enumerate(encoded.word_ids(row)):
                if word is not None and word not in seen:
                    seen.add(word)
                    tags[word] = id2label[predicted[row][position]]
            out.append(tags)
    return out


def _inputs(model, encoded, device) -> dict[str, Any]:
    """The tokenizer's tensors on the model's device; token type ids only for a model that has
    them (BERT; DistilBERT and RoBERTa-style models do not)."""
    keep = ("input_ids", "attention_mask", "token_type_ids") if _types(model) else ("input_ids", "attention_mask")
    return {key: encoded[key].to(device) for key in keep if key in encoded}


def _types(model) -> bool:
    return getattr(model.config, "type_vocab_size", 0) > 1


def words_of(text: str) -> list[str]:
    """A sentence typed in the playground as words: split at spaces, punctuation on its own."""
    import re

    return re.findall(r"\w+(?:[-'’]\w+)*|[^\w\s]", text)


# -- question answering ----------------------------------------------------------------------


@dataclass
class AnswerFeatures:
    """Windows of (question, context) pairs with the answer's token span (0, 0 = [CLS]: no answer)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    start_positions: list[int]
    end_positions: list[int]
    windows: int  # more windows than rows: long contexts were cut with a stride
    answers_cut: int = 0  # answers no window holds whole (their windows learn "no answer")

    def rows(self) -> dict[str, list]:
        columns = {
            "input_ids": self.input_ids,
            "start_positions": self.start_positions,
            "end_positions": self.end_positions,
        }
        if self.token_type_ids is not None:
            columns["token_type_ids"] = self.token_type_ids
        return columns


def _windows(tokenizer, questions: list[str], contexts: list[str], max_length: int, stride: int):
    side = tokenizer.padding_side == "right"
    return tokenizer(
        questions if side else contexts,
        contexts if side else questions,
        truncation="only_second" if side else "only_first",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )


def answer_stride(max_length: int) -> int:
    """The overlap of the windows a long context is cut into: a quarter of the max length (128 of 512,
    as the Hugging Face recipe has it)."""
    return max(8, max_length // 4)


def answer_features(tokenizer, examples: Sequence[Answered], max_length: int) -> AnswerFeatures:
    _fast(tokenizer)
    encoded = _windows(
        tokenizer, [e.question for e in examples], [e.context for e in examples], max_length, answer_stride(max_length)
    )
    if any(len(ids) > max_length for ids in encoded["input_ids"]):
        raise DatasetError(f"a question is longer than max_seq_length ({max_length} tokens) leaves room for")
    starts, ends = [], []
    held: set[int] = set()
    answered: set[int] = set()
    for window, offsets in enumerate(encoded["offset_mapping"]):
        example = examples[encoded["overflow_to_sample_mapping"][window]]
        sequence_ids = encoded.sequence_ids(window)
        start = end = 0
        if example.answers:
            answered.add(encoded["overflow_to_sample_mapping"][window])
            text, first_char = example.answers[0]
            last_char = first_char + len(text)
            context = [i for i, sequence in enumerate(sequence_ids) if sequence == 1]
            if offsets[context[0]][0] <= first_char and offsets[context[-1]][1] >= last_char:
                start = next(i for i in context if offsets[i][1] > first_char)
                end = next(i for i in reversed(context) if offsets[i][0] < last_char)
                held.add(encoded["overflow_to_sample_mapping"][window])
        starts.append(start)
        ends.append(end)
    return AnswerFeatures(
        input_ids=encoded["input_ids"],
        token_type_ids=encoded.get("token_type_ids"),
        start_positions=starts,
        end_positions=ends,
        windows=len(starts),
        answers_cut=len(answered - held),
    )


@dataclass
class Answer:
    text: str  # "" when the context holds no answer
    start: int  # character position in the context, -1 for no answer
    score: float  # probability of this span (or of no answer) under the model


def _softmax(values: np.ndarray) -> np.ndarray:
    exp = np.exp(values - values.max())
    return exp / exp.sum()


def predict_answers(
    model, tokenizer, pairs: Sequence[tuple[str, str]], max_length: int = 384, allow_no_answer: bool = True
) -> list[Answer]:
    """The answer span of each (question, context): the window and span whose start and end
    probabilities multiply highest; "" when no answer (the [CLS] span) is likelier."""
    import torch

    _fast(tokenizer)
    device = next(model.parameters()).device
    answers: list[Answer] = []
    for first in range(0, len(pairs), PREDICT_BATCH):
        batch = pairs[first : first + PREDICT_BATCH]
        encoded = _windows(
            tokenizer, [q for q, _ in batch], [c for _, c in batch], max_length, answer_stride(max_length)
        )
        best: list[Answer | None] = [None] * len(batch)
        null: list[float] = [0.0] * len(batch)
        columns = [key for key in ("input_ids", "token_type_ids") if key in encoded]
        windows = tokenizer.pad({key: encoded[key] for key in columns}, return_tensors="pt")
        with torch.no_grad():
            output = model(**_inputs(model, windows, device))
        for window, offsets in enumerate(encoded["offset_mapping"]):
            row = encoded["overflow_to_sample_mapping"][window]
            length = len(encoded["input_ids"][window])
            start_p = _softmax(output.start_logits[window, :length].float().cpu().numpy())
            end_p = _softmax(output.end_logits[window, :length].float().cpu().numpy())
            null[row] = max(null[row], float(start_p[0] * end_p[0]))
            context = [sequence == 1 for sequence in encoded.sequence_ids(window)]
            for start in np.argsort(start_p)[::-1][:BEST_STARTS]:
                for end in np.argsort(end_p)[::-1][:BEST_STARTS]:
                    if not (context[start] and context[end]) or not 0 <= end - start < MAX_ANSWER_TOKENS:
                        continue
                    score = float(start_p[start] * end_p[end])
                    if best[row] is None or score > best[row].score:
                        chars = (offsets[start][0], offsets[end][1])
                        best[row] = Answer(batch[row][1][chars[0] : chars[1]], chars[0], score)
        for row in range(len(batch)):
            found = best[row]
            if found is None or (allow_no_answer and null[row] > found.score):
                answers.append(Answer("", -1, null[row]))
            else:
                answers.append(found)
    return answers
