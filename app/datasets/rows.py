"""Checks of one parsed row against its format, in words a person can act on.

`check_row(row, fmt, problems)` appends what is wrong with a row whose keys made
`detect_format` choose `fmt`, and returns what the statistics need: the row's text length in
characters and the roles of its turns as `to_canonical` will produce them (None for the
formats that have no turns). `unknown_format_problems(row)` explains a row no format matches,
guessing the intended format through misspelled keys.

A row accepted here is one `to_canonical` converts without surprise: same keys, same types.
The checkers run once per row of files of millions of rows, so the common case (a valid row)
takes the fewest steps; the wording is built only when something is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from app.contract.formats import (
    CHAT,
    CHAT_MESSAGE_KEYS,
    CHAT_ROLES,
    CLASSIFICATION,
    FEEDBACK,
    FORMAT_KEY_SETS,
    FORMAT_TITLES,
    FORMATS,
    INSTRUCTION,
    OPTIONAL_KEYS,
    PREFERENCE,
    PREFERENCE_OPENAI,
    PREFERENCE_SHAREGPT,
    PROMPT_COMPLETION,
    QUESTION_ANSWERING,
    REQUIRED_KEYS,
    SEQ2SEQ,
    SHAREGPT,
    SHAREGPT_ROLES,
    TEXT,
    TOKEN_CLASSIFICATION,
    bio_parts,
    detect_format,
    sharegpt_tools,
)

from .hints import closest, describe, did_you_mean, quoted, shown

# (text characters, roles of the canonical turns or None)
RowMeasure = tuple[int, Sequence[str] | None]
Problems = list[str]

_CHAT_ROLE_SET = frozenset(CHAT_ROLES)
_SHAREGPT_SPEAKERS = frozenset(SHAREGPT_ROLES)
_ALL_ROW_KEYS = frozenset().union(*REQUIRED_KEYS.values(), *OPTIONAL_KEYS.values())
# Keys other tools use for the same thing (Dolly: instruction / context / response).
_KEY_ALIASES = {"response": "output", "context": "input"}
_USER_ASSISTANT = ("user", "assistant")
_SYSTEM_USER_ASSISTANT = ("system", "user", "assistant")
_NOTHING: RowMeasure = (0, None)
_CALL_KEYS = frozenset({"name", "arguments"})
_PART_KEYS = frozenset({"type", "text"})
_TURN_KEYS = frozenset({"from", "value"})

_EXPECTED_KEYS = (
    'a row needs "messages" (chat), "conversations" (ShareGPT), "prompt" and "completion", '
    '"instruction" and "output" (Alpaca), "text" (with "label" for classification), a preference pair: '
    '"prompt", "chosen" and "rejected", "tokens" and "tags" (NER), "question", "context" and "answers" (SQuAD), '
    'or "input" and "target" (seq2seq)'
)


def _emptiness(text: str) -> str:
    return "only whitespace" if text else "empty"


def _string_field(row: dict[str, Any], key: str, problems: Problems, *, required: bool = True) -> int:
    """Length of the string `row[key]`; a problem when it is not a string, or empty and `required`."""
    value = row[key]
    if type(value) is str:
        if required and (not value or value.isspace()):
            problems.append(f'"{key}" is {_emptiness(value)}')
        return len(value)
    problems.append(f'"{key}" must be a string, not {describe(value)}')
    return 0


def _optional_string_field(row: dict[str, Any], key: str, problems: Problems) -> int:
    """Length of an optional string field; absent or null is fine (to_canonical skips it)."""
    value = row.get(key)
    if value is None:
        return 0
    return _string_field(row, key, problems, required=False)


# -- chat ------------------------------------------------------------------------------------


def _content_length(where: str, content: Any, problems: Problems) -> int:
    """Characters of a message's content that is not a plain string: a list of text parts."""
    if type(content) is not list:
        problems.append(f'{where}: "content" must be a string or a list of text parts, not {describe(content)}')
        return 0
    problems_before = len(problems)
    length = 0
    for number, part in enumerate(content, 1):
        if type(part) is not dict:
            problems.append(f'{where}: content part {number} must be an object like {{"type": "text", "text": "..."}}')
        elif part.get("type") != "text" and ("type" in part or "text" not in part):
            if "type" in part:
                problems.append(
                    f'{where}: content part {number} has type "{shown(part["type"])}"; only "text" parts can be trained on'
                )
            else:
                problems.append(f'{where}: content part {number} has no "type"{_text_part_hint(part)}')
        elif "text" not in part:
            problems.append(f'{where}: content part {number} has no "text"{_text_part_hint(part)}')
        elif type(part["text"]) is not str:
            problems.append(f'{where}: content part {number} needs "text" as a string, not {describe(part["text"])}')
        elif "type" not in part:
            problems.append(
                f'{where}: content part {number} has no "type" (a text part is {{"type": "text", "text": ...}})'
            )
        else:
            length += len(part["text"])
    if length == 0 and len(problems) == problems_before:
        problems.append(f'{where}: "content" is empty')
    return length


