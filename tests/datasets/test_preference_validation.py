"""Preference data (DPO, ORPO, KTO): each format accepted, each mistake people make named with its line."""

from __future__ import annotations

import json

import pytest

from app.contract.formats import to_canonical


def _jsonl(*rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _user(text):
    return {"role": "user", "content": text}


def _assistant(text):
    return {"role": "assistant", "content": text}


GOOD_PAIR = {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."}
GOOD_OPENAI = {
    "input": {"messages": [_user("Colour of the sky?")]},
    "preferred_output": [_assistant("Blue.")],
    "non_preferred_output": [_assistant("Green.")],
}
GOOD_SHAREGPT = {
    "conversations": [{"from": "human", "value": "Colour of the sky?"}],
    "chosen": {"from": "gpt", "value": "Blue."},
    "rejected": {"from": "gpt", "value": "Green."},
}


@pytest.mark.parametrize(
    "good, bad, expected",
    [
        (
            GOOD_PAIR,
            {"prompt": "The sky is", "chosen": " blue.", "rejected": " blue."},
            '"chosen" and "rejected" are the same: a pair teaches a preference only when its two answers differ',
        ),
        (GOOD_PAIR, {"prompt": "The sky is", "chosen": " blue.", "rejected": ""}, '"rejected" is empty'),
        (GOOD_PAIR, {"prompt": "The sky is", "chosen": "  ", "rejected": "x"}, '"chosen" is only whitespace'),
        (
            GOOD_PAIR,
            {
                "prompt": "",
                "chosen": [_user("Colour of the sky?"), _assistant("Blue.")],
                "rejected": [_user("Colour of the grass?"), _assistant("Green.")],
            },
            '"chosen" and "rejected" do not answer the same prompt: their turns before the first assistant message differ',
        ),
        (
            GOOD_PAIR,
            {"prompt": [_user("Hi"), _assistant("Hello")], "chosen": [_assistant("a")], "rejected": [_assistant("b")]},
            "the last turn of the prompt is assistant, not a user turn: the answers must reply to a user message",
        ),
        (
            GOOD_PAIR,
            {"prompt": "The sky is", "chosen": " blue.", "rejected": [_assistant("green")]},
            '"chosen" and "rejected" must both be strings or both lists of messages, not a string and a list',
        ),
        (
            GOOD_PAIR,
            {"prompt": [_user("Hi")], "chosen": [_assistant("a")], "rejected": []},
            '"rejected" is an empty list',
        ),
        (
            GOOD_OPENAI,
            {**GOOD_OPENAI, "non_preferred_output": [_assistant("Blue.")]},
            (
                '"preferred_output" and "non_preferred_output" are the same: a pair teaches a preference only when its '
                "two answers differ"
            ),
        ),
        (
            GOOD_OPENAI,
            {**GOOD_OPENAI, "input": {"messages": [_user("Hi"), _assistant("Hello")]}},
            'the last turn of "input" is assistant, not a user turn: the answers must reply to a user message',
        ),
        (
            GOOD_OPENAI,
            {**GOOD_OPENAI, "preferred_output": [_assistant("")]},
            '"preferred_output" message 1 (assistant): "content" is empty',
        ),
        (
            GOOD_OPENAI,
            {**GOOD_OPENAI, "preferred_output": [_user("Blue.")]},
            '"preferred_output" message 1 is a user message; the outputs hold assistant messages',
        ),
        (
            GOOD_SHAREGPT,
            {**GOOD_SHAREGPT, "rejected": {"from": "gpt", "value": "Blue."}},
            '"chosen" and "rejected" are the same: a pair teaches a preference only when its two answers differ',
        ),
        (
            GOOD_SHAREGPT,
            {**GOOD_SHAREGPT, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
            'the last turn of "conversations" is "gpt", not a human turn: the answers must reply to it',
        ),
        (GOOD_SHAREGPT, {**GOOD_SHAREGPT, "chosen": {"from": "gpt", "value": ""}}, '"chosen.value" is empty'),
        (
            {"prompt": "a", "completion": "b", "label": True},
            {"prompt": "a", "completion": "b", "label": 1},
            '"label" must be true (a good answer) or false (a bad one), not a number (1)',
        ),
        (
            {"prompt": "a", "completion": "b", "label": True},
            {"prompt": "a", "completion": "", "label": False},
            '"completion" is empty',
        ),
    ],
)
def test_each_bad_pair_is_rejected_with_its_line(validate, good, bad, expected):
    report = validate(_jsonl(good, good, bad, good))
    assert [(error["line"], error["message"]) for error in report.errors] == [(3, expected)]


def test_openai_preference_file_detected_and_converted_to_trl_rows(validate):
    report = validate(_jsonl(GOOD_OPENAI, GOOD_OPENAI))
    assert (report.format, report.error_count) == ("preference_openai", 0)
    assert to_canonical(GOOD_OPENAI).example.trl_row() == {
        "prompt": [_user("Colour of the sky?")],
        "chosen": [_assistant("Blue.")],
        "rejected": [_assistant("Green.")],
    }


def test_answers_that_repeat_the_conversation_keep_it_in_the_prompt():
    row = {
        "prompt": "",
        "chosen": [_user("Snow?"), _assistant("White.")],
        "rejected": [_user("Snow?"), _assistant("Black.")],
    }
    assert to_canonical(row).example.trl_row() == {
        "prompt": [_user("Snow?")],
        "chosen": [_assistant("White.")],
        "rejected": [_assistant("Black.")],
    }


def test_sharegpt_pairs_become_chat_pairs():
    pair = to_canonical({**GOOD_SHAREGPT, "system": "Be brief."}).example
    assert pair.prompt == [{"role": "system", "content": "Be brief."}, _user("Colour of the sky?")]
    assert (pair.chosen, pair.rejected) == ([_assistant("Blue.")], [_assistant("Green.")])


def test_kto_feedback_counts_its_labels_and_warns_when_unbalanced(validate):
    good = {"prompt": "a", "completion": "b", "label": True}
    bad = {"prompt": "a", "completion": "c", "label": False}
    balanced = validate(_jsonl(good, bad, good, bad))
    assert (balanced.format, balanced.stats["labels"], balanced.stats["warnings"]) == (
        "feedback",
        {"good": 2, "bad": 2},
        [],
    )
    unbalanced = validate(_jsonl(good, good, good, good, good, bad))
    assert unbalanced.ok
    assert unbalanced.stats["warnings"] == [
        (
            "the labels are unbalanced (5 good, 1 bad): training weighs the rarer kind up to compensate, "
            "but more rows of it would teach more"
        )
    ]
    one_sided = validate(_jsonl(good, good))
    assert one_sided.stats["warnings"] == [
        "no row is labelled bad (false): KTO learns from both good and bad answers, so it needs some of each"
    ]


def test_a_pair_row_missing_its_rejected_answer_in_a_pair_file_is_named(validate):
    report = validate(_jsonl(GOOD_PAIR, GOOD_PAIR, {"prompt": "The sky is", "chosen": " blue."}))
    assert [(error["line"], error["message"]) for error in report.errors] == [
        (
            3,
            (
                'missing key "rejected" (Preference pairs (prompt / chosen / rejected) rows need "chosen", "prompt", '
                '"rejected")'
            ),
        )
    ]


@pytest.mark.parametrize(
    "plain, long_chosen, lengths",
    [
        (GOOD_PAIR, {**GOOD_PAIR, "chosen": " blue, as on a clear day."}, (25, 7)),
        (GOOD_OPENAI, {**GOOD_OPENAI, "preferred_output": [_assistant("Blue, as on a clear day.")]}, (24, 6)),
        (GOOD_SHAREGPT, {**GOOD_SHAREGPT, "chosen": {"from": "gpt", "value": "Blue, as on a clear day."}}, (24, 6)),
    ],
)
def test_pair_stats_set_the_chosen_answers_length_beside_the_rejected_ones(validate, plain, long_chosen, lengths):
    """DPO also learns to prefer length when the chosen answers are mostly the longer ones: the
    stats show how the two sides compare."""
    pairs = validate(_jsonl(plain, long_chosen, long_chosen)).stats["pairs"]
    assert (pairs["chosen_chars"]["max"], pairs["rejected_chars"]["max"]) == lengths
    assert pairs["chosen_chars"]["min"] < pairs["rejected_chars"]["min"]  # the plain pair's chosen is shorter
    assert pairs["chosen_longer"] == 2
    assert "pairs" not in validate(_jsonl({"prompt": "a", "completion": "b", "label": True})).stats
