"""Dataset statistics gathered in the same single pass as validation, in memory that does not
grow with the file: lengths as bucketed distributions, duplicates as a fixed-size table of row
hashes, roles and labels as counters.

Duplicates are counted apart from the rest (DuplicateRows), over the raw lines: hashing every
line is a sixth of the validation's time, and this way ValidatorProcess counts them in the
server process, which has idle time, while its child validates."""

from __future__ import annotations

import math
import mmap
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import Any

CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKEN_ESTIMATE_METHOD = (
    f"text characters / {CHARS_PER_TOKEN} (the rule of thumb for English with BPE tokenizers), plus "
    f"{TOKENS_PER_MESSAGE} per message for the chat template's role markers; the model's tokenizer gives the real count"
)

# Length histogram bins for display as a bar chart: 0, 10, 15, 20, 30, 40, 50, 60, 80, 100, 150, ...
# (about eight bins a decade, with round edges); empty bins before the first and after the last
# row are left out.
_MANTISSAS = (10, 15, 20, 30, 40, 50, 60, 80)
HISTOGRAM_EDGES = (0, *(mantissa * 10**exponent for exponent in range(10) for mantissa in _MANTISSAS))

MAX_DUPLICATE_EXAMPLES = 10
MAX_DISTINCT_LABELS = 1000


class Distribution:
    """Counts of non-negative integers for min / median / p95 / max in constant memory.

    Values below 2048 are counted exactly; larger ones in buckets 1/2048 of their value wide, so
    quantiles are exact for short rows and within 0.05% for long ones. Quantiles are nearest-rank:
    the median of 4 values is the 2nd.
    """

    _BITS = 11
    _EXACT_BELOW = 1 << _BITS

    def __init__(self) -> None:
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0
        self.min = math.inf
        self.max = 0

    def add(self, value: int, times: int = 1) -> None:
        if value >= self._EXACT_BELOW:
            shift = value.bit_length() - self._BITS
            key = (shift << self._BITS) | (value >> shift)
        else:
            key = value
        self._buckets[key] = self._buckets.get(key, 0) + times
        self.count += times
        self.total += value * times
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def _bucket_value(self, key: int) -> int:
        if key < self._EXACT_BELOW:
            return key
        shift, mantissa = key >> self._BITS, key & (self._EXACT_BELOW - 1)
        middle = (mantissa << shift) + (1 << (shift - 1))
        return min(max(middle, int(self.min)), self.max)

    def quantile(self, q: float) -> int:
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if seen >= rank:
                return self._bucket_value(key)
        raise ValueError("quantile of an empty distribution")

    def summary(self) -> dict[str, int | float] | None:
        if not self.count:
            return None
        return {
            "min": int(self.min),
            "median": self.quantile(0.5),
            "p95": self.quantile(0.95),
            "max": self.max,
            "mean": round(self.total / self.count, 1),
            "total": self.total,
        }


class RowFingerprints:
    """Which rows were seen before, by a 64-bit hash of the row's bytes: an open-addressing hash
    table of 8-byte slots (a Python set of ints takes ~64 bytes per row). The table is a fixed
    anonymous mapping, so memory is only taken for the pages rows land on, up to `max_slots` * 8
    bytes; once 2/3 full it stops remembering new rows and duplicates are counted only against
    the rows it holds (`complete` turns False)."""

    def __init__(self, max_slots: int = 1 << 22) -> None:
        if max_slots & (max_slots - 1):
            raise ValueError("max_slots must be a power of two")
        self._mapping = mmap.mmap(-1, max_slots * 8)
        self._slots = memoryview(self._mapping).cast("q")
        self._mask = max_slots - 1
        self._capacity = max_slots * 2 // 3
        self.remembered = 0
        self.complete = True

    def seen_before(self, fingerprint: int) -> bool:
        fingerprint = fingerprint or 1  # 0 marks an empty slot
        slots, mask = self._slots, self._mask
        slot = fingerprint & mask
        while True:
            value = slots[slot]
            if value == fingerprint:
                return True
            if value == 0:
                break
            slot = (slot + 1) & mask
        if self.remembered < self._capacity:
            slots[slot] = fingerprint
            self.remembered += 1
        else:
            self.complete = False
        return False

    def close(self) -> None:
        self._slots.release()
        self._mapping.close()


class DuplicateRows:
    """Counts the lines (blank ones aside) that repeat an earlier line byte for byte."""

    def __init__(self, *, max_fingerprint_slots: int = 1 << 22) -> None:
        self._fingerprints = RowFingerprints(max_fingerprint_slots)
        self._rows = 0
        self._first_lines: list[int] = []

    def add(self, line_number: int, line: bytes) -> None:
        if line and not line.isspace() and self._fingerprints.seen_before(hash(line)):
            self._rows += 1
            if len(self._first_lines) < MAX_DUPLICATE_EXAMPLES:
                self._first_lines.append(line_number)

    def close(self) -> None:
        self._fingerprints.close()

    def result(self) -> dict[str, Any]:
        """The count, the first duplicate lines, and whether all were found; releases the table."""
        self.close()
        return {
            "rows": self._rows,
            "first_lines": self._first_lines,
            # False when the file had more distinct rows than the table holds: duplicates of
            # the later rows are then not all found.
            "complete": self._fingerprints.complete,
        }