def _text_elsewhere(mapping: dict[str, Any], key: str, skip: frozenset[str]) -> str:
    """' (found "value": did you mean "text"?)' when `mapping` lacks `key` but keeps a string
    under another key (not one of `skip`): the text under the name another tool uses for it."""
    if key not in mapping:
        for other, value in mapping.items():
            if other not in skip and type(value) is str:
                return f' (found "{shown(other)}": did you mean "{key}"?)'
    return ""


def _text_part_hint(part: dict[str, Any]) -> str:
    """Where a text part keeps its text when not under "text" (ShareGPT's "value"...), or its shape."""
    return _text_elsewhere(part, "text", _PART_KEYS) or ' (a text part is {"type": "text", "text": ...})'


def _tool_calls_length(where: str, tool_calls: Any, call_ids: set[str], problems: Problems) -> int:
    """Checks an assistant's tool calls (OpenAI's shape); returns the characters of names and arguments."""
    if type(tool_calls) is not list:
        problems.append(f'{where}: "tool_calls" must be a list, not {describe(tool_calls)}')
        return 0
    if not tool_calls:
        problems.append(f'{where}: "tool_calls" is an empty list')
        return 0
    length = 0
    for number, call in enumerate(tool_calls, 1):
        call_where = f"{where}: tool call {number}"
        if type(call) is not dict:
            problems.append(f'{call_where} must be an object like {{"id": ..., "type": "function", "function": ...}}')
            continue
        if type(call.get("id")) is not str or not call["id"]:
            problems.append(f'{call_where} needs an "id" (a string that the tool message answering it repeats)')
        else:
            call_ids.add(call["id"])
        if call.get("type", "function") != "function":
            problems.append(f'{call_where} has type "{shown(call["type"])}"; the only type is "function"')
        function = call.get("function")
        if type(function) is not dict:
            problems.append(
                f'{call_where} needs "function": {{"name": ..., "arguments": ...}}, not {describe(function)}'
            )
            continue
        name = function.get("name")
        if type(name) is not str or not name:
            problems.append(f'{call_where} needs a function "name"')
        else:
            length += len(name)
        arguments = function.get("arguments")
        if type(arguments) is str:
            length += len(arguments)
            try:
                orjson.loads(arguments)
            except orjson.JSONDecodeError:
                problems.append(f'{call_where}: "arguments" is not valid JSON')
        elif type(arguments) is not dict:
            problems.append(
                f'{call_where}: "arguments" must be a JSON string (or an object), not {describe(arguments)}'
            )
    return length


def _check_tools(tools: Any, problems: Problems) -> None:
    if tools is None:
        return
    if type(tools) is not list:
        problems.append(f'"tools" must be a list of tools, not {describe(tools)}')
        return
    for number, tool in enumerate(tools, 1):
        function = tool.get("function") if type(tool) is dict else None
        if type(function) is not dict:
            problems.append(f'tool {number} must be an object like {{"type": "function", "function": {{"name": ...}}}}')
            continue
        if tool.get("type", "function") != "function":
            problems.append(f'tool {number} has type "{shown(tool["type"])}"; the only type is "function"')
        if type(function.get("name")) is not str or not function["name"]:
            problems.append(f'tool {number} needs a function "name"')
        if "parameters" in function and type(function["parameters"]) is not dict:
            problems.append(f'tool {number}: "parameters" must be an object (a JSON schema)')


def _role_problem(where: str, message: dict[str, Any]) -> str:
    allowed = f"roles are {quoted(CHAT_ROLES)}"
    if "role" not in message:
        return f'{where} has no "role"' + _typo_of(message, "role", CHAT_MESSAGE_KEYS)
    role = message["role"]
    if type(role) is not str:
        return f'{where}: "role" must be a string, not {describe(role)}; {allowed}'
    return f'{where} has the unknown role "{shown(role)}"{did_you_mean(role, _CHAT_ROLE_SET)}; {allowed}'


