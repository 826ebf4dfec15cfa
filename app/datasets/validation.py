"""Streaming validation of a JSONL dataset: bytes in, in chunks cut anywhere; one report out.

One pass over the file does everything: splitting lines, parsing each with orjson, checking it
against its format (rows.py), detecting the file's format, and gathering statistics and the
preview index. Memory does not grow with the file: a line is held only until it is checked (and
a line longer than the row limit is not held at all), and at most `max_listed_errors` different
messages are kept; the rest are only counted.

Errors are grouped by message: a mistake repeated on a thousand rows is one entry with its
count and its first few line numbers, not a thousand entries; distinct errors keep one entry
each with their line.

The file's format is the one most rows have (on a tie, the one that appears first). Rows of
another format are errors, which can only be known at the end: the validator keeps the first
line numbers of each format so that it can name them then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from app.contract.formats import (
    CLASSIFICATION,
    FEEDBACK,
    FORMAT_TITLES,
    PAIRED_FORMATS,
    QUESTION_ANSWERING,
    REQUIRED_KEYS,
    TOKEN_CLASSIFICATION,
    detect_format,
    entity_spans,
    row_answers,
    row_tags,
    to_canonical,
)

from .hints import describe
from .lines import LineSplitter
from .preview import LineIndexBuilder
from .rows import check_row, unknown_format_problems
from .stats import DatasetStats, DuplicateRows, answer_chars

DEFAULT_MAX_ROW_CHARS = 1_000_000
MAX_LISTED_ERRORS = 100
LINES_PER_ERROR = 5  # the line numbers listed for a message that many rows share
UTF8_BOM = b"\xef\xbb\xbf"
_ORJSON_WORDING = {
    "unexpected end of data": "the line ends before the JSON object is complete",
    "unexpected content after document": "unexpected text after the JSON object (one object per line)",
}


@dataclass
class ValidationReport:
    format: str | None
    rows: int  # non-blank lines
    # The first `max_listed_errors` different messages, by the line they first appear on:
    # {"line": first line (None for the whole file), "message", "count": rows with it, "lines": the first few}
    errors: list[dict[str, Any]]
    error_count: int
    stats: dict[str, Any]  # of the rows without errors
    line_index: dict[str, Any]  # for read_preview: {"stride": n, "offsets": [byte offset of every n-th line]}

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def error_body(self) -> dict[str, Any]:
        """The 422 answer's body."""
        return {"errors": self.errors, "error_count": self.error_count}


def max_line_bytes_for(max_row_chars: int) -> int:
    """A line of more bytes than this has more than `max_row_chars` characters, whatever they are."""
    return 4 * max_row_chars + len(b"\r")


