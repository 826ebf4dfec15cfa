"""What sample answers cost at each evaluation, against the evaluation loop and training.

    .venv/bin/python bench/sample_cost.py [--model tiny-llama] [--models-dir DIR] [--rows N] [--steps S]

Trains the tiny Llama (built on the spot unless --models-dir names a directory with --model in
it) on chat rows with the default sample settings (8 prompts, 48 new tokens), evaluating every
S/4 steps on a 10% hold-out, and prints per evaluation the seconds spent answering the samples
batched (within their time budget, see `worker.ml.samples.TIME_SHARE`), all eight whole one
prompt at a time for comparison, and in the evaluation loop, and the share of the run's time
that samples took.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.contract.spec import TrainingSpec
from worker.ml import MemoryReporter
from worker.ml.samples import Sampler
from worker.ml.tiny import make_tiny_model
from worker.ml.training_run import build_trainer, prepare

THINGS = {"car": "red", "tree": "green", "sky": "blue", "sun": "yellow", "night": "black", "snow": "white"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tunelab-sample-cost-"))
    models_dir = args.models_dir or work / "models"
    if args.models_dir is None:
        make_tiny_model(models_dir / args.model)
    names = sorted(THINGS)
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What colour is the {names[i % 6]}? Say it in a sentence."},
                {"role": "assistant", "content": f"The {names[i % 6]} is {THINGS[names[i % 6]]}."},
            ]
        }
        for i in range(args.rows)
    ]
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = TrainingSpec(base_model=args.model, max_steps=args.steps, eval_split=0.1, eval_steps=max(1, args.steps // 4))
    reporter = MemoryReporter()
    prepared = prepare(spec, train_file=data, reporter=reporter, models_dir=models_dir)
    trainer, _ = build_trainer(prepared, work / "checkpoints", reporter)

    timings: dict[str, list[float]] = {"batched": []}
    sampler = next(callback.sampler for callback in trainer.callback_handler.callbacks if hasattr(callback, "sampler"))
    answer = sampler.answers

    def timed_answers(model, time_limit_s=None):
        start = time.perf_counter()
        rows = answer(model, time_limit_s)
        timings["batched"].append(time.perf_counter() - start)
        return rows

    sampler.answers = timed_answers
    started = time.perf_counter()
    trainer.train()
    run_s = time.perf_counter() - started
    eval_s = sum(entry.get("eval_runtime", 0.0) for entry in trainer.state.log_history)

    whole = Sampler.of(spec, prepared.tokenizer, prepared.task, prepared.eval_examples)
    for batch_size, name in ((spec.batch_size, "whole, batched"), (1, "whole, one at a time")):
        whole.batch_size = batch_size
        start = time.perf_counter()
        whole.answers(trainer.model)
        timings[name] = [time.perf_counter() - start]

    evaluations = len(timings["batched"]) - 1  # the first is the base model's
    per_evaluation = sum(timings["batched"]) / len(timings["batched"])
    print(
        f"device: {prepared.plan.describe()}; {spec.eval_samples} prompts, {spec.eval_sample_max_new_tokens} new tokens"
    )
    print(f"samples within their budget, batched ({spec.batch_size} a batch): {per_evaluation:.2f} s per evaluation")
    print(f"all {spec.eval_samples} answers whole, batched: {timings['whole, batched'][0]:.2f} s")
    print(f"all {spec.eval_samples} answers whole, one prompt at a time: {timings['whole, one at a time'][0]:.2f} s")
    print(f"evaluation loop: {eval_s / max(evaluations, 1):.2f} s per evaluation ({evaluations} evaluations)")
    print(f"run: {run_s:.1f} s; samples took {sum(timings['batched']) / run_s:.1%} of it")


if __name__ == "__main__":
    main()
