"""DPO throughput: tunelab's DPO against TRL's `DPOTrainer` with its defaults, on the same pairs.

    .venv/bin/python bench/train_throughput.py --objective dpo [--device cpu|cuda]
        [--preset tiny|1b] [--method lora|qlora|full] [--steps N]

The same model (random weights, built on the spot), the same generated preference pairs, batch
size, max length and learning rate, trained two ways:

1. tunelab: `worker.ml.train` with `objective: dpo`, as a job runs it;
2. trl: `DPOTrainer` as its documentation shows it: a `DPOConfig` with the library's defaults
   (which include gradient checkpointing), the model and, for adapters, a `peft_config`.

Throughput is real (non-pad) tokens per second of the median step after the warm-up, chosen
and rejected sequences both counted (their attention masks), best of `--repeats` interleaved
runs, each a process of its own.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.contract.spec import TrainingSpec
from worker.ml.tiny import WORDS, make_tiny_model

PHASES = ("tunelab", "trl")


def generate_pairs(count: int, seed: int) -> list[dict]:
    """Chat preference pairs: a short question, two long-tailed answers of different lengths."""
    rng = random.Random(seed)

    def words(median: float, sigma: float) -> str:
        n = max(1, int(rng.lognormvariate(math.log(median), sigma)))
        return " ".join(rng.choices(WORDS, k=n)).capitalize()

    return [
        {
            "prompt": [{"role": "user", "content": words(20, 0.5) + "?"}],
            "chosen": [{"role": "assistant", "content": words(120, 0.7) + "."}],
            "rejected": [{"role": "assistant", "content": words(90, 0.7) + "."}],
        }
        for _ in range(count)
    ]


def bench_spec(args, *, total_steps: int) -> TrainingSpec:
    return TrainingSpec(
        base_model=args.preset,
        method=args.method,
        objective="dpo",
        max_steps=total_steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        logging_steps=1,
        save_steps=10**6,
        seed=0,
    )


def run_tunelab(args, workdir: Path, spec: TrainingSpec) -> list[tuple[float, float]]:
    """tunelab's run, timed exactly as the supervised benchmark times it."""
    from train_throughput import run_tunelab as timed_tunelab_run

    return timed_tunelab_run(args, workdir, spec)["timeline"]


def run_trl(args, workdir: Path, spec: TrainingSpec) -> list[tuple[float, float]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    cuda = args.device == "cuda"
    source = workdir / "models" / args.preset
    tokenizer = AutoTokenizer.from_pretrained(source)
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    dtype = torch.bfloat16 if cuda else torch.float32
    kwargs = {}
    if spec.method.value == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        kwargs["device_map"] = {"": 0 if cuda else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    peft_config = None
    if spec.uses_adapter:
        lora = spec.lora
        peft_config = LoraConfig(
            r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules
        )
    timeline = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, targs, state, control, **kw):
            if cuda:
                torch.cuda.synchronize()
            timeline.append((time.perf_counter(), state.num_input_tokens_seen))

    config = DPOConfig(
        output_dir=str(workdir / "trl"),
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.effective_learning_rate,
        max_steps=spec.max_steps,
        max_length=spec.max_seq_length,
        bf16=cuda,
        use_cpu=not cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",  # the attention masks' ones: real tokens
        seed=spec.seed,
    )
    DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[StepTimes()],
    ).train()
    return timeline


def run_phase(args) -> None:
    """Child process: one way of training; its figures as the last line of JSON."""
    workdir = Path(args.workdir)
    spec = bench_spec(args, total_steps=args.warmup + args.steps)
    timeline = {"tunelab": run_tunelab, "trl": run_trl}[args.phase](args, workdir, spec)[args.warmup - 1 :]
    rates = [(tokens - before) / (end - start) for (start, before), (end, tokens) in itertools.pairwise(timeline)]
    print(json.dumps({"tokens_per_second": statistics.median(rates), "steps": len(rates)}))


def main(args, presets: dict) -> None:
    """Both ways in turn, `--repeats` times, in processes of their own; the best run of each counts."""
    with tempfile.TemporaryDirectory(prefix="tunelab-dpo-bench-") as tmp:
        workdir = Path(tmp)
        make_tiny_model(workdir / "models" / args.preset, **presets[args.preset])
        if args.data is None:
            args.data = workdir / "pairs.jsonl"
            args.data.write_text("".join(json.dumps(row) + "\n" for row in generate_pairs(args.rows, seed=0)))
        print(
            f"DPO, model: {args.preset} preset, {args.method}, {args.device}; data: {Path(args.data).name}; batch "
            f"{args.batch_size} pairs x max length {args.max_seq_length}; {args.warmup} warm-up + {args.steps} "
            "measured steps each"
        )
        best: dict[str, float] = {}
        for round_ in range(args.repeats):
            for phase in PHASES:
                command = [sys.executable, str(Path(__file__).with_name("train_throughput.py")), "--objective", "dpo"]
                command += ["--phase", phase, "--workdir", tmp, "--data", str(args.data), "--device", args.device]
                command += ["--preset", args.preset, "--method", args.method, "--steps", str(args.steps)]
                command += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
                command += ["--max-seq-length", str(args.max_seq_length)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"{phase} failed:\n{done.stderr[-4000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                print(
                    f"  run {round_ + 1} {phase:8s} {figures['tokens_per_second']:8.0f} real tokens/s "
                    f"(median of {figures['steps']} steps)",
                    flush=True,
                )
                best[phase] = max(best.get(phase, 0.0), figures["tokens_per_second"])
        print(f"best of {args.repeats} runs each (load average now: {os.getloadavg()[0]:.1f}):")
        for phase in PHASES:
            print(f"{phase:8s} {best[phase]:10.0f} real tokens/s")
        print(f"ratio tunelab/trl: {best['tunelab'] / best['trl']:5.2f}x  (target >= 1.0)")