class DatasetValidator:
    """Validates a JSONL dataset fed in chunks: `feed(chunk)` as often as needed, then `finish()`.

    With `count_duplicates=False` the report's stats have `"duplicates": None`, for a caller
    that counts them itself (ValidatorProcess)."""

    def __init__(
        self,
        *,
        max_row_chars: int = DEFAULT_MAX_ROW_CHARS,
        max_listed_errors: int = MAX_LISTED_ERRORS,
        count_duplicates: bool = True,
    ):
        self.max_row_chars = max_row_chars
        self.max_listed_errors = max_listed_errors
        self._lines = LineSplitter(max_line_bytes_for(max_row_chars))
        self._duplicates = DuplicateRows() if count_duplicates else None
        self._bytes = 0
        self._line_number = 0
        self._line_start = 0  # byte offset of the next line
        self._rows = 0
        self._errors: dict[str, _ErrorGroup] = {}  # by message
        self._error_count = 0
        self._format_rows: dict[str, int] = {}
        self._format_first_lines: dict[str, list[int]] = {}
        self._stats = DatasetStats()
        self._index = LineIndexBuilder()
        self._next_indexed_line = 1

    # -- input -------------------------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        self._bytes += len(chunk)
        self._check_lines(self._lines.feed(chunk))

    def _check_lines(self, lines: list[bytes | int]) -> None:
        for line in lines:
            if type(line) is int:
                self._too_long_to_hold(line)
            else:
                self._check_line(line)
        self._stats.fold_when_due()

    def close(self) -> None:
        """Release the memory of a validation abandoned before `finish()` (which releases it too)."""
        if self._duplicates is not None:
            self._duplicates.close()

    def finish(self) -> ValidationReport:
        self._check_lines(self._lines.finish())
        if self._bytes == 0:
            self._error(None, "the file is empty")
        fmt = self._file_format()
        errors = sorted(self._errors.values(), key=lambda group: group.lines[0] or 0)[: self.max_listed_errors]
        stats = self._stats.finish(None if self._duplicates is None else self._duplicates.result())
        if fmt == FEEDBACK:
            stats["warnings"] = feedback_warnings(stats.get("labels", {}))
        return ValidationReport(
            format=fmt,
            rows=self._rows,
            errors=[group.to_dict() for group in errors],
            error_count=self._error_count,
            stats=stats,
            line_index=self._index.to_dict(),
        )

    # -- lines -------------------------------------------------------------------------------

    def _error(self, line: int | None, message: str) -> None:
        self._record(message, [line], 1)

    def _record(self, message: str, lines: list[int | None], count: int, *, listed: bool = False) -> None:
        """`count` rows with the error `message`, the first of them on `lines`; `listed` lists a
        new message even when `max_listed_errors` others are listed already."""
        self._error_count += count
        group = self._errors.get(message)
        if group is None:
            if len(self._errors) >= self.max_listed_errors and not listed:
                return
            group = self._errors[message] = _ErrorGroup(message)
        group.add(lines, count)

    def _start_line(self, length: int) -> int:
        """Counts a line of `length` bytes (without its newline) and indexes it; returns its number."""
        self._line_number += 1
        if self._line_number == self._next_indexed_line:
            self._index.add(self._line_start)
            self._next_indexed_line += self._index.stride
        self._line_start += length + 1
        return self._line_number

    def _too_long_to_hold(self, length: int) -> None:
        number = self._start_line(length)
        self._rows += 1
        self._error(number, f"the row is longer than the limit of {self.max_row_chars:,} characters")

    def _check_line(self, line: bytes) -> None:
        number = self._start_line(len(line))
        if self._duplicates is not None:
            self._duplicates.add(number, line)
        if len(line) > self.max_row_chars:
            chars = len(line.decode("utf-8", "replace"))
            if chars > self.max_row_chars:
                self._rows += 1
                self._error(number, f"the row is {chars:,} characters long, over the limit of {self.max_row_chars:,}")
                return
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            self._unparsable(number, line, error)
            return
        self._rows += 1
        self._check_row(number, row)

    def _unparsable(self, number: int, line: bytes, error: orjson.JSONDecodeError) -> None:
        stripped = line.strip()
        if not stripped:
            kind = "is blank" if not line or line == b"\r" else "has only whitespace"
            self._error(number, f"the line {kind}: every line of a JSONL file holds one JSON object; remove it")
            return
        self._rows += 1
        if line.startswith(UTF8_BOM):
            where = "the file starts" if number == 1 else "the line starts"
            self._error(number, f"{where} with a UTF-8 byte order mark (BOM): save the file as UTF-8 without BOM")
            line = line[len(UTF8_BOM) :]
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as rest_error:
                error = rest_error
            else:
                self._check_row(number, row)
                return
            if not line.strip():
                return
        self._error(number, _describe_unparsable(line, error))

    def _check_row(self, number: int, row: Any) -> None:
        if type(row) is not dict:
            self._error(number, f'the line is {describe(row)}, not a JSON object like {{"messages": [...]}}')
            return
        fmt = detect_format(row)
        if fmt is None:
            for problem in unknown_format_problems(row):
                self._error(number, problem)
            return
        rows_of_format = self._format_rows[fmt] = self._format_rows.get(fmt, 0) + 1
        if rows_of_format <= LINES_PER_ERROR:
            self._format_first_lines.setdefault(fmt, []).append(number)
        problems: list[str] = []
        text_chars, roles = check_row(row, fmt, problems)
        if problems:
            for problem in problems:
                self._error(number, problem)
            return
        self._stats.add_row(text_chars, roles)
        if fmt == CLASSIFICATION:
            self._stats.add_label(row["label"])
        elif fmt == FEEDBACK:
            self._stats.add_label("good" if row["label"] else "bad")
        elif fmt in PAIRED_FORMATS:
            pair = to_canonical(row, fmt).example
            self._stats.add_pair(answer_chars(pair.chosen), answer_chars(pair.rejected))
        elif fmt == TOKEN_CLASSIFICATION:
            tags = row_tags(row)
            for entity, _, _ in entity_spans(tags) if tags and type(tags[0]) is str else ():
                self._stats.add_count("entities", entity)
        elif fmt == QUESTION_ANSWERING:
            self._stats.add_count("answers", "answered" if row_answers(row) else "unanswerable")

    # -- the file's format -------------------------------------------------------------------

    def _file_format(self) -> str | None:
        """The format most rows have; the rows of another format are errors."""
        if not self._format_rows:
            return None
        first_line = {fmt: lines[0] for fmt, lines in self._format_first_lines.items()}
        majority = max(self._format_rows, key=lambda fmt: (self._format_rows[fmt], -first_line[fmt]))
        majority_title = FORMAT_TITLES[majority]
        for fmt, count in self._format_rows.items():
            if fmt == majority:
                continue
            missing = REQUIRED_KEYS[majority] - REQUIRED_KEYS[fmt]
            if REQUIRED_KEYS[fmt] < REQUIRED_KEYS[majority] and len(missing) == 1:
                message = f'missing key "{next(iter(missing))}" (the other rows are "{majority_title}")'
            else:
                message = (
                    f'the row is "{FORMAT_TITLES[fmt]}" but most rows ({self._format_rows[majority]:,}) are '
                    f'"{majority_title}": a file holds one format'
                )
            # Listed even past the limit: these rows may come before the errors listed so far.
            self._record(message, self._format_first_lines[fmt], count, listed=True)
        return majority


