"""The dataset validator in a child process, fed through a pipe.

Validation is CPU-bound Python (parsing every line and checking it), and a thread running it
holds the server's GIL: the event loop then waits up to the 5 ms switch interval every time it
wants to run, and everything the loop does during an upload (reading the body, parsing the
multipart form, other requests) queues behind the validation. In a child process validation
runs on another core with its own interpreter, so the server keeps its own work and its
latency. On a two-core machine `bench/ingest.py --core-only` (512 MB of chat) ingests at
~210 MB/s this way against ~150 MB/s with a thread, at the price of a ~40 ms process start.

`ValidatorProcess` has DatasetValidator's interface: `feed()` writes to the child's stdin (and
blocks, without the GIL, while the child is a pipe-full behind), `finish()` closes it and reads
the report back from the child's stdout as JSON. Duplicate rows are counted here, in the server
process, while the child validates: hashing every line is a sixth of the validation's time, and
the server has that time to spare.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import orjson

from .lines import LineSplitter
from .stats import DuplicateRows
from .validation import (
    DEFAULT_MAX_ROW_CHARS,
    MAX_LISTED_ERRORS,
    DatasetValidator,
    ValidationReport,
    max_line_bytes_for,
)

PIPE_BYTES = 1 << 20  # Linux lets an unprivileged process grow a pipe to 1 MiB (the default is 64 KiB)
READ_BYTES = 1 << 20
# The directory that holds the `app` package, for a child started from another directory.
_IMPORT_ROOT = str(Path(__file__).resolve().parents[2])


class ValidatorCrashed(RuntimeError):
    pass


class ValidatorProcess:
    """A DatasetValidator running in a child process; call `close()` when done with it."""

    def __init__(self, *, max_row_chars: int = DEFAULT_MAX_ROW_CHARS, max_listed_errors: int = MAX_LISTED_ERRORS):
        python_path = os.pathsep.join(filter(None, [_IMPORT_ROOT, os.environ.get("PYTHONPATH")]))
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                __name__,
                f"--max-row-chars={max_row_chars}",
                f"--max-listed-errors={max_listed_errors}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": python_path},
        )
        try:
            fcntl.fcntl(self._child.stdin.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except (AttributeError, OSError):
            pass  # not Linux, or a lower pipe-max-size: the default pipe works, with more wake-ups
        self._lines = LineSplitter(max_line_bytes_for(max_row_chars))
        self._line_number = 0
        self._duplicates = DuplicateRows()

    def feed(self, chunk: bytes) -> None:
        try:
            self._child.stdin.write(chunk)
        except BrokenPipeError:
            raise self._crashed() from None
        self._count_duplicates(self._lines.feed(chunk))

    def _count_duplicates(self, lines: list[bytes | int]) -> None:
        for line in lines:
            self._line_number += 1
            if type(line) is bytes:
                self._duplicates.add(self._line_number, line)

    def finish(self) -> ValidationReport:
        try:
            stdout, stderr = self._child.communicate()
        except BrokenPipeError:
            raise self._crashed() from None
        if self._child.returncode != 0:
            raise self._crashed(stderr)
        self._count_duplicates(self._lines.finish())
        report = ValidationReport(**orjson.loads(stdout))
        report.stats["duplicates"] = self._duplicates.result()
        return report

    def close(self) -> None:
        """Stop the child if it still runs (the upload failed midway)."""
        self._duplicates.close()
        if self._child.poll() is None:
            self._child.kill()
        self._child.wait()
        for pipe in (self._child.stdin, self._child.stdout, self._child.stderr):
            try:
                pipe.close()
            except BrokenPipeError:
                pass  # the unflushed rest of a dead child's stdin

    def _crashed(self, stderr: bytes | None = None) -> ValidatorCrashed:
        if stderr is None:
            self._child.kill()
            stderr = self._child.stderr.read()
            self._child.wait()
        last_lines = b"\n".join(stderr.strip().splitlines()[-5:]).decode("utf-8", "replace")
        return ValidatorCrashed(f"the validator process ended with code {self._child.returncode}: {last_lines}")


def main(argv: list[str] | None = None) -> None:
    """The child: validate stdin, write the report to stdout as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-row-chars", type=int, required=True)
    parser.add_argument("--max-listed-errors", type=int, required=True)
    options = parser.parse_args(argv)
    validator = DatasetValidator(
        max_row_chars=options.max_row_chars, max_listed_errors=options.max_listed_errors, count_duplicates=False
    )
    stdin = sys.stdin.buffer
    while chunk := stdin.read1(READ_BYTES):
        validator.feed(chunk)
    sys.stdout.buffer.write(orjson.dumps(asdict(validator.finish())))


if __name__ == "__main__":
    main()
