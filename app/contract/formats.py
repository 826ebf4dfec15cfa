"""Dataset row formats: which keys make which format, and each row in one canonical shape.

Shared by the app (upload validation) and the training library (rendering rows into
token ids), so that both agree on what a row means. Pure Python, no ML imports.

Formats (detected per row from its keys, the first rule that matches wins):

========================  =====================================================
chat                      {"messages": [{"role": ..., "content": ...}], "tools"?}
sharegpt                  {"conversations": [{"from": ..., "value": ...}], "system"?, "tools"?}
prompt_completion         {"prompt": ..., "completion": ...}
instruction               {"instruction": ..., "input"?: ..., "output": ...}
classification            {"text": ..., "label": ...}
text                      {"text": ...}
preference_openai         {"input": {"messages": [...], "tools"?}, "preferred_output": [...], "non_preferred_output": [...]}
preference_sharegpt       {"conversations": [...], "chosen": {"from", "value"}, "rejected": {...}, "system"?, "tools"?}
preference                {"prompt": ..., "chosen": ..., "rejected": ...} (strings, or message lists), "tools"?
feedback                  {"prompt": ..., "completion": ..., "label": true | false} (KTO's unpaired form)
token_classification      {"tokens": [...], "tags": [...]} (or "ner_tags"; BIO tags as strings, or integers)
question_answering        {"question", "context", "answers": {"text": [...], "answer_start": [...]}} (SQuAD; or "answer")
seq2seq                   {"input": ..., "target": ...} (or "source" / "target"), for encoder-decoder models
========================  =====================================================

The last three train other heads than a language model's: token classification (NER, tagged
per word), extractive question answering (an answer span of the context; no answer at all is
allowed, as in SQuAD 2), and an encoder-decoder that writes the target for the input.

The last four are preference data (DPO, ORPO, KTO): a prompt, then a preferred and a rejected
answer, or one answer with a thumbs up or down. They are tried before the others, whose keys
they contain.

ShareGPT rows follow LLaMA-Factory for tool calling: "tools" (a list, or a JSON string of
one) holds the function definitions, a "function_call" turn holds a call as JSON
(`{"name": ..., "arguments": {...}}`, or a list of them) and an "observation" turn its
result. They become the chat form's `tools`, an assistant message with `tool_calls`, and a
`tool` message.

The conversions below assume a row that validation has accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

CHAT = "chat"
SHAREGPT = "sharegpt"
PROMPT_COMPLETION = "prompt_completion"
INSTRUCTION = "instruction"
CLASSIFICATION = "classification"
TEXT = "text"
PREFERENCE_OPENAI = "preference_openai"
PREFERENCE_SHAREGPT = "preference_sharegpt"
PREFERENCE = "preference"
FEEDBACK = "feedback"
TOKEN_CLASSIFICATION = "token_classification"
QUESTION_ANSWERING = "question_answering"
SEQ2SEQ = "seq2seq"

FORMATS = (
    CHAT,
    SHAREGPT,
    PROMPT_COMPLETION,
    INSTRUCTION,
    CLASSIFICATION,
    TEXT,
    PREFERENCE_OPENAI,
    PREFERENCE_SHAREGPT,
    PREFERENCE,
    FEEDBACK,
    TOKEN_CLASSIFICATION,
    QUESTION_ANSWERING,
    SEQ2SEQ,
)
# Formats trained as causal language modelling; classification trains a sequence classifier.
CAUSAL_LM_FORMATS = frozenset({CHAT, SHAREGPT, PROMPT_COMPLETION, INSTRUCTION, TEXT})
# Preference data: pairs of a preferred and a rejected answer (DPO, ORPO, KTO), or single
# answers with a label (KTO only).
PAIRED_FORMATS = frozenset({PREFERENCE_OPENAI, PREFERENCE_SHAREGPT, PREFERENCE})
PREFERENCE_FORMATS = PAIRED_FORMATS | {FEEDBACK}
# Formats that train a head of their own (a tagger, a span extractor, an encoder-decoder).
TASK_FORMATS = frozenset({TOKEN_CLASSIFICATION, QUESTION_ANSWERING, SEQ2SEQ})
# The metrics their evaluations log, "eval_" in front (per-type F1 of NER: "f1_" and the type):
# seqeval's entity-level scores, SQuAD's exact match and F1, ROUGE F-measures.
TASK_METRIC_NAMES = ("precision", "recall", "f1", "exact_match", "rouge1", "rouge2", "rougeL")
TASK_EVAL_PREFIXES = tuple(f"eval_{name}" for name in TASK_METRIC_NAMES)
# The formats each training objective (the spec's `objective`) learns from.
OBJECTIVE_FORMATS = {
    "sft": CAUSAL_LM_FORMATS | {CLASSIFICATION} | TASK_FORMATS,
    "dpo": PAIRED_FORMATS,
    "orpo": PAIRED_FORMATS,
    "kto": PREFERENCE_FORMATS,
}


def objective_misfit(objective: str, fmt: str | None) -> str | None:
    """Why a dataset of format `fmt` cannot train `objective`, or None when it can."""
    if fmt is None or fmt in OBJECTIVE_FORMATS[objective]:
        return None
    title = FORMAT_TITLES.get(fmt, fmt)
    if objective == "sft":
        return f"{title} is preference data: train it with dpo, orpo or kto"
    if fmt == FEEDBACK:
        return f"{objective} learns from pairs of a chosen and a rejected answer; {title} only trains kto"
    kinds = "preference pairs or feedback" if objective == "kto" else "preference pairs (chosen and rejected answers)"
    return f"{objective} learns from {kinds}, not {title}"


def architecture_misfit(fmt: str | None, model: str, architecture: str, encoder_decoder: bool) -> str | None:
    """Why a dataset of task format `fmt` cannot train the base model `model` (of `architecture`,
    an encoder-decoder or not), or None when it can: the rules the worker's `task_for` applies,
    asked at submission so that a misfit is refused there rather than failing on a worker."""
    if fmt not in TASK_FORMATS:
        return None
    causal = architecture.endswith(("ForCausalLM", "LMHeadModel"))
    kind = "an encoder-decoder" if encoder_decoder else "a causal language model" if causal else "an encoder"
    misfit = f"{FORMAT_TITLES[fmt]} data cannot train {model}, {kind} ({architecture})"
    if fmt in (TOKEN_CLASSIFICATION, QUESTION_ANSWERING) and (encoder_decoder or causal):
        return f"{misfit}: it puts a head on an encoder such as BERT, RoBERTa or MiniLM; choose one as the base model"
    if fmt == SEQ2SEQ and not encoder_decoder:
        return (
            f"{misfit}: input / target rows train an encoder-decoder such as T5 or BART; choose one as the base "
            "model, or write the rows as prompt / completion to train a causal language model"
        )
    return None


FORMAT_TITLES = {
    CHAT: "Chat messages",
    SHAREGPT: "ShareGPT conversations",
    PROMPT_COMPLETION: "Prompt / completion",
    INSTRUCTION: "Instruction (Alpaca)",
    CLASSIFICATION: "Text + label",
    TEXT: "Plain text",
    PREFERENCE_OPENAI: "Preference pairs (OpenAI)",
    PREFERENCE_SHAREGPT: "Preference pairs (ShareGPT)",
    PREFERENCE: "Preference pairs (prompt / chosen / rejected)",
    FEEDBACK: "Feedback (prompt / completion / label)",
    TOKEN_CLASSIFICATION: "Tagged tokens (NER)",
    QUESTION_ANSWERING: "Question answering (SQuAD)",
    SEQ2SEQ: "Input / target (seq2seq)",
}

CHAT_ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names seen in the wild, mapped to chat roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "observation": "tool",
    "tool": "tool",
}

# Keys that decide a format, in the order they are tried.
_FORMAT_KEYS: tuple[tuple[str, frozenset[str]], ...] = (
    (PREFERENCE_OPENAI, frozenset({"input", "preferred_output", "non_preferred_output"})),
    (PREFERENCE_SHAREGPT, frozenset({"conversations", "chosen", "rejected"})),
    (PREFERENCE, frozenset({"prompt", "chosen", "rejected"})),
    (FEEDBACK, frozenset({"prompt", "completion", "label"})),
    (CHAT, frozenset({"messages"})),
    (SHAREGPT, frozenset({"conversations"})),
    (PROMPT_COMPLETION, frozenset({"prompt", "completion"})),
    (INSTRUCTION, frozenset({"instruction", "output"})),
    (TOKEN_CLASSIFICATION, frozenset({"tokens", "tags"})),
    (QUESTION_ANSWERING, frozenset({"question", "context", "answers"})),
    (SEQ2SEQ, frozenset({"input", "target"})),
    (CLASSIFICATION, frozenset({"text", "label"})),
    (TEXT, frozenset({"text"})),
)


REQUIRED_KEYS: dict[str, frozenset[str]] = dict(_FORMAT_KEYS)
# Other names of the same keys, as other tools write them (Hugging Face's CoNLL "ner_tags", a
# flat "answer" string, "source" for the input): tried after the keys above.
_ALTERNATIVE_FORMAT_KEYS: tuple[tuple[str, frozenset[str]], ...] = (
    (TOKEN_CLASSIFICATION, frozenset({"tokens", "ner_tags"})),
    (QUESTION_ANSWERING, frozenset({"question", "context", "answer"})),
    (SEQ2SEQ, frozenset({"source", "target"})),
)
# Every set of keys that makes each format.
FORMAT_KEY_SETS: dict[str, tuple[frozenset[str], ...]] = {
    fmt: tuple(keys for name, keys in _FORMAT_KEYS + _ALTERNATIVE_FORMAT_KEYS if name == fmt) for fmt in REQUIRED_KEYS
}
# Row keys that `to_canonical` reads besides the required ones.
OPTIONAL_KEYS: dict[str, frozenset[str]] = {
    CHAT: frozenset({"tools"}),
    SHAREGPT: frozenset({"system", "tools"}),
    PROMPT_COMPLETION: frozenset(),
    INSTRUCTION: frozenset({"input", "system"}),
    CLASSIFICATION: frozenset(),
    TEXT: frozenset(),
    PREFERENCE_OPENAI: frozenset(),
    PREFERENCE_SHAREGPT: frozenset({"system", "tools"}),
    PREFERENCE: frozenset({"tools"}),
    FEEDBACK: frozenset({"tools"}),
    TOKEN_CLASSIFICATION: frozenset({"tokens", "ner_tags"}),
    QUESTION_ANSWERING: frozenset({"answer"}),
    SEQ2SEQ: frozenset({"source"}),
}
# Keys of a chat message that `to_canonical` reads. "weight" is OpenAI's per-assistant-message
# switch: 0 keeps the message as context but does not train on it.
CHAT_MESSAGE_KEYS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id", "weight"})


def detect_format(row: dict[str, Any]) -> str | None:
    """The format a row's keys say it is, or None when no format's keys are all present."""
    keys = row.keys()
    for name, needed in _FORMAT_KEYS:
        if needed <= keys:
            return name
    for name, needed in _ALTERNATIVE_FORMAT_KEYS:
        if needed <= keys:
            return name
    return None


@dataclass
class Conversation:
    """A row as chat turns. `trainable[i]` says whether turn i's tokens carry loss."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    # Raw concatenation (prompt + completion) instead of a chat template, as OpenAI's
    # legacy completion format and TRL's non-conversational prompt/completion do.
    raw: bool = False

    @property
    def trainable(self) -> list[bool]:
        return [m["role"] == "assistant" and m.get("weight", 1) != 0 for m in self.messages]