# KTO's authors find it works while the good answers are between half and twice the bad ones
# (weighted); further apart, training weighs the rarer kind up, and says so here.
BALANCED_FEEDBACK = (0.5, 2.0)


def feedback_warnings(labels: dict[str, int]) -> list[str]:
    """What a person should know about the balance of good and bad answers in KTO feedback."""
    good, bad = labels.get("good", 0), labels.get("bad", 0)
    if not good or not bad:
        missing = "bad (false)" if good else "good (true)"
        return [f"no row is labelled {missing}: KTO learns from both good and bad answers, so it needs some of each"]
    low, high = BALANCED_FEEDBACK
    if not low <= good / bad <= high:
        return [
            (
                f"the labels are unbalanced ({good:,} good, {bad:,} bad): training weighs the rarer kind up to compensate, "
                "but more rows of it would teach more"
            )
        ]
    return []


class _ErrorGroup:
    """The rows that share one error message: how many, and the first lines."""

    __slots__ = ("count", "lines", "message")

    def __init__(self, message: str) -> None:
        self.message = message
        self.count = 0
        self.lines: list[int | None] = []

    def add(self, lines: list[int | None], count: int) -> None:
        self.count += count
        self.lines += lines[: LINES_PER_ERROR - len(self.lines)]

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.lines[0], "message": self.message, "count": self.count, "lines": self.lines}


def _describe_unparsable(line: bytes, error: orjson.JSONDecodeError) -> str:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as bad:
        column = len(line[: bad.start].decode("utf-8", "replace")) + 1
        return (
            f"not valid UTF-8 text: byte 0x{line[bad.start]:02X} at column {column}; "
            "save the file with the UTF-8 encoding"
        )
    stripped = text.strip()
    if stripped in ("{", "[") or stripped.startswith('"') or stripped in ("}", "]", "},", "],"):
        return (
            "invalid JSON: a row must be a whole JSON object on one line, "
            "and this looks like a piece of pretty-printed (multi-line) JSON"
        )
    message = f"invalid JSON at column {error.colno}: {_ORJSON_WORDING.get(error.msg, error.msg)}"
    rest = text[error.pos :]
    if rest.startswith("'"):
        message += " (strings and keys need double quotes, not single quotes)"
    elif rest.startswith(("None", "True", "False")):
        message += " (JSON writes null, true and false in lower case)"
    elif rest.startswith(("NaN", "Infinity", "-Infinity")):
        message += " (JSON has no NaN or Infinity)"
    return message