def _typo_of(mapping: dict[str, Any], key: str, vocabulary: frozenset[str]) -> str:
    """' (found "x": did you mean "key"?)' when one of the mapping's keys is a typo of `key`."""
    for candidate in mapping:
        if closest(candidate, vocabulary) == key:
            return f' (found "{shown(candidate)}": did you mean "{key}"?)'
    return ""


def _check_message_details(
    where: str, role: str, message: dict[str, Any], call_ids: set[str], problems: Problems
) -> int:
    """Everything of a message beyond role and content: tools, weight, name, misspelled keys."""
    length = 0
    for key in message:
        if key not in CHAT_MESSAGE_KEYS:
            suggestion = closest(key, CHAT_MESSAGE_KEYS)
            if suggestion:
                problems.append(f'{where} has the unknown key "{shown(key)}" (did you mean "{suggestion}"?)')
    if message.get("tool_calls") is not None:
        if role == "assistant":
            length += _tool_calls_length(where, message["tool_calls"], call_ids, problems)
        else:
            problems.append(f'{where} has "tool_calls", but only assistant messages call tools')
    if role == "tool":
        call_id = message.get("tool_call_id")
        if call_id is None:
            problems.append(f'{where} has no "tool_call_id": a tool message names the tool call it answers')
        elif type(call_id) is not str:
            problems.append(f'{where}: "tool_call_id" must be a string, not {describe(call_id)}')
        elif call_id not in call_ids:
            problems.append(
                f'{where}: "tool_call_id" "{shown(call_id)}" does not match a tool call of an earlier message'
            )
    if "weight" in message:
        weight = message["weight"]
        if role != "assistant":
            problems.append(f'{where} has "weight", but only assistant messages have one')
        elif type(weight) is not int or weight not in (0, 1):
            problems.append(f'{where}: "weight" must be 0 or 1, not {describe(weight)}')
    if "name" in message and type(message["name"]) is not str:
        problems.append(f'{where}: "name" must be a string, not {describe(message["name"])}')
    return length


def _check_messages(
    messages: Any,
    problems: Problems,
    *,
    key: str = "messages",
    label: str = "message",
    call_ids: set[str] | None = None,
) -> tuple[int, list[str]] | None:
    """Checks the chat messages under `key`, each named `label N` in the problems; returns their
    characters and roles, or None when `messages` is not a non-empty list. `call_ids` collects
    the ids of the tool calls seen, for tool messages further on (a pair's answers continue its prompt)."""
    if type(messages) is not list:
        problems.append(f'"{key}" must be a list of messages, not {describe(messages)}')
        return None
    if not messages:
        problems.append(f'"{key}" is an empty list')
        return None
    length = 0
    roles: list[str] = []
    call_ids = set() if call_ids is None else call_ids
    for number, message in enumerate(messages, 1):
        where = f"{label} {number}"
        if type(message) is not dict:
            problems.append(f'{where} is {describe(message)}, not an object like {{"role": "user", "content": "..."}}')
            continue
        role = message.get("role")
        if type(role) is not str or role not in _CHAT_ROLE_SET:
            problems.append(_role_problem(where, message))
            continue
        roles.append(role)
        content = message.get("content")
        if type(content) is str and content and not content.isspace():
            length += len(content)
        elif role == "assistant" and (content is None or content == "") and message.get("tool_calls"):
            pass  # OpenAI: an assistant turn that only calls tools has null or empty content
        elif content is None and "content" not in message:
            problems.append(f'{where} ({role}) has no "content"' + _typo_of(message, "content", CHAT_MESSAGE_KEYS))
        elif type(content) is str:
            problems.append(f'{where} ({role}): "content" is {_emptiness(content)}')
        else:
            length += _content_length(f"{where} ({role})", content, problems)
        if len(message) > 2 or role == "tool":
            length += _check_message_details(f"{where} ({role})", role, message, call_ids, problems)
    return length, roles


def _check_chat(row: dict[str, Any], problems: Problems) -> RowMeasure:
    checked = _check_messages(row["messages"], problems)
    if checked is None:
        return _NOTHING
    length, roles = checked
    if len(roles) == len(row["messages"]) and "assistant" not in roles:
        problems.append("no assistant message: the model learns from the assistant's replies, so a chat needs one")
    if "tools" in row:
        _check_tools(row["tools"], problems)
    return length, roles


# -- ShareGPT --------------------------------------------------------------------------------


