"""Token classification (NER), extractive QA and seq2seq files: every bad line kind is reported
with its line number, and the statistics count what these tasks are about."""

from __future__ import annotations

import json

from app.contract.formats import Answered, SourceTarget, TaggedTokens, entity_spans, to_canonical

NER_OK = {"tokens": ["Ada", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}
QA_OK = {"question": "Where?", "context": "Ada lives in Paris.", "answers": {"text": ["Paris"], "answer_start": [13]}}
SEQ_OK = {"input": "translate: cat", "target": "chat"}


def jsonl(*rows) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def errors_by_line(report) -> list[tuple[int, str]]:
    return [(error["line"], error["message"]) for error in report.errors]


def test_every_bad_token_classification_line_is_reported_with_its_number(validate):
    report = validate(
        jsonl(
            NER_OK,
            {"tokens": ["Ada", "lives"], "tags": ["B-PER"]},
            {"tokens": ["Ada", "lives", "here"], "tags": ["O", "I-PER", "O"]},
            {"tokens": ["Ada"], "tags": ["PERSON"]},
            {"tokens": ["Ada", "Paris"], "tags": ["B-PER", "I-LOC"]},
            {"tokens": "Ada lives", "tags": ["B-PER", "O"]},
            {"tokens": ["Ada", ""], "tags": ["B-PER", "O"]},
            {"tokens": ["Ada", "x"], "ner_tags": ["B-PER", 3]},
            {"tokens": ["Ada"], "ner_tags": [-1]},
            {"tokens": ["Ada"], "tags": "B-PER"},
            {"tokens": ["I", "am"], "tags": ["I-PER", "O"]},
        )
    )
    assert report.format == "token_classification"
    assert errors_by_line(report) == [
        (2, '"tags" has 1 tags for 2 tokens: every token needs one tag'),
        (
            3,
            'tag 2 "I-PER" follows "O": an entity starts with "B-PER" (IOB2), and "I-PER" only continues one',
        ),
        (
            4,
            'tag 1 "PERSON" is not a BIO tag: tags are "O", "B-TYPE" (an entity\'s first token) or "I-TYPE" (the tokens after it)',
        ),
        (
            5,
            'tag 2 "I-LOC" follows "B-PER": an entity starts with "B-LOC" (IOB2), and "I-LOC" only continues one',
        ),
        (6, '"tokens" must be a list of words, not a string'),
        (7, "token 2 is empty: every token is a word that carries a tag"),
        (8, '"ner_tags" must be all strings ("B-PER", "O"...) or all integers, not a mix or other values'),
        (9, '"ner_tags" holds a negative number: integer tags are the indices of the tag names, from 0'),
        (10, '"tags" must be a list of tags, one per token, not a string'),
        (11, 'tag 1 "I-PER" starts the row: an entity starts with "B-PER" (IOB2), and "I-PER" only continues one'),
    ]


def test_entity_counts_per_type_are_in_the_stats(validate, data_dir):
    report = validate((data_dir / "token_classification.jsonl").read_bytes())
    assert (report.format, report.error_count) == ("token_classification", 0)
    assert report.stats["entities"] == {"PER": 2, "LOC": 1, "ORG": 1}


def test_every_bad_question_answering_line_is_reported_with_its_number(validate):
    report = validate(
        jsonl(
            QA_OK,
            {
                "question": "Where?",
                "context": "Ada lives in Paris.",
                "answers": {"text": ["Paris"], "answer_start": [3]},
            },
            {
                "question": "Where?",
                "context": "Ada lives in Paris.",
                "answers": {"text": ["Rome"], "answer_start": [13]},
            },
            {"question": "Where?", "context": "Ada lives in Paris.", "answer": "Rome"},
            {"question": "", "context": "Ada lives in Paris.", "answer": "Paris"},
            {
                "question": "Where?",
                "context": "Ada lives in Paris.",
                "answers": {"text": ["Paris"], "answer_start": []},
            },
            {"question": "Where?", "context": "Ada lives in Paris.", "answers": ["Paris"]},
            {
                "question": "Where?",
                "context": "Ada lives in Paris.",
                "answers": {"text": ["Paris"], "answer_start": [-2]},
            },
            {"question": "Where?", "context": 7, "answer": "Paris"},
            {"question": "Where?", "context": "Ada lives in Paris.", "answer": 13},
        )
    )
    assert report.format == "question_answering"
    assert errors_by_line(report) == [
        (
            2,
            (
                'answer 1 "Paris" is not at character 3 of the context (it occurs at 13); '
                '"answer_start" counts characters from 0'
            ),
        ),
        (
            3,
            (
                'answer 1 "Rome" is not at character 13 of the context (it does not occur in the context at all); '
                '"answer_start" counts characters from 0'
            ),
        ),
        (4, '"answer" "Rome" does not occur in the context: it must be a span of it'),
        (5, '"question" is empty'),
        (6, '"answers" needs "text" and "answer_start" as lists of the same length (both empty: no answer)'),
        (7, '"answers" must be an object like {"text": [...], "answer_start": [...]}, not a list'),
        (8, 'answer 1: "answer_start" must be a character position (0 or more), not a number (-2)'),
        (9, '"context" must be a string, not a number (7)'),
        (10, '"answer" must be a string (empty when the context holds no answer), not a number (13)'),
    ]


def test_unanswerable_questions_are_accepted_and_counted(validate, data_dir):
    report = validate((data_dir / "question_answering.jsonl").read_bytes())
    assert (report.format, report.error_count) == ("question_answering", 0)
    assert report.stats["answers"] == {"answered": 2, "unanswerable": 2}


def test_bad_seq2seq_lines_are_reported_with_their_number(validate):
    report = validate(
        jsonl(
            SEQ_OK,
            {"input": "translate: dog", "target": ""},
            {"source": 3, "target": "x"},
            {"input": "a", "targt": "b"},
        )
    )
    assert report.format == "seq2seq"
    assert errors_by_line(report) == [
        (2, '"target" is empty'),
        (3, '"source" must be a string, not a number (3)'),
        (4, 'missing key "target" (found "targt": did you mean "target"?)'),
    ]


def test_rows_become_the_canonical_examples_training_reads():
    assert to_canonical({"tokens": ["Rome"], "ner_tags": [3]}).example == TaggedTokens(["Rome"], ["3"])
    flat = to_canonical({"question": "Who?", "context": "It was Ada.", "answer": "Ada"}).example
    assert flat == Answered("Who?", "It was Ada.", [("Ada", 7)])
    assert to_canonical({"question": "Who?", "context": "x", "answer": ""}).example.answers == []
    assert to_canonical({"source": "a", "target": "b"}).example == SourceTarget("a", "b")


def test_entity_spans_follow_seqeval():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-ORG"]
    assert entity_spans(tags) == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 5, 6)]
