"""What evaluation costs a job with the defaults: the time spent evaluating (the step-0 baseline,
one evaluation per epoch end, the task metrics of each) against the time spent training.

    .venv/bin/python bench/eval_cost.py [--data FILE.jsonl] [--rows N] [--eval-split 0.1]
        [--preset tiny|1b] [--device cpu|cuda] [--method lora|qlora|full] [--epochs N]

The model and data are train_throughput.py's (random weights built on the spot, instruction rows
of Alpaca-like lengths); the spec is the defaults but for `eval_split`, which a job needs to
evaluate at all, and the benchmark's batch size and max length. It runs the training library
as a job does (baseline, training with its evaluations, the final check) and times each call
of the trainer's `evaluate`. Target: evaluation at most 15% of training time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_throughput import PRESETS, generate_rows

from app.contract.spec import TrainingSpec
from worker.ml.reporting import MemoryReporter
from worker.ml.tiny import make_tiny_model

TARGET = 0.15


def measure(args, workdir: Path) -> dict[str, float]:
    from worker.ml import training_run

    spec = TrainingSpec(
        base_model=args.preset,
        method=args.method,
        epochs=args.epochs,
        eval_split=args.eval_split,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        seed=0,
        **({} if args.eval_samples is None else {"eval_samples": args.eval_samples}),
    )
    reporter = MemoryReporter()
    prepared = training_run.prepare(spec, train_file=args.data, reporter=reporter, models_dir=workdir / "models")
    trainer, _ = training_run.build_trainer(prepared, workdir / "checkpoints", reporter)
    evaluations: list[float] = []
    evaluate = trainer.evaluate

    def timed_evaluate(*positional, **named):
        started = time.perf_counter()
        try:
            return evaluate(*positional, **named)
        finally:
            evaluations.append(time.perf_counter() - started)

    trainer.evaluate = timed_evaluate
    started = time.perf_counter()
    training_run._train_from(trainer, None, reporter)
    training_run._evaluate_at_the_end(trainer)
    total = time.perf_counter() - started
    evaluating = sum(evaluations)
    return {
        "steps": trainer.state.global_step,
        "evaluations": len(evaluations),
        "evaluation_rows": len(prepared.eval_examples),
        "training_rows": len(prepared.train_examples),
        "evaluating_s": evaluating,
        "training_s": total - evaluating,
        "ratio": evaluating / (total - evaluating),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a JSONL dataset (default: generated instruction rows)")
    parser.add_argument("--rows", type=int, default=240, help="rows to generate when no --data is given")
    parser.add_argument("--eval-split", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=TrainingSpec.model_fields["epochs"].default)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--eval-samples", type=int, help="sample answers per evaluation (default: the spec's)")
    args = parser.parse_args()
    if args.device == "cpu":
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        make_tiny_model(workdir / "models" / args.preset, **PRESETS[args.preset])
        if args.data is None:
            args.data = workdir / "rows.jsonl"
            rows = generate_rows(args.rows, seed=0)
            args.data.write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = measure(args, workdir)
    print(
        f"{args.preset} {args.method} on {args.device}: {result['steps']} steps over {result['training_rows']} rows, "
        f"{result['evaluations']} evaluations (baseline, epoch ends, final) of {result['evaluation_rows']} rows"
    )
    print(f"training   {result['training_s']:8.1f} s")
    print(f"evaluation {result['evaluating_s']:8.1f} s")
    verdict = "within" if result["ratio"] <= TARGET else "OVER"
    print(f"evaluation / training = {result['ratio']:.1%} ({verdict} the {TARGET:.0%} target)")


if __name__ == "__main__":
    main()