def _speaker_problem(where: str, turn: dict[str, Any]) -> str:
    allowed = f"speakers are {quoted(SHAREGPT_ROLES)}"
    if "from" not in turn:
        if "role" in turn:
            return f'{where} has no "from" (it has "role", a chat message key: ShareGPT turns use "from" and "value")'
        return f'{where} has no "from"' + _typo_of(turn, "from", frozenset({"from", "value"}))
    speaker = turn["from"]
    if type(speaker) is not str:
        return f'{where}: "from" must be a string, not {describe(speaker)}; {allowed}'
    return f'{where} has the unknown speaker "{shown(speaker)}"{did_you_mean(speaker.strip(), _SHAREGPT_SPEAKERS)}; {allowed}'


def _check_sharegpt(row: dict[str, Any], problems: Problems, *, needs_reply: bool = True) -> RowMeasure:
    turns = row["conversations"]
    if type(turns) is not list:
        problems.append(f'"conversations" must be a list of turns, not {describe(turns)}')
        return _NOTHING
    if not turns:
        problems.append('"conversations" is an empty list')
        return _NOTHING
    length = _optional_string_field(row, "system", problems)
    roles: list[str] = ["system"] if row.get("system") else []
    for number, turn in enumerate(turns, 1):
        if type(turn) is not dict:
            problems.append(
                f'turn {number} is {describe(turn)}, not an object like {{"from": "human", "value": "..."}}'
            )
            continue
        speaker = turn.get("from")
        role = SHAREGPT_ROLES.get(speaker.strip().lower()) if type(speaker) is str else None
        if role is None:
            problems.append(_speaker_problem(f"turn {number}", turn))
            continue
        roles.append(role)
        value = turn.get("value")
        if type(value) is str and value and not value.isspace():
            length += len(value)
            if role == "assistant" and speaker.strip().lower() == "function_call":
                _check_function_call(f"turn {number} ({shown(speaker)})", value, problems)
        elif "value" not in turn:
            problems.append(
                f'turn {number} ({shown(speaker)}) has no "value"'
                + (_typo_of(turn, "value", _TURN_KEYS) or _text_elsewhere(turn, "value", _TURN_KEYS))
            )
        elif type(value) is str:
            problems.append(f'turn {number} ({shown(speaker)}): "value" is {_emptiness(value)}')
        else:
            problems.append(f'turn {number} ({shown(speaker)}): "value" must be a string, not {describe(value)}')
    if needs_reply and len(roles) == len(turns) + bool(row.get("system")) and "assistant" not in roles:
        problems.append('no "gpt" turn: the model learns from the gpt replies, so a conversation needs one')
    if row.get("tools") not in (None, ""):
        try:
            tools = sharegpt_tools(row["tools"])
        except ValueError:
            problems.append('"tools" is a string but not JSON: it must be a list of functions, or a JSON string of one')
        else:
            _check_tools(tools, problems)
    return length, roles


_FUNCTION_CALL_SHAPE = '{"name": ..., "arguments": {...}}'


def _check_function_call(where: str, value: str, problems: Problems) -> None:
    """A ShareGPT function_call turn's value: one call or a list of them, as JSON."""
    try:
        calls = orjson.loads(value)
    except orjson.JSONDecodeError:
        problems.append(f'{where}: "value" must be a function call as JSON, like {_FUNCTION_CALL_SHAPE}')
        return
    for call in calls if type(calls) is list else [calls]:
        if type(call) is not dict:
            problems.append(f"{where}: a function call must be an object like {_FUNCTION_CALL_SHAPE}")
        elif type(call.get("name")) is not str or not call["name"]:
            problems.append(f'{where}: a function call needs a "name"{_typo_of(call, "name", _CALL_KEYS)}')
        elif type(call.get("arguments")) is str:
            try:
                arguments = orjson.loads(call["arguments"])
            except orjson.JSONDecodeError:
                arguments = None
            if type(arguments) is not dict:
                problems.append(f'{where}: "arguments" must be an object (or a JSON string of one)')
        elif call.get("arguments") is not None and type(call["arguments"]) is not dict:
            problems.append(f'{where}: "arguments" must be an object, not {describe(call["arguments"])}')


# -- the flat formats ------------------------------------------------------------------------


def _check_prompt_completion(row: dict[str, Any], problems: Problems) -> RowMeasure:
    # An empty prompt is legitimate (unconditional generation); an empty completion teaches nothing.
    length = _string_field(row, "prompt", problems, required=False) + _string_field(row, "completion", problems)
    return length, _USER_ASSISTANT


