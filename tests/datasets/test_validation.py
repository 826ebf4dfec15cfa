"""The validator: formats detected, every error kind reported with its line, any chunking."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from app.contract.formats import FORMATS, to_canonical

DATA = Path(__file__).parent / "data"
GOOD_FILES = {fmt: f"{fmt}.jsonl" for fmt in FORMATS}

CHAT_OK = b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}'


def listed(report):
    return [(error["line"], error["message"]) for error in report.errors]


@pytest.mark.parametrize("fmt", GOOD_FILES)
def test_each_sample_file_is_accepted_with_its_format(validate, fmt):
    data = (DATA / GOOD_FILES[fmt]).read_bytes()
    report = validate(data)
    assert (report.format, report.error_count, report.errors) == (fmt, 0, [])
    assert report.rows == report.stats["rows"] == len(data.splitlines())
    # Whatever validation accepts, the training library can convert.
    for line in data.splitlines():
        assert to_canonical(orjson.loads(line), report.format).format == fmt


@pytest.mark.parametrize("chunk_size", [1, 3, 64, 4096])
def test_chunk_boundaries_do_not_change_the_report(validate, chunk_size):
    data = (DATA / "chat_with_errors.jsonl").read_bytes() + (DATA / "chat.jsonl").read_bytes()
    whole = validate(data)
    chunked = validate(data, chunk_size=chunk_size)
    assert (chunked.errors, chunked.error_count, chunked.stats, chunked.line_index) == (
        whole.errors,
        whole.error_count,
        whole.stats,
        whole.line_index,
    )


def test_crlf_line_endings_and_a_missing_final_newline_are_fine(validate):
    report = validate(CHAT_OK + b"\r\n" + CHAT_OK.replace(b"Hi", b"Hey") + b"\r\n" + CHAT_OK.replace(b"Hi", b"Yo"))
    assert (report.format, report.rows, report.error_count) == ("chat", 3, 0)


def test_the_sample_file_with_errors_lists_each_with_its_line(validate):
    report = validate((DATA / "chat_with_errors.jsonl").read_bytes())
    assert report.format == "chat"
    assert listed(report) == [
        (1, "the file starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without BOM"),
        (3, "invalid JSON at column 106: the line ends before the JSON object is complete"),
        (4, "the line is blank: every line of a JSONL file holds one JSON object; remove it"),
        (5, "the line has only whitespace: every line of a JSONL file holds one JSON object; remove it"),
        (6, 'the line is a list, not a JSON object like {"messages": [...]}'),
        (7, 'missing key "messages" (found "mesages": did you mean "messages"?)'),
        (
            8,
            (
                'message 2 has the unknown role "assitant" (did you mean "assistant"?); '
                'roles are "system", "user", "assistant", "tool"'
            ),
        ),
        (9, 'message 1 (user): "content" is empty'),
        (10, "no assistant message: the model learns from the assistant's replies, so a chat needs one"),
        (11, 'message 1 (user): "content" must be a string or a list of text parts, not a number (42)'),
        (12, '"messages" must be a list of messages, not a string'),
        (13, "not valid UTF-8 text: byte 0xE9 at column 47; save the file with the UTF-8 encoding"),
        (14, 'the row is "Prompt / completion" but most rows (10) are "Chat messages": a file holds one format'),
        (15, 'message 3 (tool) has no "tool_call_id": a tool message names the tool call it answers'),
        (
            17,
            (
                "invalid JSON at column 2: unexpected character, expected a string key "
                "(strings and keys need double quotes, not single quotes)"
            ),
        ),
    ]
    assert report.error_count == 15


def _second_line_errors(validate, first: bytes, second: bytes, **options):
    report = validate(first + b"\n" + second + b"\n", **options)
    assert all(line == 2 for line, _ in listed(report)), listed(report)
    return [message for _, message in listed(report)]


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            b'{"messages": [{"role": "User", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 has the unknown role "User" (did you mean "user"?); roles are "system", "user", "assistant", "tool"',
        ),
        (
            b'{"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 has the unknown role "bot"; roles are "system", "user", "assistant", "tool"',
        ),
        (
            b'{"messages": [{"rol": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 has no "role" (found "rol": did you mean "role"?)',
        ),
        (
            b'{"messages": [{"role": "user", "contnet": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 (user) has no "content" (found "contnet": did you mean "content"?)',
        ),
        (
            b'{"messages": [{"role": "user", "content": "  \\n "}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 (user): "content" is only whitespace',
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": null}]}',
            'message 2 (assistant): "content" must be a string or a list of text parts, not null',
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, "Hello"]}',
            'message 2 is a string, not an object like {"role": "user", "content": "..."}',
        ),
        (b'{"messages": []}', '"messages" is an empty list'),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "wieght": 0}]}',
            'message 2 (assistant) has the unknown key "wieght" (did you mean "weight"?)',
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 2}]}',
            'message 2 (assistant): "weight" must be 0 or 1, not a number (2)',
        ),
        (
            (
                b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}, '
                b'{"role": "assistant", "content": "A cat."}]}'
            ),
            'message 1 (user): content part 1 has type "image_url"; only "text" parts can be trained on',
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"type": "text", "value": "Hi"}]}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 (user): content part 1 has no "text" (found "value": did you mean "text"?)',
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"value": "Hi"}]}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 (user): content part 1 has no "type" (found "value": did you mean "text"?)',
        ),
        (
            b'{"messages": [{"role": "user", "content": [{"text": "Hi"}]}, {"role": "assistant", "content": "Hello"}]}',
            'message 1 (user): content part 1 has no "type" (a text part is {"type": "text", "text": ...})',
        ),
        (
            b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}], "tool": []}',
            'unknown key "tool" (did you mean "tools"?)',
        ),
    ],
)
def test_chat_row_errors(validate, row, expected):
    assert _second_line_errors(validate, CHAT_OK, row) == [expected]


TOOL_CALL = b'{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}'


def _tool_chat(assistant_extra: bytes, tool_message: bytes) -> bytes:
    return (
        b'{"messages": [{"role": "user", "content": "Weather in Paris?"}, '
        b'{"role": "assistant", "content": null' + assistant_extra + b"}, " + tool_message + b", "
        b'{"role": "assistant", "content": "Sunny."}]}'
    )


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            _tool_chat(
                b', "tool_calls": [' + TOOL_CALL + b"]",
                b'{"role": "tool", "tool_call_id": "call_2", "content": "sunny"}',
            ),
            ['message 3 (tool): "tool_call_id" "call_2" does not match a tool call of an earlier message'],
        ),
        (
            _tool_chat(
                b', "tool_calls": {"id": "call_1"}', b'{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}'
            ),
            [
                'message 2 (assistant): "tool_calls" must be a list, not an object',
                'message 3 (tool): "tool_call_id" "call_1" does not match a tool call of an earlier message',
            ],
        ),
        (
            _tool_chat(
                b', "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}]',
                b'{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}',
            ),
            ['message 2 (assistant): tool call 1: "arguments" is not valid JSON'],
        ),
        (
            _tool_chat(
                b', "tool_calls": [{"type": "function", "function": {"arguments": "{}"}}]',
                b'{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}',
            ),
            [
                'message 2 (assistant): tool call 1 needs an "id" (a string that the tool message answering it repeats)',
                'message 2 (assistant): tool call 1 needs a function "name"',
                'message 3 (tool): "tool_call_id" "call_1" does not match a tool call of an earlier message',
            ],
        ),
        (
            _tool_chat(b"", b'{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}'),
            [
                'message 2 (assistant): "content" must be a string or a list of text parts, not null',
                'message 3 (tool): "tool_call_id" "call_1" does not match a tool call of an earlier message',
            ],
        ),
    ],
)
def test_tool_call_errors(validate, row, expected):
    assert _second_line_errors(validate, CHAT_OK, row) == expected


def test_tools_must_be_functions_with_names(validate):
    row = CHAT_OK[:-1] + b', "tools": [{"type": "function", "function": {"description": "no name"}}, "get_weather"]}'
    assert _second_line_errors(validate, CHAT_OK, row) == [
        'tool 1 needs a function "name"',
        'tool 2 must be an object like {"type": "function", "function": {"name": ...}}',
    ]


def test_user_messages_cannot_call_tools(validate):
    row = b'{"messages": [{"role": "user", "content": "Hi", "tool_calls": []}, {"role": "assistant", "content": "Hello"}]}'
    assert _second_line_errors(validate, CHAT_OK, row) == [
        'message 1 (user) has "tool_calls", but only assistant messages call tools'
    ]


SHAREGPT_OK = b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}'


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            b'{"conversations": [{"from": "humen", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}',
            [
                (
                    'turn 1 has the unknown speaker "humen" (did you mean "human"?); speakers are "system", "human", '
                    '"user", "gpt", "assistant", "function_call", "observation", "tool"'
                )
            ],
        ),
        (
            b'{"conversations": [{"role": "user", "content": "Hi"}, {"from": "gpt", "value": "Hello"}]}',
            ['turn 1 has no "from" (it has "role", a chat message key: ShareGPT turns use "from" and "value")'],
        ),
        (
            b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "vaule": "Hello"}]}',
            ['turn 2 (gpt) has no "value" (found "vaule": did you mean "value"?)'],
        ),
        (
            b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "content": "Hello"}]}',
            ['turn 2 (gpt) has no "value" (found "content": did you mean "value"?)'],
        ),
        (
            b'{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]}',
            ['turn 2 (gpt): "value" is empty'],
        ),
        (
            b'{"conversations": [{"from": "human", "value": "Hi"}]}',
            ['no "gpt" turn: the model learns from the gpt replies, so a conversation needs one'],
        ),
        (
            b'{"conversation": [{"from": "human", "value": "Hi"}]}',
            ['missing key "conversations" (found "conversation": did you mean "conversations"?)'],
        ),
    ],
)
def test_sharegpt_row_errors(validate, row, expected):
    assert _second_line_errors(validate, SHAREGPT_OK, row) == expected


@pytest.mark.parametrize(
    ("first", "row", "expected"),
    [
        (
            b'{"prompt": "a", "completion": "b"}',
            b'{"promt": "a", "completion": "b"}',
            ['missing key "prompt" (found "promt": did you mean "prompt"?)'],
        ),
        (
            b'{"prompt": "a", "completion": "b"}',
            b'{"prompt": "a", "complition": "b"}',
            ['missing key "completion" (found "complition": did you mean "completion"?)'],
        ),
        (
            b'{"prompt": "a", "completion": "b"}',
            b'{"prompt": "a"}',
            ['missing key "completion" (Prompt / completion rows need "completion", "prompt")'],
        ),
        (
            b'{"prompt": "a", "completion": "b"}',
            b'{"prompt": "a", "completion": 7}',
            ['"completion" must be a string, not a number (7)'],
        ),
        (b'{"prompt": "a", "completion": "b"}', b'{"prompt": "a", "completion": ""}', ['"completion" is empty']),
        (
            b'{"instruction": "a", "output": "b"}',
            b'{"instruction": "a", "input": "", "ouput": "b"}',
            ['missing key "output" (found "ouput": did you mean "output"?)'],
        ),
        (
            b'{"instruction": "a", "output": "b"}',
            b'{"instruction": "a", "context": "", "response": "b"}',
            ['missing key "output" (found "response": did you mean "output"?)'],
        ),
        (
            b'{"instruction": "a", "output": "b"}',
            b'{"instruction": "a", "context": "some text", "output": "b"}',
            ['unknown key "context" (did you mean "input"?)'],
        ),
        (
            b'{"instruction": "a", "output": "b"}',
            b'{"instruction": "a", "input": ["x"], "output": "b"}',
            ['"input" must be a string, not a list'],
        ),
        (b'{"instruction": "a", "output": "b"}', b'{"instruction": "", "output": "b"}', ['"instruction" is empty']),
        (
            b'{"text": "a", "label": "x"}',
            b'{"text": "b", "label": 1.5}',
            ['"label" must be a string or an integer, not a number (1.5)'],
        ),
        (
            b'{"text": "a", "label": "x"}',
            b'{"text": "b", "lable": "y"}',
            ['unknown key "lable" (did you mean "label"?)', 'missing key "label" (the other rows are "Text + label")'],
        ),
        (b'{"text": "a"}', b'{"text": null}', ['"text" must be a string, not null']),
        (b'{"text": "a"}', b'{"txt": "b"}', ['missing key "text" (found "txt": did you mean "text"?)']),
        (
            b'{"text": "a"}',
            b'{"query": "a", "reply": "b"}',
            [
                (
                    'no dataset format has the keys "query", "reply": a row needs "messages" (chat), '
                    '"conversations" (ShareGPT), "prompt" and "completion", "instruction" and "output" (Alpaca), '
                    '"text" (with "label" for classification), a preference pair: "prompt", "chosen" and "rejected", '
                    '"tokens" and "tags" (NER), "question", "context" and "answers" (SQuAD), or "input" and "target" '
                    "(seq2seq)"
                )
            ],
        ),
        (
            b'{"text": "a"}',
            b'{"question": "a", "answer": "b"}',
            [
                'missing key "context" (Question answering (SQuAD) rows need "answers", "context", "question")',
            ],
        ),
        (
            b'{"text": "a"}',
            b"{}",
            [
                'the row is an empty object: a row needs "messages" (chat), "conversations" (ShareGPT), "prompt" and "completion", "instruction" and "output" (Alpaca), "text" (with "label" for classification), a preference pair: "prompt", "chosen" and "rejected", "tokens" and "tags" (NER), "question", "context" and "answers" (SQuAD), or "input" and "target" (seq2seq)'
            ],
        ),
        (b'{"text": "a"}', b'"just a string"', ['the line is a string, not a JSON object like {"messages": [...]}']),
    ],
)
def test_flat_format_row_errors(validate, first, row, expected):
    assert _second_line_errors(validate, first, row) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b'{"text": "a",}', "invalid JSON at column 13: trailing comma is not allowed"),
        (
            b'{"text": None}',
            "invalid JSON at column 10: unexpected character, expected a JSON value (JSON writes null, true and false in lower case)",
        ),
        (
            b'{"text": "a"} {"text": "b"}',
            "invalid JSON at column 15: unexpected text after the JSON object (one object per line)",
        ),
        (b'{"text": "tab\there"}', "invalid JSON at column 14: unexpected control character in string"),
        (
            b"{",
            "invalid JSON: a row must be a whole JSON object on one line, and this looks like a piece of pretty-printed (multi-line) JSON",
        ),
        (
            b'  "text": "a",',
            "invalid JSON: a row must be a whole JSON object on one line, and this looks like a piece of pretty-printed (multi-line) JSON",
        ),
        ('{"text": "日本", "x": 1,}'.encode(), "invalid JSON at column 22: trailing comma is not allowed"),
        (
            b'{"text": "\xff\xfe"}',
            "not valid UTF-8 text: byte 0xFF at column 11; save the file with the UTF-8 encoding",
        ),
    ],
)
def test_unparsable_lines(validate, line, expected):
    assert _second_line_errors(validate, b'{"text": "a"}', line) == [expected]


def test_a_bom_before_a_good_first_row_is_the_only_error(validate):
    report = validate(b"\xef\xbb\xbf" + CHAT_OK + b"\n" + CHAT_OK.replace(b"Hi", b"Hey") + b"\n")
    assert report.format == "chat"
    assert listed(report) == [
        (1, "the file starts with a UTF-8 byte order mark (BOM): save the file as UTF-8 without BOM")
    ]


def test_an_empty_file_is_an_error_of_the_whole_file(validate):
    report = validate(b"")
    assert (report.format, report.rows, report.error_count) == (None, 0, 1)
    assert report.errors == [{"line": None, "message": "the file is empty", "count": 1, "lines": [None]}]


def test_a_file_of_only_newlines_lists_its_blank_lines_as_one_error(validate):
    report = validate(b"\n\n")
    assert report.errors == [
        {
            "line": 1,
            "message": "the line is blank: every line of a JSONL file holds one JSON object; remove it",
            "count": 2,
            "lines": [1, 2],
        }
    ]


def test_the_format_is_the_majority_and_other_formats_are_errors(validate):
    prompt = b'{"prompt": "a", "completion": "b"}'
    report = validate(b"\n".join([prompt, CHAT_OK, CHAT_OK, prompt, CHAT_OK]) + b"\n")
    assert report.format == "chat"
    message = 'the row is "Prompt / completion" but most rows (3) are "Chat messages": a file holds one format'
    assert report.errors == [{"line": 1, "message": message, "count": 2, "lines": [1, 4]}]
    assert report.error_count == 2


def test_on_a_tie_the_format_seen_first_wins(validate):
    report = validate(b'{"text": "a"}\n' + CHAT_OK + b"\n")
    assert report.format == "text"
    assert listed(report) == [
        (2, 'the row is "Chat messages" but most rows (1) are "Plain text": a file holds one format')
    ]


def test_an_error_repeated_on_many_rows_is_one_entry_with_its_count_and_first_lines(validate):
    rows = [CHAT_OK] * 5 + [b"not json"] * 250 + [b'{"text": "a"}'] * 3
    report = validate(b"\n".join(rows) + b"\n", max_listed_errors=100)
    assert report.error_count == 253
    (not_json, other_format) = report.errors
    assert (not_json["line"], not_json["count"], not_json["lines"]) == (6, 250, [6, 7, 8, 9, 10])
    assert not_json["message"].startswith("invalid JSON at column 1")
    assert (other_format["count"], other_format["lines"]) == (3, [256, 257, 258])


def test_only_the_first_different_errors_are_listed_but_all_are_counted(validate):
    rows = [f'{{"text": {i}}}'.encode() for i in range(150)] + [b'{"text": "a"}']
    report = validate(b"\n".join(rows) + b"\n", max_listed_errors=100)
    assert report.error_count == 150
    assert [line for line, _ in listed(report)] == list(range(1, 101))
    assert {error["count"] for error in report.errors} == {1}


def test_the_rows_of_another_format_count_beyond_the_listed_ones(validate):
    rows = [CHAT_OK] * 300 + [b'{"text": "a"}'] * 150
    report = validate(b"\n".join(rows) + b"\n", max_listed_errors=100)
    assert report.error_count == 150
    assert [(error["count"], error["lines"]) for error in report.errors] == [(150, [301, 302, 303, 304, 305])]


def test_a_row_over_the_length_limit(validate):
    long_row = json.dumps({"text": "é" * 120}, ensure_ascii=False).encode()  # 132 characters, 252 bytes
    assert _second_line_errors(validate, b'{"text": "a"}', long_row, max_row_chars=131) == [
        "the row is 132 characters long, over the limit of 131"
    ]
    assert validate(b'{"text": "a"}\n' + long_row + b"\n", max_row_chars=132).error_count == 0


def test_a_line_far_over_the_limit_is_skipped_without_being_held(validate):
    huge = b'{"text": "' + b"x" * 50_000 + b'"}'
    data = b'{"text": "a"}\n' + huge + b'\n{"text": "b"}\n'
    report = validate(data, chunk_size=1000, max_row_chars=1000)
    assert listed(report) == [(2, "the row is longer than the limit of 1,000 characters")]
    assert report.rows == 3
    assert report.line_index["offsets"] == [0, 14, 14 + len(huge) + 1]


def test_values_from_the_file_are_cut_short_in_messages(validate):
    role = "r" * 100_000
    row = json.dumps({"messages": [{"role": role, "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
    (message,) = _second_line_errors(validate, CHAT_OK, row.encode())
    assert message == (
        'message 1 has the unknown role "' + "r" * 39 + '…"; roles are "system", "user", "assistant", "tool"'
    )
    keys = {f"key{n}": n for n in range(50)}
    (message,) = _second_line_errors(validate, CHAT_OK, json.dumps(keys).encode())
    assert message.startswith('no dataset format has the keys "key0", "key1", ') and " and 40 more: " in message


def test_a_label_longer_than_a_class_name_is_refused_with_its_line(validate):
    rows = [{"text": "good", "label": "positive"}, {"text": "bad", "label": "x" * 5000}]
    report = validate("".join(json.dumps(row) + "\n" for row in rows).encode())
    assert listed(report) == [(2, '"label" is 5000 characters long; a label names a class in at most 100')]


# -- ShareGPT tool calling (LLaMA-Factory's format) ------------------------------------------


def test_sharegpt_tool_calling_rows_keep_their_tools_calls_and_results(validate):
    data = (DATA / "sharegpt_tools.jsonl").read_bytes()
    report = validate(data)
    assert (report.format, report.error_count) == ("sharegpt", 0)
    assert report.stats["roles"] == {"user": 4, "assistant": 7, "tool": 4, "system": 1}
    first, second, _ = (to_canonical(orjson.loads(line)).example for line in data.splitlines())

    assert first.tools == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather of a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    assert first.messages[1:3] == [
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temperature": 18, "sky": "cloudy"}', "tool_call_id": "call_1"},
    ]
    assert first.trainable == [False, True, False, True]

    # Tools as a list, a system prompt, parallel calls (arguments as an object or a JSON string)
    assert [tool["function"]["name"] for tool in second.tools] == ["get_weather", "convert_currency"]
    assert second.messages[0] == {"role": "system", "content": "You are a travel assistant."}
    assert [c["function"]["arguments"] for c in second.messages[2]["tool_calls"]] == [
        {"city": "Oslo"},
        {"city": "Rome"},
    ]
    assert [m.get("tool_call_id") for m in second.messages[3:5]] == ["call_1", "call_2"]


SHAREGPT_CALL = (
    '{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": %s}, {"from": "gpt", "value": "Sunny."}'
)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            '{"conversations": [%s], "tools": "[{\\"name\\": \\"get_weather\\"}"}' % (SHAREGPT_CALL % '"{}"'),
            [
                'turn 2 (function_call): a function call needs a "name"',
                '"tools" is a string but not JSON: it must be a list of functions, or a JSON string of one',
            ],
        ),
        (
            '{"conversations": [%s], "tools": [{"description": "no name"}]}'
            % (SHAREGPT_CALL % '"get_weather(city=Paris)"'),
            [
                'turn 2 (function_call): "value" must be a function call as JSON, like {"name": ..., "arguments": {...}}',
                'tool 1 needs a function "name"',
            ],
        ),
        (
            '{"conversations": [%s]}' % (SHAREGPT_CALL % '"{\\"nmae\\": \\"f\\", \\"arguments\\": \\"x\\"}"'),
            ['turn 2 (function_call): a function call needs a "name" (found "nmae": did you mean "name"?)'],
        ),
        (
            '{"conversations": [%s]}' % (SHAREGPT_CALL % '"{\\"name\\": \\"f\\", \\"arguments\\": \\"x\\"}"'),
            ['turn 2 (function_call): "arguments" must be an object (or a JSON string of one)'],
        ),
    ],
)
def test_sharegpt_tool_calling_errors(validate, row, expected):
    assert _second_line_errors(validate, SHAREGPT_OK, row.encode()) == expected