@dataclass
class PlainText:
    """Continued pre-training: loss on every token."""

    text: str


@dataclass
class Labeled:
    """Sequence classification."""

    text: str
    label: str


@dataclass
class Preference:
    """A prompt and answers to it, in the shape TRL's preference trainers take: chat messages
    (rendered with the chat template), or plain strings (`raw`, concatenated as they are).

    A pair has `chosen` and `rejected`; KTO's unpaired feedback has `chosen` only, with `label`
    True for a good answer and False for a bad one."""

    prompt: list[dict[str, Any]] | str
    chosen: list[dict[str, Any]] | str
    rejected: list[dict[str, Any]] | str | None = None
    label: bool | None = None
    tools: list[dict[str, Any]] | None = None

    @property
    def paired(self) -> bool:
        return self.rejected is not None

    def unpaired(self) -> list[Preference]:
        """A pair as two pieces of feedback (KTO learns from a pair this way), feedback as it is."""
        if not self.paired:
            return [self]
        return [
            Preference(self.prompt, self.chosen, label=True, tools=self.tools),
            Preference(self.prompt, self.rejected, label=False, tools=self.tools),
        ]

    def trl_row(self) -> dict[str, Any]:
        """TRL's row: {"prompt", "chosen", "rejected"} for a pair, {"prompt", "completion", "label"} else."""
        row: dict[str, Any] = {"prompt": self.prompt}
        if self.paired:
            row.update(chosen=self.chosen, rejected=self.rejected)
        else:
            row.update(completion=self.chosen, label=bool(self.label))
        if self.tools:
            row["tools"] = self.tools
        return row