def _check_instruction(row: dict[str, Any], problems: Problems) -> RowMeasure:
    length = (
        _string_field(row, "instruction", problems)
        + _optional_string_field(row, "input", problems)
        + _string_field(row, "output", problems)
        + _optional_string_field(row, "system", problems)
    )
    return length, (_SYSTEM_USER_ASSISTANT if row.get("system") else _USER_ASSISTANT)


MAX_LABEL_CHARS = 100  # labels are class names: every dataset listing carries up to 1000 of them


def _check_classification(row: dict[str, Any], problems: Problems) -> RowMeasure:
    label = row["label"]
    if type(label) is str:
        if not label or label.isspace():
            problems.append(f'"label" is {_emptiness(label)}')
        elif len(label) > MAX_LABEL_CHARS:
            problems.append(
                f'"label" is {len(label)} characters long; a label names a class in at most {MAX_LABEL_CHARS}'
            )
    elif type(label) is not int:
        problems.append(f'"label" must be a string or an integer, not {describe(label)}')
    return _string_field(row, "text", problems), None


def _check_text(row: dict[str, Any], problems: Problems) -> RowMeasure:
    return _string_field(row, "text", problems), None


# -- preference data -------------------------------------------------------------------------

_PROMPT_ENDS = ("user", "tool")
_SAME_ANSWERS = "{} and {} are the same: a pair teaches a preference only when its two answers differ"


def _prompt_end_problem(roles: list[str], what: str) -> str | None:
    """A problem when the prompt's last turn is not the user's (or a tool's result): the answers
    of a pair reply to it, so an assistant or system turn there leaves nothing to reply to."""
    if roles and roles[-1] not in _PROMPT_ENDS:
        return f"the last turn of {what} is {roles[-1]}, not a user turn: the answers must reply to a user message"
    return None


def _check_answer_messages(
    messages: Any, key: str, problems: Problems, call_ids: set[str], *, only_assistant: bool = False
) -> tuple[int, list[str]] | None:
    """One side of a pair as chat messages: a non-empty list of assistant (and tool) messages;
    with `only_assistant` (OpenAI's outputs), of assistant messages alone."""
    checked = _check_messages(messages, problems, key=key, label=f'"{key}" message', call_ids=set(call_ids))
    if checked is not None and only_assistant:
        for number, role in enumerate(checked[1], 1):
            if role != "assistant":
                problems.append(f'"{key}" message {number} is a {role} message; the outputs hold assistant messages')
    elif checked is not None and "assistant" not in checked[1]:
        problems.append(f'"{key}" has no assistant message: it is the answer the model is taught to prefer or avoid')
    return checked


def _check_preference_openai(row: dict[str, Any], problems: Problems) -> RowMeasure:
    prompt = row["input"]
    if type(prompt) is not dict or "messages" not in prompt:
        problems.append(f'"input" must be an object like {{"messages": [...]}}, not {describe(prompt)}')
        return _NOTHING
    problems_before = len(problems)
    call_ids: set[str] = set()
    checked = _check_messages(
        prompt["messages"], problems, key="input.messages", label='"input" message', call_ids=call_ids
    )
    if "tools" in prompt:
        _check_tools(prompt["tools"], problems)
    length, roles = checked or (0, [])
    problem = _prompt_end_problem(roles, '"input"') if checked else None
    if problem:
        problems.append(problem)
    for key in ("preferred_output", "non_preferred_output"):
        side = _check_answer_messages(row[key], key, problems, call_ids, only_assistant=True)
        length += side[0] if side else 0
    if len(problems) == problems_before and row["preferred_output"] == row["non_preferred_output"]:
        problems.append(_SAME_ANSWERS.format('"preferred_output"', '"non_preferred_output"'))
    return length, [*roles, "assistant"]


def _sharegpt_answer(row: dict[str, Any], key: str, problems: Problems) -> str | None:
    """A ShareGPT pair's side: {"from": "gpt", "value": "..."} (LLaMA-Factory), or the text alone."""
    side = row[key]
    if type(side) is dict:
        speaker = side.get("from", "gpt")
        if type(speaker) is not str or SHAREGPT_ROLES.get(speaker.strip().lower()) != "assistant":
            problems.append(f'"{key}" must be a reply of "gpt", not of "{shown(speaker)}"')
            return None
        side = side.get("value")
        key = f"{key}.value"
    if type(side) is not str:
        problems.append(f'"{key}" must be a string (or {{"from": "gpt", "value": "..."}}), not {describe(side)}')
        return None
    if not side or side.isspace():
        problems.append(f'"{key}" is {_emptiness(side)}')
        return None
    return side


