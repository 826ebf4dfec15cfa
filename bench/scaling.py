"""Scaling of one job over several devices: tokens per second at 1, 2, ... processes, and the
scaling efficiency (throughput at N / (N x throughput at 1)).

    .venv/bin/python bench/scaling.py [--processes 1,2] [--device cpu|cuda] [--steps N]
        [--parallelism ddp|fsdp] [--method lora|full] [--batch-size B] [--max-length L]

Each run is `worker.ml.train` as a job runs it: one process for one device (the single-device
path, no torchrun), else torchrun's elastic launch with one process per device, every rank
running the same `train` (DDP or FSDP through the Trainer), as `worker.distributed_job` starts
them. The batch size is per device (weak scaling: N devices train N times the rows per step),
so the ideal is N times the tokens per second of one device. A run's figure is the median of
the logged throughputs (real, non-pad tokens of every rank per second) after the first quarter
of its steps.

On CPU a "device" is a process with its share of the cores: with `--processes 1,2` on a
2-core machine, one device is one process of one thread, two devices two such processes, and
the single process with every core is printed beside them for reference. The model is a tiny
Llama built on the spot (random weights; no download); the data, rows of a learnable mapping.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "vocab_size": 4096}


def _rows(count: int, seed: int = 0) -> list[dict]:
    from worker.ml.tiny import WORDS

    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120)))
        rows.append({"prompt": prompt, "completion": answer})
    return rows


def rank_run(config_file: Path) -> None:
    """One process of a run (under torchrun when there are several): train, and rank 0 writes its figures."""
    from app.contract.spec import TrainingSpec
    from worker.ml import distributed
    from worker.ml.reporting import MemoryReporter
    from worker.ml.training_run import train

    config = json.loads(config_file.read_text())
    spec = TrainingSpec.model_validate(config["spec"])
    if spec.distributed:
        distributed.start_process_group()
    reporter = MemoryReporter()
    started = time.perf_counter()
    train(
        spec,
        train_file=Path(config["data"]),
        output_dir=Path(config["output"]),
        reporter=reporter,
        models_dir=Path(config["models"]),
        resume=False,
    )
    if distributed.is_main_process():
        throughputs = [value for _, value in reporter.series("tokens_per_second")]
        steady = throughputs[len(throughputs) // 4 :] or throughputs
        Path(config["figures"]).write_text(
            json.dumps({"tokens_per_second": statistics.median(steady), "seconds": time.perf_counter() - started})
        )
    distributed.end_process_group()


def _run(workdir: Path, name: str, spec: dict, processes: int, threads: int, args) -> float:
    config = {
        "spec": spec,
        "data": str(workdir / "data.jsonl"),
        "output": str(workdir / f"out-{name}"),
        "models": str(workdir / "models"),
        "figures": str(workdir / f"figures-{name}.json"),
    }
    config_file = workdir / f"config-{name}.json"
    config_file.write_text(json.dumps(config))
    me = [str(Path(__file__).resolve()), "--rank-run", str(config_file)]
    if processes == 1:
        command = [sys.executable, *me]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *me]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return json.loads(Path(config["figures"]).read_text())["tokens_per_second"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank-run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--processes", default="1,2", help="Device counts to measure, e.g. 1,2,4,8.")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parallelism", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4, help="Rows per device per step.")
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    if args.rank_run:
        rank_run(args.rank_run)
        return

    from worker.ml.tiny import make_tiny_model

    counts = sorted({int(part) for part in args.processes.split(",")})
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="tunelab-scaling-") as tmp:
        workdir = Path(tmp)
        make_tiny_model(workdir / "models" / "tiny", **TINY)
        rows = _rows(args.batch_size * max(counts) * args.steps)
        (workdir / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        base = {
            "base_model": "tiny",
            "method": args.method,
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "max_seq_length": args.max_length,
            "logging_steps": 1,
            "save_steps": args.steps,
            "packing": "off",
            "lr_scheduler": "constant",
        }
        # On CPU every device gets the same share of the cores; a GPU brings its own compute.
        threads = max(1, cores // max(counts)) if args.device == "cpu" else 1
        figures = {}
        for count in counts:
            spec = {**base, "num_devices": count, **({"parallelism": args.parallelism} if count > 1 else {})}
            figures[count] = _run(workdir, f"x{count}", spec, count, threads, args)
        reference = None
        if args.device == "cpu" and threads < cores:
            reference = _run(workdir, "all-cores", {**base, "num_devices": 1}, 1, cores, args)

    print(
        f"tunelab scaling: {args.method}, {args.parallelism}, tiny Llama, {args.batch_size} rows x "
        f"{args.max_length} tokens per device per step, {args.steps} steps, on {args.device}"
        + (f" ({cores} cores, {threads} thread(s) per device)" if args.device == "cpu" else "")
    )
    print(f"{'devices':>8} {'tokens/s':>10} {'ideal':>10} {'efficiency':>10}")
    one = figures[counts[0]] / counts[0]
    for count, speed in figures.items():
        print(f"{count:>8} {speed:>10.0f} {one * count:>10.0f} {speed / (one * count):>10.2f}")
    if reference is not None:
        print(f"{'1 (all)':>8} {reference:>10.0f}   (one process using all {cores} cores, for reference)")
    if args.device == "cpu":
        print(
            "\nOn CPU the devices share one machine: its memory bandwidth, its caches and the gloo\n"
            "all-reduce of the gradients (through the loopback, every step) come out of the same cores\n"
            "that compute. Efficiency below 1 here measures that sharing, not what GPUs with their own\n"
            "memory and NVLink reach; the 'all cores' line shows what one process makes of the machine."
        )


if __name__ == "__main__":
    main()