@dataclass
class TaggedTokens:
    """Token classification: one tag per token (BIO strings, or integers written as strings)."""

    tokens: list[str]
    tags: list[str]


@dataclass
class Answered:
    """Extractive question answering: `answers` are (text, character start in the context);
    none for a question the context does not answer (SQuAD 2)."""

    question: str
    context: str
    answers: list[tuple[str, int]]


@dataclass
class SourceTarget:
    """Sequence to sequence: an encoder-decoder reads `source` and learns to write `target`."""

    source: str
    target: str


@dataclass
class Canonical:
    format: str
    example: Conversation | PlainText | Labeled | Preference | TaggedTokens | Answered | SourceTarget
    extra: dict[str, Any] = field(default_factory=dict)


def _content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts; keep the text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append(str(part.get("text", "")))
    return "".join(parts)


def _chat_message(message: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message["role"], "content": _content_text(message.get("content"))}
    if message.get("tool_calls"):
        out["tool_calls"] = message["tool_calls"]
    if message.get("tool_call_id"):
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("name"):
        out["name"] = message["name"]
    if message.get("weight") is not None:
        out["weight"] = message["weight"]
    return out


def sharegpt_tools(value: Any) -> list[dict[str, Any]]:
    """A ShareGPT row's "tools" as chat tools: a JSON string is decoded, and a bare function
    definition (`{"name": ..., "parameters": ...}`) is wrapped as `{"type": "function", "function": ...}`.
    Raises ValueError (json.JSONDecodeError) on a string that is not JSON."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list):
        return value  # validation names the problem
    return [
        {"type": "function", "function": tool} if isinstance(tool, dict) and "function" not in tool else tool
        for tool in value
    ]


def sharegpt_calls(value: str) -> list[dict[str, Any]]:
    """A "function_call" turn's value (`{"name": ..., "arguments": ...}` or a list of them, as
    JSON) as chat tool calls, with arguments as an object, the way chat templates render them.
    Raises ValueError (json.JSONDecodeError) on a value that is not JSON."""
    calls = json.loads(value)
    out = []
    for call in calls if isinstance(calls, list) else [calls]:
        arguments = call.get("arguments") or {}
        if isinstance(arguments, str):
            arguments = json.loads(arguments)
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def _sharegpt_messages(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The turns as chat messages; each observation answers the oldest call not answered yet."""
    messages: list[dict[str, Any]] = []
    unanswered: list[str] = []
    calls_made = 0
    for turn in turns:
        speaker = turn["from"].strip().lower()
        if speaker == "function_call":
            calls = sharegpt_calls(turn["value"])
            for call in calls:
                calls_made += 1
                call["id"] = f"call_{calls_made}"
                unanswered.append(call["id"])
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        message = {"role": SHAREGPT_ROLES[speaker], "content": str(turn["value"])}
        if message["role"] == "tool" and unanswered:
            message["tool_call_id"] = unanswered.pop(0)
        messages.append(message)
    return messages