def _check_preference_sharegpt(row: dict[str, Any], problems: Problems) -> RowMeasure:
    problems_before = len(problems)
    length, roles = _check_sharegpt(row, problems, needs_reply=False)
    if roles is not None and len(problems) == problems_before:
        last = row["conversations"][-1]["from"].strip().lower()
        if SHAREGPT_ROLES[last] not in _PROMPT_ENDS:
            problems.append(
                f'the last turn of "conversations" is "{shown(last)}", not a human turn: the answers must reply to it'
            )
    chosen = _sharegpt_answer(row, "chosen", problems)
    rejected = _sharegpt_answer(row, "rejected", problems)
    if chosen is not None and rejected is not None:
        length += len(chosen) + len(rejected)
        if chosen.strip() == rejected.strip():
            problems.append(_SAME_ANSWERS.format('"chosen"', '"rejected"'))
    return length, [*(roles or ()), "assistant"]


def _leading_turns(messages: list[Any]) -> list[Any]:
    """The turns of an answer before its first assistant message: the end of the prompt, written into it."""
    for index, message in enumerate(messages):
        if type(message) is dict and message.get("role") == "assistant":
            return messages[:index]
    return messages


def _check_prompt(row: dict[str, Any], problems: Problems, call_ids: set[str]) -> tuple[int, list[str]] | None:
    """A TRL row's "prompt": a string (possibly empty) or chat messages; None when it is not usable."""
    prompt = row["prompt"]
    if type(prompt) is str:
        return len(prompt), ["user"]
    if type(prompt) is list:
        return _check_messages(prompt, problems, key="prompt", label='"prompt" message', call_ids=call_ids)
    problems.append(f'"prompt" must be a string or a list of messages, not {describe(prompt)}')
    return None


def _check_preference(row: dict[str, Any], problems: Problems) -> RowMeasure:
    problems_before = len(problems)
    call_ids: set[str] = set()
    prompt = _check_prompt(row, problems, call_ids)
    chosen, rejected = row["chosen"], row["rejected"]
    length, roles = prompt or (0, [])
    if type(chosen) is str and type(rejected) is str:
        if type(row["prompt"]) is list:
            problems.append('"prompt" is a list of messages, so "chosen" and "rejected" must be message lists too')
        for key in ("chosen", "rejected"):
            length += _string_field(row, key, problems)
        if len(problems) == problems_before and chosen.strip() == rejected.strip():
            problems.append(_SAME_ANSWERS.format('"chosen"', '"rejected"'))
        return length, [*roles, "assistant"]
    if type(chosen) is not list or type(rejected) is not list:
        problems.append(
            f'"chosen" and "rejected" must both be strings or both lists of messages, not {describe(chosen)} '
            f"and {describe(rejected)}"
        )
        return _NOTHING
    sides = [
        _check_answer_messages(side, key, problems, call_ids)
        for key, side in (("chosen", chosen), ("rejected", rejected))
    ]
    if len(problems) > problems_before or prompt is None:
        return _NOTHING
    length += sides[0][0] + sides[1][0]
    leading = _leading_turns(chosen)
    if leading != _leading_turns(rejected):
        problems.append(
            '"chosen" and "rejected" do not answer the same prompt: their turns before the first assistant '
            "message differ"
        )
        return _NOTHING
    full_prompt_roles = (roles if type(row["prompt"]) is list else ["user"] if row["prompt"] else []) + [
        message["role"] for message in leading
    ]
    problem = _prompt_end_problem(full_prompt_roles, "the prompt")
    if problem:
        problems.append(problem)
    elif not full_prompt_roles:
        problems.append('"prompt" is empty: the answers must reply to a user message')
    elif chosen == rejected:
        problems.append(_SAME_ANSWERS.format('"chosen"', '"rejected"'))
    return length, [*full_prompt_roles, "assistant"]


def _check_feedback(row: dict[str, Any], problems: Problems) -> RowMeasure:
    label = row["label"]
    if type(label) is not bool:
        problems.append(f'"label" must be true (a good answer) or false (a bad one), not {describe(label)}')
    call_ids: set[str] = set()
    prompt = _check_prompt(row, problems, call_ids)
    length, roles = prompt or (0, [])
    completion = row["completion"]
    if type(completion) is list:
        side = _check_answer_messages(completion, "completion", problems, call_ids)
        length += side[0] if side else 0
        if type(row["prompt"]) is list and prompt is not None:
            problem = _prompt_end_problem(roles, '"prompt"')
            if problem:
                problems.append(problem)
    else:
        if type(row["prompt"]) is list:
            problems.append('"prompt" is a list of messages, so "completion" must be a message list too')
        length += _string_field(row, "completion", problems)
    return length, [*roles, "assistant"]


