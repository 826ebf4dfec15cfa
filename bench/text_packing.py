"""Tokens kept of a continued pre-training file: truncating each row against concatenate-and-chunk.

    .venv/bin/python bench/text_packing.py [--rows N] [--max-length L] [--median-words W]

Builds a web-text-like JSONL file on the spot (multi-paragraph documents whose lengths follow
a log-normal law with a long tail, as web pages do), tokenizes it with the tiny tokenizer, and
prints the share of the file's tokens that reach training when each row is cut to the max
length (what packing did before) and with text laid end to end and cut into chunks (what
`worker.ml.data.pack` does), with the number of rows and how full they are.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.ml.data import Tokenization, pack
from worker.ml.tiny import WORDS, make_tokenizer


def documents(rows: int, median_words: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(rows):
        words = max(20, int(rng.lognormvariate(0, 0.8) * median_words))
        paragraphs, written = [], 0
        while written < words:
            sentences = []
            for _ in range(rng.randint(2, 6)):
                sentence = rng.choices(WORDS, k=rng.randint(6, 22))
                sentences.append(" ".join(sentence).capitalize() + rng.choice([".", ".", ".", "?", "!"]))
                written += len(sentence)
            paragraphs.append(" ".join(sentences))
        out.append({"text": "\n\n".join(paragraphs)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--median-words", type=int, default=600)
    args = parser.parse_args()

    tokenizer = make_tokenizer()
    tokenizer.model_max_length = 10**9  # rows longer than a model's context are the point here
    examples = Tokenization(tokenizer, max_length=args.max_length)(documents(args.rows, args.median_words))
    total = examples.tokens
    lengths = sorted(len(ids) for ids in examples.input_ids)
    truncated_kept = sum(min(n, args.max_length) for n in lengths)
    packed = pack(examples, args.max_length)
    packed_kept = sum(len(ids) for ids in packed["input_ids"])
    print(
        f"{args.rows} text rows, {total:,} tokens; median row {lengths[len(lengths) // 2]:,} tokens, "
        f"{sum(n > args.max_length for n in lengths)} rows longer than the max length {args.max_length}"
    )
    print(f"truncate each row:   {truncated_kept:,} tokens kept ({truncated_kept / total:.1%})")
    print(
        f"concatenate + chunk: {packed_kept:,} tokens kept ({packed_kept / total:.1%}) in {len(packed):,} rows, "
        f"{packed_kept / (len(packed) * args.max_length):.1%} full"
    )
    print(f"ratio: {packed_kept / truncated_kept:.2f}x the tokens")


if __name__ == "__main__":
    main()
