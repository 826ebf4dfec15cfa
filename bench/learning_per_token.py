"""Learning per token: does tunelab's default batching learn as much from the same data as packing?

    .venv/bin/python bench/learning_per_token.py [--epochs N] [--rows N] [--method lora|full]

`packing: auto` (the default) chooses length-grouped batches wherever no variable-length
attention kernel keeps packed examples apart, every CPU included; `train_throughput.py` shows
that it is the fastest there. Speed is only half of the question: a batching that trains faster
but learns less from each token would be a false saving. So this trains the same model on the
same rows for the same number of epochs (every row seen as often, the same tokens trained), once
per batching mode, and scores each result the same way on held-out rows.

The task is learnable by a small model and needs attention: each answer is the prompt's words
translated through a fixed random dictionary, with long-tailed lengths (as instruction data has)
so that packing and length grouping really make different batches. The score is the mean loss
and the token accuracy over the held-out answers' tokens, one row at a time (no batching effect
on the score). Printed: each mode's wall time, optimizer steps, trained tokens, held-out loss
and accuracy, and the default's ratios to the other modes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.contract.spec import TrainingSpec
from worker.ml.reporting import MemoryReporter
from worker.ml.tiny import WORDS, make_tiny_model

MODES = {"default": "auto", "packed": "on", "grouped": "off"}
MODEL = {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "vocab_size": 1024}


def generate_rows(count: int, seed: int) -> list[dict]:
    """Prompt/completion rows: the completion is the prompt's words through a fixed dictionary."""
    rng = random.Random(seed)
    vocabulary = sorted(set(WORDS))[:200]
    dictionary = dict(zip(vocabulary, random.Random(1234).sample(vocabulary, len(vocabulary)), strict=True))
    rows = []
    for _ in range(count):
        length = min(120, max(2, int(rng.lognormvariate(math.log(12), 0.9))))
        words = rng.choices(vocabulary, k=length)
        rows.append(
            {
                "prompt": "Translate: " + " ".join(words) + "\nAnswer:",
                "completion": " " + " ".join(dictionary[word] for word in words),
            }
        )
    return rows


def train_mode(packing: str, args, workdir: Path, train_file: Path) -> dict:
    from worker.ml import train

    spec = TrainingSpec(
        base_model="tiny",
        method=args.method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_length=512,
        packing=packing,
        learning_rate=args.learning_rate,
        save_steps=10**6,
        keep_checkpoints=1,
        seed=0,
    )
    reporter = MemoryReporter()
    started = time.perf_counter()
    result = train(
        spec,
        train_file=train_file,
        output_dir=workdir / packing,
        reporter=reporter,
        models_dir=workdir / "models",
        resume=False,
    )
    seconds = time.perf_counter() - started
    batching = next(message for message in reporter.messages() if message.startswith("Batching:"))
    return {
        "seconds": seconds,
        "steps": result.step,
        "trained_tokens": result.trained_tokens,
        "batching": batching,
        "final": result.final_dir,
    }


def held_out_score(final_dir: Path, method: str, workdir: Path, rows: list[dict]) -> tuple[float, float]:
    """Mean loss and token accuracy over the held-out completions' tokens, one row at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = workdir / "models" / "tiny"
    tokenizer = AutoTokenizer.from_pretrained(base)
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(final_dir)
    else:
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), final_dir)
    model.eval()
    loss_sum, right, tokens = 0.0, 0, 0
    with torch.no_grad():
        for row in rows:
            prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
            answer = tokenizer(row["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            input_ids = torch.tensor([prompt + answer])
            logits = model(input_ids=input_ids).logits[0, len(prompt) - 1 : -1]
            targets = torch.tensor(answer)
            loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            right += (logits.argmax(-1) == targets).sum().item()
            tokens += len(answer)
    return loss_sum / tokens, right / tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=4)
    parser.add_argument("--rows", type=int, default=1200)
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--only", nargs="+", choices=list(MODES), default=list(MODES))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="tunelab-learning-") as tmp:
        workdir = Path(tmp)
        make_tiny_model(workdir / "models" / "tiny", **MODEL)
        rows = generate_rows(args.rows + args.held_out, seed=0)
        train_file = workdir / "train.jsonl"
        train_file.write_text("".join(json.dumps(row) + "\n" for row in rows[: args.rows]))
        held_out = rows[args.rows :]
        print(
            f"tiny Llama ({MODEL['hidden_size']} wide, {MODEL['num_layers']} layers), {args.method}; "
            f"{args.rows} training rows, {args.held_out} held out; {args.epochs:g} epochs, batch {args.batch_size}, "
            f"learning rate {args.learning_rate:g}",
            flush=True,
        )
        figures = {}
        for name in args.only:
            run = train_mode(MODES[name], args, workdir, train_file)
            run["loss"], run["accuracy"] = held_out_score(run["final"], args.method, workdir, held_out)
            figures[name] = run
            print(
                f"  {name:8} {run['seconds']:7.1f} s  {run['steps']:5d} steps  {run['trained_tokens']:8d} tokens  "
                f"held-out loss {run['loss']:.3f}  token accuracy {run['accuracy']:.3f}  ({run['batching']})",
                flush=True,
            )
        if "default" in figures:
            default = figures["default"]
            for name, run in figures.items():
                if name != "default":
                    print(
                        f"default vs {name}: time x{default['seconds'] / run['seconds']:.2f}, held-out loss "
                        f"{default['loss'] - run['loss']:+.3f}, token accuracy {default['accuracy'] - run['accuracy']:+.3f}"
                    )


if __name__ == "__main__":
    main()