def _as_messages(value: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    return [_chat_message(m) for m in value] if isinstance(value, list) else [{"role": "user", "content": value}]


def _preference(row: dict[str, Any], fmt: str) -> Preference:
    if fmt == PREFERENCE_OPENAI:
        return Preference(
            prompt=[_chat_message(m) for m in row["input"]["messages"]],
            chosen=[_chat_message(m) for m in row["preferred_output"]],
            rejected=[_chat_message(m) for m in row["non_preferred_output"]],
            tools=row["input"].get("tools") or None,
        )
    if fmt == PREFERENCE_SHAREGPT:
        prompt = _sharegpt_messages(row["conversations"])
        if row.get("system"):
            prompt.insert(0, {"role": "system", "content": str(row["system"])})
        chosen, rejected = (
            row[key]["value"] if isinstance(row[key], dict) else row[key] for key in ("chosen", "rejected")
        )
        return Preference(
            prompt=prompt,
            chosen=[{"role": "assistant", "content": chosen}],
            rejected=[{"role": "assistant", "content": rejected}],
            tools=sharegpt_tools(row.get("tools")) or None,
        )
    answers = (row["chosen"], row["rejected"]) if fmt == PREFERENCE else (row["completion"],)
    if all(isinstance(answer, str) for answer in answers):
        prompt: list[dict[str, Any]] | str = row["prompt"]
        sides: list[Any] = list(answers)
    else:
        # The turns before an answer's first assistant message continue the prompt (TRL's
        # conversational rows sometimes repeat the whole conversation in each answer).
        prompt = _as_messages(row["prompt"]) if row["prompt"] else []
        sides = [[_chat_message(m) for m in answer] for answer in answers]
        first = next(i for i, m in enumerate(sides[0]) if m["role"] == "assistant")
        prompt = prompt + sides[0][:first]
        sides = [side[first:] for side in sides]
    tools = row.get("tools") or None
    if fmt == PREFERENCE:
        return Preference(prompt=prompt, chosen=sides[0], rejected=sides[1], tools=tools)
    return Preference(prompt=prompt, chosen=sides[0], label=bool(row["label"]), tools=tools)


def row_tags(row: dict[str, Any]) -> list[Any]:
    """A token classification row's tags, under "tags" or Hugging Face's "ner_tags"."""
    return row["tags"] if "tags" in row else row["ner_tags"]


def bio_parts(tag: str) -> tuple[str, str] | None:
    """("B", "PER") for "B-PER", ("O", "") for "O"; None for a tag that is not BIO (IOB2)."""
    if tag == "O":
        return ("O", "")
    if len(tag) > 2 and tag[0] in "BI" and tag[1] == "-":
        return (tag[0], tag[2:])
    return None


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """The entities of a row's BIO tags as (type, first token, last token + 1): each "B-X"
    starts one, the "I-X" after it continue it (an "I-X" after anything else starts one too,
    as seqeval reads it)."""
    spans: list[tuple[str, int, int]] = []
    current: tuple[str, int] | None = None
    for index, tag in enumerate([*tags, "O"]):
        parts = bio_parts(tag) or ("O", "")
        if current is not None and (parts[0] != "I" or parts[1] != current[0]):
            spans.append((current[0], current[1], index))
            current = None
        if parts[0] == "B" or (parts[0] == "I" and current is None):
            current = (parts[1], index)
    return spans


def row_answers(row: dict[str, Any]) -> list[tuple[str, int]]:
    """A QA row's answers as (text, start): SQuAD's "answers", or a flat "answer" string placed at
    its first occurrence in the context (an empty one: no answer). Validation checked they are there."""
    if "answers" in row:
        answers = row["answers"]
        return list(zip(answers["text"], answers["answer_start"], strict=True))
    answer = row["answer"]
    return [(answer, row["context"].find(answer))] if answer else []


def source_target(row: dict[str, Any], fmt: str) -> SourceTarget:
    """The input and target an encoder-decoder trains on: seq2seq rows, and prompt / completion or
    instruction rows (the instruction and its input as the source)."""
    if fmt == SEQ2SEQ:
        return SourceTarget(str(row["input"] if "input" in row else row["source"]), str(row["target"]))
    if fmt == PROMPT_COMPLETION:
        return SourceTarget(str(row["prompt"]), str(row["completion"]))
    if fmt == INSTRUCTION:
        source = str(row["instruction"])
        if row.get("input"):
            source = f"{source}\n\n{row['input']}"
        return SourceTarget(source, str(row["output"]))
    raise ValueError(f"{fmt} rows have no input and target")


def to_canonical(row: dict[str, Any], fmt: str | None = None) -> Canonical:
    """One validated row in the canonical shape the training library renders."""
    fmt = fmt or detect_format(row)
    if fmt == CHAT:
        messages = [_chat_message(m) for m in row["messages"]]
        example = Conversation(messages=messages, tools=row.get("tools") or None)
    elif fmt == SHAREGPT:
        messages = _sharegpt_messages(row["conversations"])
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": str(row["system"])})
        example = Conversation(messages=messages, tools=sharegpt_tools(row.get("tools")) or None)
    elif fmt == PROMPT_COMPLETION:
        example = Conversation(
            messages=[
                {"role": "user", "content": str(row["prompt"])},
                {"role": "assistant", "content": str(row["completion"])},
            ],
            raw=True,
        )
    elif fmt == INSTRUCTION:
        prompt = str(row["instruction"])
        if row.get("input"):
            prompt = f"{prompt}\n\n{row['input']}"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(row["output"])}]
        if row.get("system"):
            messages.insert(0, {"role": "system", "content": str(row["system"])})
        example = Conversation(messages=messages)
    elif fmt == CLASSIFICATION:
        example = Labeled(text=str(row["text"]), label=str(row["label"]))
    elif fmt == TEXT:
        example = PlainText(text=str(row["text"]))
    elif fmt in PREFERENCE_FORMATS:
        example = _preference(row, fmt)
    elif fmt == TOKEN_CLASSIFICATION:
        example = TaggedTokens(tokens=[str(token) for token in row["tokens"]], tags=[str(tag) for tag in row_tags(row)])
    elif fmt == QUESTION_ANSWERING:
        example = Answered(question=str(row["question"]), context=str(row["context"]), answers=row_answers(row))
    elif fmt == SEQ2SEQ:
        example = source_target(row, fmt)
    else:
        raise ValueError(f"unknown dataset format: {fmt!r}")
    return Canonical(format=fmt, example=example)