# -- token classification, question answering, seq2seq -------------------------------------


def _check_tokens(tokens: Any, problems: Problems) -> int:
    """Characters of a row's "tokens", a non-empty list of words (each non-empty: a word that
    the tokenizer turns into nothing would lose its tag)."""
    if type(tokens) is not list:
        problems.append(f'"tokens" must be a list of words, not {describe(tokens)}')
        return 0
    if not tokens:
        problems.append('"tokens" is an empty list')
        return 0
    length = 0
    for number, token in enumerate(tokens, 1):
        if type(token) is not str:
            problems.append(f"token {number} must be a string, not {describe(token)}")
            return length
        if not token or token.isspace():
            problems.append(f"token {number} is {_emptiness(token)}: every token is a word that carries a tag")
            return length
        length += len(token) + 1
    return length


def _check_bio(key: str, tags: list[str], problems: Problems) -> None:
    """BIO (IOB2) tags: "O", "B-TYPE" or "I-TYPE", and an "I-TYPE" only after a "B-TYPE" or "I-TYPE"."""
    previous = ("O", "")
    for number, tag in enumerate(tags, 1):
        parts = bio_parts(tag)
        if parts is None:
            problems.append(
                f'{key} {number} "{shown(tag)}" is not a BIO tag: tags are "O", "B-TYPE" (an entity\'s first token) '
                'or "I-TYPE" (the tokens after it)'
            )
            return
        if parts[0] == "I" and (previous[0] == "O" or previous[1] != parts[1]):
            after = "starts the row" if number == 1 else f'follows "{shown(tags[number - 2])}"'
            problems.append(
                f'{key} {number} "{shown(tag)}" {after}: an entity starts with "B-{shown(parts[1])}" (IOB2), '
                f'and "I-{shown(parts[1])}" only continues one'
            )
            return
        previous = parts


def _check_token_classification(row: dict[str, Any], problems: Problems) -> RowMeasure:
    length = _check_tokens(row["tokens"], problems)
    key = "tags" if "tags" in row else "ner_tags"
    tags = row[key]
    if type(tags) is not list:
        problems.append(f'"{key}" must be a list of tags, one per token, not {describe(tags)}')
        return length, None
    tokens = row["tokens"]
    if type(tokens) is list and tokens and len(tags) != len(tokens):
        problems.append(f'"{key}" has {len(tags)} tags for {len(tokens)} tokens: every token needs one tag')
        return length, None
    kinds = {type(tag) for tag in tags}
    if kinds == {str}:
        _check_bio(key[:-1].replace("_", " "), tags, problems)
    elif kinds == {int}:
        if min(tags) < 0:
            problems.append(f'"{key}" holds a negative number: integer tags are the indices of the tag names, from 0')
    elif tags:
        problems.append(f'"{key}" must be all strings ("B-PER", "O"...) or all integers, not a mix or other values')
    return length, None


def _check_question_answering(row: dict[str, Any], problems: Problems) -> RowMeasure:
    length = _string_field(row, "question", problems) + _string_field(row, "context", problems)
    context = row["context"]
    if type(context) is not str:
        return length, None
    if "answers" not in row:
        answer = row["answer"]
        if type(answer) is not str:
            problems.append(
                f'"answer" must be a string (empty when the context holds no answer), not {describe(answer)}'
            )
        elif answer and answer not in context:
            problems.append(f'"answer" "{shown(answer)}" does not occur in the context: it must be a span of it')
        return length, None
    answers = row["answers"]
    if type(answers) is not dict or not {"text", "answer_start"} <= answers.keys():
        problems.append(
            f'"answers" must be an object like {{"text": [...], "answer_start": [...]}}, not {describe(answers)}'
        )
        return length, None
    texts, starts = answers["text"], answers["answer_start"]
    if type(texts) is not list or type(starts) is not list or len(texts) != len(starts):
        problems.append('"answers" needs "text" and "answer_start" as lists of the same length (both empty: no answer)')
        return length, None
    for number, (text, start) in enumerate(zip(texts, starts), 1):
        if type(text) is not str or not text.strip():
            problems.append(f"answer {number}: the text must be a non-empty string, not {describe(text)}")
        elif type(start) is not int or start < 0:
            problems.append(
                f'answer {number}: "answer_start" must be a character position (0 or more), not {describe(start)}'
            )
        elif context[start : start + len(text)] != text:
            found = context.find(text)
            where = f"it occurs at {found}" if found >= 0 else "it does not occur in the context at all"
            problems.append(
                f'answer {number} "{shown(text)}" is not at character {start} of the context ({where}); '
                '"answer_start" counts characters from 0'
            )
    return length, None


