"""Dataset rows → token ids and loss labels → batches.

Every causal-LM row becomes one example: the tokenizer's own chat template renders
conversations (ChatML when the tokenizer has none), and only assistant / completion
tokens carry loss unless the spec trains on prompts too. Conversation-like rows longer than
the max length are truncated and counted (with the tokens cut off). Text rows (continued
pre-training) are never truncated: they are documents, cut into pieces of the max length
when batched, so no token is lost. Classification rows become (token ids, class index).

Batches never pad to the max length. With packing, text documents are laid end to end
(each ending with EOS) and cut into rows of exactly `max_seq_length` tokens; the other
examples, and the pieces left at the end, are packed best-fit into rows of at most
`max_seq_length` tokens (TRL's `pack_dataset`). Position ids restart at 0 for every example
or piece of a document; with no attention mask and the model's KV cache off, transformers
turns those position ids into a block-diagonal causal mask, so packed examples never see
each other (tests/training/test_data.py checks logits and loss against running each
example alone). Without packing, text documents longer than the max length are cut into
pieces of it, the trainer's length-grouped sampler puts rows of similar length together and
each batch is padded to its own longest row.

Which of the two a job gets is `choose_batching`'s call (`packing: auto` by default): packing
where the attention kernel keeps packed examples apart by itself (flash-attention's
variable-length kernel, fed one flattened row per micro-batch, no padding at all), else
length-grouped batches, which on SDPA are the faster ones (bench/train_throughput.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import TemplateError

from app.contract import formats
from app.contract.formats import Conversation, Labeled, PlainText
from app.contract.spec import Packing

from .errors import DatasetError

IGNORE_INDEX = -100
# The collator counts the real (non-pad) tokens of each batch under this key; the trainer
# pops it before the forward pass (tokens/s is computed from it).
REAL_TOKENS_KEY = "real_tokens"


class Task(str, Enum):
    """What a dataset trains: a causal LM, a sequence classifier (text+label rows), a token
    classifier (tagged tokens), an extractive question answerer, or an encoder-decoder
    (seq2seq; see `task_training.py` for the last three). Not a dataset format:
    `app.contract.formats.CLASSIFICATION` is the text+label format."""

    causal_lm = "causal_lm"
    classification = "classification"
    token_classification = "token_classification"
    question_answering = "question_answering"
    seq2seq = "seq2seq"


# The tasks of the task formats (a head of their own), and the formats an encoder-decoder reads
# as input and target.
FORMAT_TASKS = {
    formats.TOKEN_CLASSIFICATION: Task.token_classification,
    formats.QUESTION_ANSWERING: Task.question_answering,
    formats.SEQ2SEQ: Task.seq2seq,
}
SEQ2SEQ_FORMATS = frozenset({formats.SEQ2SEQ, formats.PROMPT_COMPLETION, formats.INSTRUCTION})


# Used when a tokenizer has no chat template of its own. Its markers are plain text to
# such a tokenizer, which is fine: the model learns them like any other text. With tools it
# writes them as Qwen2.5 and Hermes do: the function signatures in the system turn, each call
# as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` in the assistant turn, each
# result in a `tool` turn. Without tools it is plain ChatML.
CHATML_TEMPLATE = (
    "{% if tools %}"
    "{{ '<|im_start|>system\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n\nYou may call one or more functions. Their signatures are within <tools></tools>:\n<tools>' }}"
    "{% for tool in tools %}{{ '\n' }}{{ tool | tojson }}{% endfor %}"
    '{{ \'\n</tools>\n\nFor each call, return {"name": <function-name>, "arguments": <args-json-object>} \''
    " + 'within <tool_call></tool_call> tags.<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.get('tool_calls') or [] %}"
    "{% set call = call['function'] if call['function'] is defined else call %}"
    "{% if message['content'] or not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<tool_call>\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' }}"
    "{% if call['arguments'] is string %}{{ call['arguments'] }}{% else %}{{ call['arguments'] | tojson }}{% endif %}"
    "{{ '}\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL file; a line that is not a JSON object or matches no format is an error."""
    rows = []
    try:
        with open(path, encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{path.name}, line {number}: not valid JSON ({error.msg})") from None
                if not isinstance(row, dict) or formats.detect_format(row) is None:
                    raise DatasetError(
                        f"{path.name}, line {number}: a row must be a JSON object of one of the formats "
                        f"{', '.join(formats.FORMATS)}"
                    )
                rows.append(row)
    except FileNotFoundError:
        raise DatasetError(f"dataset file {path} does not exist") from None
    if not rows:
        raise DatasetError(f"{path.name} has no rows")
    return rows


def task_of(rows: Sequence[dict[str, Any]], *, encoder_decoder: bool = False) -> Task:
    """causal_lm for chat, sharegpt, prompt/completion, instruction and text rows; classification for text+label;
    the task of a task format (tagged tokens, QA, seq2seq). With `encoder_decoder` (the base model is one),
    seq2seq for input/target, prompt/completion and instruction rows."""
    found = {formats.detect_format(row) for row in rows}
    if found & formats.PREFERENCE_FORMATS:
        raise DatasetError("this is preference data: train it with the objective dpo, orpo or kto, not sft")
    if encoder_decoder and found <= SEQ2SEQ_FORMATS:
        return Task.seq2seq
    if found & formats.TASK_FORMATS:
        if len(found) > 1:
            titles = ", ".join(sorted(formats.FORMAT_TITLES[fmt] for fmt in found))
            raise DatasetError(f"a dataset holds one format, and this one mixes {titles}")
        return FORMAT_TASKS[found.pop()]
    if found <= formats.CAUSAL_LM_FORMATS:
        return Task.causal_lm
    if found == {formats.CLASSIFICATION}:
        return Task.classification
    raise DatasetError("text+label rows cannot be mixed with other formats in one dataset")


@dataclass
class Examples:
    """Tokenized rows. `labels[i]` is a per-token array for causal LM, a class index for classification."""

    task: Task
    input_ids: list[list[int]]
    labels: list[list[int]] | list[int]
    rows: int
    truncated: int = 0  # rows longer than the max length, cut to it
    truncated_tokens: int = 0  # the tokens those rows lost
    dropped: int = 0  # rows left with no token to learn from (after truncation, or no assistant turn)
    formats: dict[str, int] = field(default_factory=dict)
    # documents[i]: example i is a text document, cut into pieces rather than truncated
    documents: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def select(self, indices: Iterable[int]) -> Examples:
        indices = list(indices)
        return Examples(
            task=self.task,
            input_ids=[self.input_ids[i] for i in indices],
            labels=[self.labels[i] for i in indices],
            rows=len(indices),
            formats=self.formats,
            documents=[self.documents[i] for i in indices] if self.documents else [],
        )

    def to_dataset(self):
        from datasets import Dataset

        return Dataset.from_dict({"input_ids": self.input_ids, "labels": self.labels})


class Tokenization:
    """Turns rows into `Examples` with one tokenizer, max length and loss policy."""

    def __init__(self, tokenizer, *, max_length: int, train_on_prompt: bool = False, class_names: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.train_on_prompt = train_on_prompt
        self.class_names = list(class_names)
        self.chat_template = tokenizer.chat_template or CHATML_TEMPLATE
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Examples:
        canonical = [formats.to_canonical(row) for row in rows]
        counts = dict(Counter(item.format for item in canonical))
        if task_of(rows) == Task.classification:
            return self._classification([item.example for item in canonical], counts)
        sequences = []
        for number, item in enumerate(canonical, start=1):
            try:
                sequences.append(self._causal(item.example))
            except TemplateError as error:
                raise DatasetError(
                    f"row {number}: the model's chat template refuses this conversation ({error})"
                ) from None
        return self._truncated(sequences, counts, canonical)

    # -- causal LM ---------------------------------------------------------------------

    def _causal(self, example: Conversation | PlainText) -> tuple[list[int], list[bool]]:
        """Token ids and, per token, whether it carries loss."""
        if isinstance(example, PlainText):
            ids = self._encode(example.text, special=True) + self._eos()
            return ids, [True] * len(ids)
        if example.raw:
            prompt = self._encode(example.messages[0]["content"], special=True)
            completion = self._encode(example.messages[1]["content"], special=False) + self._eos()
            return prompt + completion, [self.train_on_prompt] * len(prompt) + [True] * len(completion)
        return self._conversation(example)

    def _conversation(self, conversation: Conversation) -> tuple[list[int], list[bool]]:
        text = self._render(conversation.messages, conversation.tools)
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        if self.train_on_prompt:
            return ids, [True] * len(ids)
        spans = self._assistant_spans(conversation, text)
        trainable = [
            any(end > start and begin < stop for start, stop in spans) for begin, end in encoded["offset_mapping"]
        ]
        return ids, trainable

    def _assistant_spans(self, conversation: Conversation, text: str) -> list[tuple[int, int]]:
        """Character spans of the trained assistant turns in `text` (all but those with
        OpenAI's `"weight": 0`), end-of-turn markers included.

        A turn's span runs from the end of the prompt rendered up to it (with the generation
        prompt) to the end of the conversation rendered through it. Templates that render
        earlier turns differently once later ones follow (Mistral moves the system prompt,
        Qwen3 drops old reasoning) break that prefix rule; for them the turn's content is
        found in the text instead, followed by the EOS token when the template writes one.
        """
        messages, tools = conversation.messages, conversation.tools
        spans, cursor = [], 0
        for index, (message, trainable) in enumerate(zip(messages, conversation.trainable)):
            if not trainable:
                continue
            prompt = self._render(messages[:index], tools, add_generation_prompt=True)
            through = self._render(messages[: index + 1], tools)
            if len(through) > len(prompt) >= cursor and text.startswith(through) and through.startswith(prompt):
                spans.append((len(prompt), len(through)))
                cursor = len(through)
                continue
            content = message["content"]
            begin = text.find(content, cursor) if content else -1
            if begin < 0:
                continue
            end = begin + len(content)
            eos = self.tokenizer.eos_token
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((begin, end))
            cursor = end
        return spans

    def _render(self, messages, tools, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def _encode(self, text: str, *, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _eos(self) -> list[int]:
        return [self.eos_token_id] if self.eos_token_id is not None else []

    def _truncated(
        self, sequences: list[tuple[list[int], list[bool]]], counts: dict[str, int], rows: Sequence[formats.Canonical]
    ) -> Examples:
        """Examples of the sequences: conversation-like ones cut to the max length, text documents whole."""
        out = Examples(task=Task.causal_lm, input_ids=[], labels=[], rows=len(sequences), formats=counts)
        for (ids, trainable), row in zip(sequences, rows):
            document = isinstance(row.example, PlainText)
            if len(ids) > self.max_length and not document:
                out.truncated += 1
                out.truncated_tokens += len(ids) - self.max_length
                ids, trainable = ids[: self.max_length], trainable[: self.max_length]
            # The first token is never predicted (nothing precedes it); masking it here also
            # keeps a packed example from being predicted from the one before it.
            labels = [IGNORE_INDEX] + [token if keep else IGNORE_INDEX for token, keep in zip(ids[1:], trainable[1:])]
            if all(label == IGNORE_INDEX for label in labels):
                out.dropped += 1
                continue
            out.input_ids.append(ids)
            out.labels.append(labels)
            out.documents.append(document)
        return out

    # -- classification ----------------------------------------------------------------

    def _classification(self, examples: list[Labeled], counts: dict[str, int]) -> Examples:
        index = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted({example.label for example in examples} - index.keys())
        if unknown:
            raise DatasetError(f"labels not seen in the training data: {', '.join(unknown[:10])}")
        out = Examples(task=Task.classification, input_ids=[], labels=[], rows=len(examples), formats=counts)
        for example in examples:
            ids = self._encode(example.text, special=True)
            if len(ids) > self.max_length:
                out.truncated += 1
                ids = ids[: self.max_length]
            out.input_ids.append(ids)
            out.labels.append(index[example.label])
        return out


def class_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The labels of text+label rows, sorted: index i of the classifier is class_names[i]."""
    return sorted({str(row["label"]) for row in rows})


def split_for_eval(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """A seeded random hold-out of `fraction` of the examples (at least one each side)."""
    if len(examples) < 2:
        raise DatasetError("an evaluation split needs at least two usable rows")
    order = np.random.default_rng(seed).permutation(len(examples))
    held_out = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    return examples.select(sorted(order[held_out:])), examples.select(sorted(order[:held_out]))


def _piece(labels: list[int], start: int, stop: int) -> list[int]:
    """The labels of tokens start..stop-1 of a document cut into pieces: a piece after the first
    starts a document of its own in its row, so its first token is not predicted either."""
    piece = labels[start:stop]
    return [IGNORE_INDEX, *piece[1:]] if start > 0 else piece


def split_documents(examples: Examples, max_length: int) -> Examples:
    """The examples with every text document longer than `max_length` cut into pieces of it
    (the batches without packing): no token is lost."""
    if not any(len(ids) > max_length for ids, document in zip(examples.input_ids, examples.documents) if document):
        return examples
    out = Examples(
        task=examples.task,
        input_ids=[],
        labels=[],
        rows=examples.rows,
        truncated=examples.truncated,
        truncated_tokens=examples.truncated_tokens,
        dropped=examples.dropped,
        formats=examples.formats,
    )
    for ids, labels, document in zip(examples.input_ids, examples.labels, examples.documents):
        starts = range(0, len(ids), max_length) if document else [0]
        for start in starts:
            stop = start + max_length if document else len(ids)
            out.input_ids.append(ids[start:stop])
            out.labels.append(_piece(labels, start, stop))
            out.documents.append(document)
    return out


def pack(examples: Examples, max_length: int):
    """The examples packed into rows of at most `max_length` tokens, each row with its `seq_lengths`.

    Text documents are laid end to end and cut into rows of exactly `max_length` tokens (a
    document may run over into the next row: its piece there is a document of its own). The
    other examples and the pieces of the last, unfilled row are packed best-fit-decreasing."""
    from datasets import Dataset

    rows: dict[str, list] = {"input_ids": [], "labels": [], "seq_lengths": []}
    loose: dict[str, list] = {"input_ids": [], "labels": []}
    row_ids: list[int] = []
    row_labels: list[int] = []
    row_lengths: list[int] = []
    documents = examples.documents or [False] * len(examples)
    for ids, labels, document in zip(examples.input_ids, examples.labels, documents):
        if not document:
            loose["input_ids"].append(ids)
            loose["labels"].append(labels)
            continue
        start = 0
        while start < len(ids):
            stop = min(len(ids), start + max_length - len(row_ids))
            row_ids += ids[start:stop]
            row_labels += _piece(labels, start, stop)
            row_lengths.append(stop - start)
            start = stop
            if len(row_ids) == max_length:
                rows["input_ids"].append(row_ids)
                rows["labels"].append(row_labels)
                rows["seq_lengths"].append(row_lengths)
                row_ids, row_labels, row_lengths = [], [], []
    offset = 0
    for length in row_lengths:  # the pieces of the unfilled last row join the best-fit packing
        loose["input_ids"].append(row_ids[offset : offset + length])
        loose["labels"].append(row_labels[offset : offset + length])
        offset += length
    if loose["input_ids"]:
        best_fit = _best_fit(Dataset.from_dict(loose), max_length).to_dict()
        for column in rows:
            rows[column] += best_fit[column]
    return Dataset.from_dict(rows)


def _best_fit(dataset, max_length: int):
    """Best-fit-decreasing packing into rows of at most `max_length` tokens, each with its `seq_lengths`."""
    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from trl.data_utils import pack_dataset

    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        return pack_dataset(dataset, max_length, strategy="bfd")
    finally:
        if not bars_were_off:
            enable_progress_bars()


@dataclass(frozen=True)
class Batching:
    """How a run batches its examples, and why."""

    packed: bool  # examples packed into rows of up to max length (else length-grouped, padded per batch)
    padding_free: bool  # each micro-batch flattened into one row, for a variable-length attention kernel
    reason: str

    def describe(self) -> str:
        if self.padding_free:
            how = "packed examples, each micro-batch one row without padding"
        elif self.packed:
            how = "packed rows with a block-diagonal attention mask"
        else:
            how = "length-grouped batches padded to their longest row"
        return f"{how} ({self.reason})"


def choose_batching(packing: Packing, *, task: Task, attention: str, varlen_attention: bool) -> Batching:
    """Packing or length-grouped batches, for the spec's `packing` and the attention kernel.

    Packed examples must never attend to each other. A variable-length kernel (flash-attention)
    keeps them apart from position ids alone, at no cost: there packing wins, since no token
    is padding. Any other kernel needs a dense block-diagonal mask, and then every packed row
    pays attention over its full length (and loses SDPA's fast paths) while length-grouped
    batches leave little padding: measured on CPU, grouped batches train about 3x faster than
    packed ones (bench/train_throughput.py). Text rows are no exception: without packing,
    documents are cut into pieces of the max length too, so grouping loses them no token.
    A classifier scores one text per row and never packs.
    """
    if task == Task.classification:
        return Batching(False, False, "a classifier scores one text per row")
    if packing == Packing.off:
        return Batching(False, False, "packing off")
    if packing == Packing.on:
        return Batching(True, varlen_attention, f"packing on, {attention} attention")
    if varlen_attention:
        return Batching(True, True, f"packing auto: {attention} keeps packed examples apart without a mask")
    return Batching(
        False,
        False,
        f"packing auto: {attention} attention would need a dense block-diagonal mask for packed rows, "
        "which costs more than the padding of length-grouped batches",
    )


@dataclass
class BatchCollator:
    """Pads a list of dataset rows into a batch, to the longest row (rounded up to a multiple of 8).

    Three kinds of rows: packed (with `seq_lengths`: position ids restart at 0 for each
    example and there is no attention mask, so transformers builds a block-diagonal causal
    mask); plain causal rows (an attention mask hides the padding); classification rows
    (a class index per row).

    Why not TRL's `DataCollatorForLanguageModeling`: with `padding_free` it flattens the whole
    micro-batch into one row, which only pays off with a varlen flash-attention kernel. With
    SDPA the mask and the attention grow with the square of all the batch's tokens: on this
    CPU one attention layer (4 heads of 64, forward and backward, 256-token documents) takes
    0.36 s for 8 rows of 1024 tokens and 1.38 s for the same tokens as one row of 8192.
    Without `padding_free` it adds an all-ones attention mask, and with a 2D mask transformers
    no longer derives the document mask from position ids: packed examples would attend to
    each other.

    With `padding_free` (only for a variable-length kernel such as flash-attention, which
    transformers switches to varlen for a single row whose position ids restart) the packed
    rows of a micro-batch are laid end to end into one row, as TRL's `padding_free` does.
    """

    pad_token_id: int
    pad_to_multiple_of: int = 8
    padding_free: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        if self.padding_free and "seq_lengths" in rows[0]:
            return self._flattened(rows)
        lengths = [len(row["input_ids"]) for row in rows]
        width = -(-max(lengths) // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : lengths[i]] = row["input_ids"]
        batch: dict[str, Any] = {"input_ids": torch.from_numpy(input_ids), REAL_TOKENS_KEY: sum(lengths)}

        if np.ndim(rows[0]["labels"]) == 0:
            batch["labels"] = torch.tensor([int(row["labels"]) for row in rows])
            batch["attention_mask"] = torch.from_numpy(np.arange(width)[None, :] < np.array(lengths)[:, None]).long()
            return batch

        labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
        for i, row in enumerate(rows):
            labels[i, : lengths[i]] = row["labels"]
        batch["labels"] = torch.from_numpy(labels)
        if "seq_lengths" in rows[0]:
            position_ids = np.empty((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                # The padding after the last example is one more "example" of its own.
                documents = [*row["seq_lengths"], width - lengths[i]]
                position_ids[i] = np.concatenate([np.arange(n) for n in documents])
            batch["position_ids"] = torch.from_numpy(position_ids)
        else:
            batch["attention_mask"] = torch.from_numpy(np.arange(width)[None, :] < np.array(lengths)[:, None]).long()
        return batch

    def _flattened(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        input_ids = np.concatenate([np.asarray(row["input_ids"], dtype=np.int64) for row in rows])
        labels = np.concatenate([np.asarray(row["labels"], dtype=np.int64) for row in rows])
        position_ids = np.concatenate([np.arange(n) for row in rows for n in row["seq_lengths"]])
        return {
            "input_ids": torch.from_numpy(input_ids)[None],
            "labels": torch.from_numpy(labels)[None],
            "position_ids": torch.from_numpy(position_ids)[None],
            REAL_TOKENS_KEY: len(input_ids),
        }
