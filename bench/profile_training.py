"""Where a CPU training run's time goes: the model's own work against tunelab's overhead.

    .venv/bin/pip install pyinstrument   # not among the test extras
    .venv/bin/python bench/profile_training.py [--rows N] [--epochs N] [--batch-size N] [--packing auto|on|off]

Trains the tiny preset (bench/train_throughput.py's model and instruction rows) with the
spec's defaults (logging every 5 steps, a checkpoint at the epoch's end), as a job runs it
through `worker.ml.train`, under pyinstrument's sampling profiler, and sorts the wall time
into the parts of a run: the forward and backward passes, the optimizer, the batches (sampler
and collator), logging and callbacks (tunelab's reporter among them), evaluation, checkpoint
saves, preparing (loading the model, tokenizing, packing) and the rest. The baseline is the
model's own work (forward, backward, optimizer): everything else is overhead, printed as its
share of the run, with the five costliest frames outside the model's work, so that a
regression names itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import PRESETS, generate_rows

from app.contract.spec import TrainingSpec
from worker.ml.reporting import MemoryReporter
from worker.ml.tiny import make_tiny_model

# (part, frame function names, a piece of the file path or ""): the first frame from the top
# that matches counts whole for its part; its callees are not looked at.
PARTS = [
    ("forward + backward", ("training_step",), ""),
    ("optimizer", ("step",), "torch/optim"),
    ("batches (sampler, collator)", ("get_batch_samples",), ""),
    ("checkpoint saves", ("_save_checkpoint",), ""),
    ("evaluation", ("evaluate",), "transformers/trainer"),
    ("logging, callbacks, reporter", ("log", "call_event"), ""),
    ("preparing (load, tokenize, pack)", ("prepare",), "worker/ml"),
]
MODEL_WORK = ("forward + backward", "optimizer")


def part_of(frame) -> str | None:
    for part, functions, path in PARTS:
        if frame.function in functions and path in (frame.file_path or ""):
            return part
    return None


def sort_time(root) -> tuple[dict[str, float], list[tuple[float, str]]]:
    """Seconds per part, and the leaf-most frames of the unattributed rest with their seconds."""
    parts: dict[str, float] = dict.fromkeys([part for part, _, _ in PARTS], 0.0)
    rest: list[tuple[float, str]] = []

    def walk(frame) -> None:
        part = part_of(frame)
        if part is not None:
            parts[part] += frame.time
            return
        if not frame.children:
            rest.append((frame.time, f"{frame.function} {frame.file_path_short}:{frame.line_no}"))
            return
        attributed_children = sum(child.time for child in frame.children)
        if frame.time - attributed_children > 0.05:  # the frame's own time
            rest.append((frame.time - attributed_children, f"{frame.function} {frame.file_path_short} (self)"))
        for child in frame.children:
            walk(child)

    walk(root)
    return parts, sorted(rest, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--epochs", type=float, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--packing", choices=["auto", "on", "off"], default="auto")
    args = parser.parse_args()
    try:
        from pyinstrument import Profiler
    except ImportError:
        sys.exit("this benchmark needs pyinstrument: .venv/bin/pip install pyinstrument")
    from worker.ml import train

    with tempfile.TemporaryDirectory(prefix="tunelab-profile-") as tmp:
        workdir = Path(tmp)
        make_tiny_model(workdir / "models" / "tiny", **PRESETS["tiny"])
        data = workdir / "rows.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in generate_rows(args.rows, seed=0)))
        spec = TrainingSpec(
            base_model="tiny",
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_seq_length=args.max_seq_length,
            packing=args.packing,
            seed=0,
        )
        profiler = Profiler(interval=0.005)
        started = time.perf_counter()
        profiler.start()
        result = train(
            spec, train_file=data, output_dir=workdir / "run", reporter=MemoryReporter(), models_dir=workdir / "models"
        )
        profiler.stop()
        seconds = time.perf_counter() - started
        shutil.rmtree(workdir / "run", ignore_errors=True)

    parts, rest = sort_time(profiler.last_session.root_frame())
    parts["the rest"] = max(0.0, seconds - sum(parts.values()))
    model_work = sum(parts[part] for part in MODEL_WORK)
    print(
        f"tiny preset, LoRA, {args.rows} rows, {args.epochs:g} epoch(s), batch {args.batch_size}, packing "
        f"{args.packing}: {result.step} steps, {result.trained_tokens} tokens in {seconds:.1f} s"
    )
    print(f"{'part':34} {'seconds':>8} {'share':>7}")
    for part, spent in parts.items():
        print(f"{part:34} {spent:8.2f} {spent / seconds:7.1%}")
    overhead = seconds - model_work
    print(
        f"model's own work (baseline) {model_work:.2f} s; everything else {overhead:.2f} s, "
        f"{overhead / model_work:.1%} of the baseline"
    )
    print("costliest frames outside the parts above:")
    for spent, where in rest[:5]:
        print(f"  {spent:6.2f} s  {where}")


if __name__ == "__main__":
    main()