def _check_seq2seq(row: dict[str, Any], problems: Problems) -> RowMeasure:
    source = "input" if "input" in row else "source"
    return _string_field(row, source, problems) + _string_field(row, "target", problems), None


_CHECKERS: dict[str, Callable[[dict[str, Any], Problems], RowMeasure]] = {
    CHAT: _check_chat,
    SHAREGPT: _check_sharegpt,
    PROMPT_COMPLETION: _check_prompt_completion,
    INSTRUCTION: _check_instruction,
    CLASSIFICATION: _check_classification,
    TEXT: _check_text,
    PREFERENCE_OPENAI: _check_preference_openai,
    PREFERENCE_SHAREGPT: _check_preference_sharegpt,
    PREFERENCE: _check_preference,
    FEEDBACK: _check_feedback,
    TOKEN_CLASSIFICATION: _check_token_classification,
    QUESTION_ANSWERING: _check_question_answering,
    SEQ2SEQ: _check_seq2seq,
}


def _related_keys(fmt: str) -> frozenset[str]:
    """Row keys that belong with a format: its own, and those of the formats it is part of
    (a "text" row may be a classification row with a misspelled "label")."""
    related: set[str] = set()
    for other in FORMATS:
        keys = REQUIRED_KEYS[other] | OPTIONAL_KEYS[other]
        if REQUIRED_KEYS[fmt] <= keys:
            related |= keys
    return frozenset(related)


_RELATED_KEYS = {fmt: _related_keys(fmt) for fmt in FORMATS}


def _meant_key(key: str, vocabulary: frozenset[str]) -> str | None:
    """The key of `vocabulary` that `key` stands for: a typo of it, or another tool's name for it."""
    alias = _KEY_ALIASES.get(key.lower())
    return closest(key, vocabulary) or (alias if alias in vocabulary else None)


def _misspelled_key_problem(key: str, fmt: str) -> str | None:
    meant = _meant_key(key, _RELATED_KEYS[fmt])
    return f'unknown key "{key}" (did you mean "{meant}"?)' if meant else None


def check_row(row: dict[str, Any], fmt: str, problems: Problems) -> RowMeasure:
    """Append the problems of a row of format `fmt` to `problems`; return its measure."""
    if len(row) > len(REQUIRED_KEYS[fmt]):
        for key in row:
            problem = _misspelled_key_problem(key, fmt)
            if problem:
                problems.append(problem)
    return _CHECKERS[fmt](row, problems)


def unknown_format_problems(row: dict[str, Any]) -> Problems:
    """Why no format matches a row: the keys missing from the format it was most likely meant to
    be, with the misspelled key that was probably meant, or which keys a row needs."""
    if not row:
        return [f"the row is an empty object: {_EXPECTED_KEYS}"]
    corrections: dict[str, str] = {}
    for key in row:
        if key not in _ALL_ROW_KEYS:
            meant = _meant_key(key, _ALL_ROW_KEYS)
            if meant:
                corrections[key] = meant
    present = (row.keys() & _ALL_ROW_KEYS) | set(corrections.values())
    intended = detect_format(dict.fromkeys(present))
    if intended is None:
        overlaps = [(len(REQUIRED_KEYS[fmt] & present), fmt) for fmt in FORMATS if REQUIRED_KEYS[fmt] & present]
        if not overlaps:
            return [f"no dataset format has the keys {quoted(row)}: {_EXPECTED_KEYS}"]
        intended = max(overlaps, key=lambda overlap: overlap[0])[1]  # max keeps the first of equals
    problems = []
    # The keys missing from the set of the intended format's keys that the row comes closest to
    # ({"question", "answer"} misses "context", not "answers" too).
    closest_keys = min(FORMAT_KEY_SETS[intended], key=lambda keys: len(keys - present))
    for key in sorted(closest_keys - row.keys()):
        typo = next((found for found, meant in corrections.items() if meant == key), None)
        if typo:
            problems.append(f'missing key "{key}" (found "{shown(typo)}": did you mean "{key}"?)')
        else:
            problems.append(
                f'missing key "{key}" ({FORMAT_TITLES[intended]} rows need {quoted(sorted(REQUIRED_KEYS[intended]))})'
            )
    return problems