def answer_chars(answer: str | list[dict[str, Any]]) -> int:
    """The characters of one side of a pair: its text, or its messages' text."""
    if isinstance(answer, str):
        return len(answer)
    chars = 0
    for message in answer:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part.get("text") or "") for part in content if isinstance(part, dict))
    return chars


class DatasetStats:
    """Accumulates the statistics of the accepted rows of one file (duplicates aside).

    `add_row` runs once per row, so it only notes the row's length in an array and counts its
    sequence of roles (files have few distinct ones); every FOLD_ROWS rows, `fold()` counts the
    lengths at C speed (Counter) and moves the counts into the bounded distributions, so the
    per-value Python work is done once per distinct length, not once per row.
    """

    FOLD_ROWS = 1 << 16

    def __init__(self) -> None:
        self._chars = Distribution()
        self._messages = Distribution()
        self._histogram = [0] * len(HISTOGRAM_EDGES)
        self._roles: Counter[str] = Counter()
        self._labels: Counter[str] = Counter()
        self._labels_complete = True
        # Counts of the task formats: "entities" per type (NER), "answers" answered / unanswerable (QA).
        self._counts: dict[str, Counter[str]] = {}
        self._pending_chars = array("q")
        self._pending_role_sequences: dict[tuple[str, ...], int] = {}
        self._chosen = Distribution()
        self._rejected = Distribution()
        self._chosen_longer = 0

    def add_row(self, text_chars: int, roles: Sequence[str] | None) -> None:
        self._pending_chars.append(text_chars)
        if roles is not None:
            sequences = self._pending_role_sequences
            key = tuple(roles)
            sequences[key] = sequences.get(key, 0) + 1

    def add_pair(self, chosen_chars: int, rejected_chars: int) -> None:
        """The lengths of a pair's two answers: DPO learns a preference for length too when the
        chosen answers are mostly the longer ones."""
        self._chosen.add(chosen_chars)
        self._rejected.add(rejected_chars)
        self._chosen_longer += chosen_chars > rejected_chars

    def add_label(self, label: str | int) -> None:
        label = str(label)  # to_canonical trains on str(label): 1 and "1" are one class
        if label in self._labels or len(self._labels) < MAX_DISTINCT_LABELS:
            self._labels[label] += 1
        else:
            self._labels_complete = False

    def add_count(self, kind: str, key: str) -> None:
        """One more `key` under `kind` (entity types are few, like labels: bounded the same way)."""
        counts = self._counts.setdefault(kind, Counter())
        if key in counts or len(counts) < MAX_DISTINCT_LABELS:
            counts[key] += 1

    def fold_when_due(self) -> None:
        """Fold once FOLD_ROWS rows are pending (call it after each batch of rows)."""
        if len(self._pending_chars) >= self.FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        """Move the counts of the rows added since the last fold into the distributions."""
        for chars, rows in Counter(self._pending_chars).items():
            self._chars.add(chars, rows)
            self._histogram[bisect_right(HISTOGRAM_EDGES, chars) - 1] += rows
        for roles, rows in self._pending_role_sequences.items():
            self._messages.add(len(roles), rows)
            for role in roles:
                self._roles[role] += rows
        del self._pending_chars[:]
        self._pending_role_sequences.clear()

    def _histogram_bins(self) -> list[dict[str, int | None]]:
        used = [index for index, rows in enumerate(self._histogram) if rows]
        if not used:
            return []
        bins: list[dict[str, int | None]] = []
        for index in range(used[0], used[-1] + 1):
            upper = HISTOGRAM_EDGES[index + 1] if index + 1 < len(HISTOGRAM_EDGES) else None
            bins.append({"from": HISTOGRAM_EDGES[index], "to": upper, "rows": self._histogram[index]})
        return bins

    def finish(self, duplicates: dict[str, Any] | None) -> dict[str, Any]:
        """The statistics as JSON-ready data, with DuplicateRows' result."""
        self.fold()
        messages = self._messages.total
        stats: dict[str, Any] = {
            "rows": self._chars.count,
            "chars_per_row": self._chars.summary(),
            "length_histogram": self._histogram_bins(),
            "messages_per_row": self._messages.summary(),
            "roles": dict(self._roles),
            "estimated_tokens": -(-self._chars.total // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * messages,
            "token_estimate": TOKEN_ESTIMATE_METHOD,
            "duplicates": duplicates,
        }
        if self._chosen.count:
            stats["pairs"] = {
                "chosen_chars": self._chosen.summary(),
                "rejected_chars": self._rejected.summary(),
                "chosen_longer": self._chosen_longer,
            }
        for kind, counts in self._counts.items():
            stats[kind] = dict(counts.most_common())
        if self._labels:
            stats["labels"] = dict(self._labels.most_common())
            stats["labels_complete"] = self._labels_complete
        return stats
