"""Training throughput: tunelab's default against its own batching modes, TRL, the tutorial
recipe and a bare PyTorch loop.

    .venv/bin/python bench/train_throughput.py [--data FILE.jsonl] [--device cpu|cuda]
        [--preset tiny|1b] [--method lora|qlora|full] [--steps N] [--repeats N] [--objective sft|dpo]

`--objective dpo` measures preference training instead: tunelab's DPO against TRL's
DPOTrainer with its defaults (bench/dpo_throughput.py).

The same model (random weights, built on the spot: no download), the same data, the same
hyperparameters, LoRA settings, batch size and max length, trained these ways:

- default: `worker.ml.train` as a job runs it, `packing: auto` (packed on a variable-length
  attention kernel, length-grouped batches elsewhere);
- packed / grouped: tunelab with `packing: on` (best-fit packed rows) and `packing: off`
  (length-grouped batches padded to their longest row);
- trl: TRL's `SFTTrainer` with its defaults (random order, each batch padded to its longest
  row), on the rows as conversations;
- trl-packed: the same with `packing=True` (best-fit packing, padding-free rows). Whether its
  packed examples attend to each other is checked on one of its batches: each example's logits
  against the example run alone (the check is printed with the figures);
- recipe: what the common tutorials do: transformers `Trainer`, the tokenizer padding every row
  to the max length, `DataCollatorForLanguageModeling`;
- ceiling: a bare PyTorch loop (forward, backward, AdamW) over the batches of tunelab's fastest
  mode in this run: the most this model can do with those batches.

Precision and gradient checkpointing are the same for all (tunelab's: bf16 autocast on GPU, fp32
on CPU, no checkpointing), where TRL's defaults would be bf16 and checkpointing: the figures
compare batching and engines, not memory trade-offs.

Each run is a process of its own (so peak memory is its own). A run's throughput is the real
(non-pad) tokens per second of its median step, after `--warmup` steps; the ways run in turn
`--repeats` times and the best run of each counts. Both choices are for shared machines, where
other work only ever slows a step or a run down. With `--device cuda` it also prints MFU: 6N
FLOPs per token for full fine-tuning, 4N for LoRA/QLoRA (no weight gradients for the frozen
base), N the weights of the matmuls, plus the attention term (12 x layers x width x the average
causal context, forward and backward). Run it with `--method lora` and `--method qlora` to
compare the two.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.contract import formats
from app.contract.spec import TrainingSpec
from worker.ml.data import Tokenization, read_jsonl, split_documents
from worker.ml.reporting import MemoryReporter
from worker.ml.tiny import WORDS, make_tiny_model

PRESETS = {
    # Small enough for a few minutes on two CPU cores. At this width attention over 1024-token
    # rows costs about as much as the matmuls, so packing (dense block-diagonal masks) is at a
    # disadvantage here that it does not have on real model widths.
    "tiny": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "vocab_size": 4096},
    # Llama-3.2-1B's shape: 1.24B parameters, tied 128k-row embeddings.
    "1b": {
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_layers": 16,
        "num_heads": 32,
        "num_kv_heads": 8,
        "vocab_size": 4096,
        "embedding_rows": 128256,
        "tie_word_embeddings": True,
        "dtype": "bfloat16",
    },
}
# Dense bf16 peak of the GPUs we expect, in FLOP/s (first match of the device name wins).
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12)]
# tunelab's own modes first: the ceiling runs over the batches of the faster one.
PHASES = ("default", "packed", "grouped", "trl", "trl-packed", "recipe", "ceiling")
TUNELAB_PACKING = {"default": "auto", "packed": "on", "grouped": "off"}


def generate_rows(count: int, seed: int) -> list[dict]:
    """Instruction rows with Alpaca/Dolly-like lengths: short prompts, long-tailed answers (~270 tokens on average)."""
    rng = random.Random(seed)

    def words(median: float, sigma: float) -> str:
        n = max(1, int(rng.lognormvariate(math.log(median), sigma)))
        return " ".join(rng.choices(WORDS, k=n))

    rows = []
    for _ in range(count):
        row = {"instruction": words(18, 0.5).capitalize() + "?", "output": words(150, 0.8).capitalize() + "."}
        if rng.random() < 0.4:
            row["input"] = words(40, 0.7)
        rows.append(row)
    return rows


def bench_spec(args, *, total_steps: int, packing: str = "auto") -> TrainingSpec:
    return TrainingSpec(
        base_model=args.preset,
        method=args.method,
        max_steps=total_steps,
        batch_size=args.batch_size,
        max_seq_length=args.max_seq_length,
        packing=packing,
        logging_steps=1,
        save_steps=10**6,  # no checkpoint while measuring
        seed=0,
    )


# -- the ways to train ------------------------------------------------------------------


class _TimingReporter(MemoryReporter):
    """Step timestamps taken after the GPU has finished the step."""

    def __init__(self, cuda: bool):
        super().__init__()
        self.cuda = cuda

    def progress(self, step: int, total_steps: int, epoch: float | None = None) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        super().progress(step, total_steps, epoch)


def run_tunelab(args, workdir: Path, spec: TrainingSpec) -> dict:
    from worker.ml import train

    reporter = _TimingReporter(args.device == "cuda")
    train(
        spec,
        train_file=args.data,
        output_dir=workdir / "tunelab",
        reporter=reporter,
        models_dir=workdir / "models",
        resume=False,
    )
    tokens = dict(reporter.series("tokens_seen"))
    return {"timeline": [(t, tokens[step]) for step, _, t in reporter.steps]}


def hf_model(spec: TrainingSpec, source: Path, cuda: bool):
    """The model as the tutorials and TRL's docs build it, with tunelab's LoRA settings."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if cuda else torch.float32
    if spec.method.value == "qlora":
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quantization, device_map={"": 0 if cuda else "cpu"}
        )
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype if spec.method.value == "lora" else torch.float32
        )
    if spec.uses_adapter:
        lora = spec.lora
        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    return model


def step_times(timeline: list, cuda: bool):
    """A callback that appends (time, real tokens seen) to `timeline` at each optimizer step."""
    from transformers import TrainerCallback

    class StepTimes(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if cuda:
                import torch

                torch.cuda.synchronize()
            timeline.append((time.perf_counter(), state.num_input_tokens_seen))

    return StepTimes()


def run_recipe(args, workdir: Path, spec: TrainingSpec) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    source = workdir / "models" / args.preset
    tokenizer = AutoTokenizer.from_pretrained(source)
    texts = [render_plain(tokenizer, row) for row in read_jsonl(args.data)]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], padding="max_length", truncation=True, max_length=spec.max_seq_length),
        batched=True,
        remove_columns=["text"],
    )
    cuda = args.device == "cuda"
    model = hf_model(spec, source, cuda)
    timeline: list = []
    targs = TrainingArguments(
        output_dir=str(workdir / "recipe"),
        per_device_train_batch_size=spec.batch_size,
        learning_rate=spec.effective_learning_rate,
        max_steps=spec.max_steps,
        bf16=cuda,
        use_cpu=not cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",  # counts attention_mask: real tokens
        seed=spec.seed,
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    Trainer(
        model=model, args=targs, train_dataset=dataset, data_collator=collator, callbacks=[step_times(timeline, cuda)]
    ).train()
    return {"timeline": timeline}


def trl_rows(tokenizer, rows: list[dict]) -> list[dict]:
    """The rows in TRL's dataset formats: conversations as `messages`, raw prompt/completion pairs and text as they are."""
    out = []
    for row in rows:
        example = formats.to_canonical(row).example
        if isinstance(example, formats.Conversation) and not example.raw:
            out.append({"messages": example.messages})
        elif isinstance(example, formats.Conversation):
            out.append({"prompt": example.messages[0]["content"], "completion": example.messages[1]["content"]})
        elif isinstance(example, formats.PlainText):
            out.append({"text": example.text})
        else:
            raise SystemExit("the benchmark trains causal LMs; text+label rows are not supported")
    return out


def run_trl(args, workdir: Path, spec: TrainingSpec, *, packing: bool) -> dict:
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    source = workdir / "models" / args.preset
    tokenizer = AutoTokenizer.from_pretrained(source)
    dataset = Dataset.from_list(trl_rows(tokenizer, read_jsonl(args.data)))
    cuda = args.device == "cuda"
    model = hf_model(spec, source, cuda)
    timeline: list = []
    config = SFTConfig(
        output_dir=str(workdir / ("trl-packed" if packing else "trl")),
        per_device_train_batch_size=spec.batch_size,
        max_length=spec.max_seq_length,
        learning_rate=spec.effective_learning_rate,
        max_steps=spec.max_steps,
        packing=packing,
        # the same precision and no activation checkpointing, as for every way measured here
        bf16=cuda,
        gradient_checkpointing=False,
        use_cpu=not cuda,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        seed=spec.seed,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[step_times(timeline, cuda)],
    )
    leak = examples_leak(trainer) if packing else None
    trainer.train()
    return {"timeline": timeline, "leak": leak}


def examples_leak(trainer) -> float:
    """The largest difference between the logits an example gets in one of the trainer's packed
    batches and those it gets alone: about 0 when packed examples stay apart."""
    import torch

    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {key: value.to(model.device) for key, value in batch.items() if isinstance(value, torch.Tensor)}
    inputs["use_cache"] = False  # as SFTTrainer.compute_loss passes it
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(**{key: value for key, value in inputs.items() if key != "labels"}).logits.float()
            positions = inputs["position_ids"]
            worst = 0.0
            for row in range(positions.shape[0]):
                starts = [*(positions[row] == 0).nonzero().flatten().tolist(), positions.shape[1]]
                for start, stop in itertools.pairwise(starts):
                    alone = model(input_ids=inputs["input_ids"][row : row + 1, start:stop], use_cache=False).logits
                    difference = (packed[row, start:stop] - alone[0].float()).abs().max().item()
                    worst = max(worst, difference)
    finally:
        model.train(was_training)
    return worst


def render_plain(tokenizer, row: dict) -> str:
    """A row as one text, the way tutorials feed the recipe: chat template, or prompt + completion."""
    example = formats.to_canonical(row).example
    if isinstance(example, formats.Conversation) and not example.raw:
        return tokenizer.apply_chat_template(example.messages, tokenize=False)
    if isinstance(example, formats.Conversation):
        return example.messages[0]["content"] + example.messages[1]["content"] + tokenizer.eos_token
    if isinstance(example, formats.PlainText):
        return example.text + tokenizer.eos_token
    raise SystemExit("the benchmark trains causal LMs; text+label rows are not supported")


def run_ceiling(args, workdir: Path, spec: TrainingSpec) -> dict:
    import contextlib

    import torch

    from worker.ml.data import REAL_TOKENS_KEY
    from worker.ml.training_run import build_trainer, prepare

    prepared = prepare(spec, train_file=args.data, reporter=MemoryReporter(), models_dir=workdir / "models")
    # Only for its data loader: the sampler (random over packed rows, or length-grouped) and collator of
    # the tunelab mode the spec names.
    loader = build_trainer(prepared, workdir / "ceiling", MemoryReporter())[0].get_train_dataloader()
    cuda = args.device == "cuda"
    device = "cuda" if cuda else "cpu"
    model = prepared.model
    if spec.method.value != "qlora":
        model = model.to(device)
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable({"use_reentrant": False})
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=spec.effective_learning_rate, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    timeline, tokens = [], 0
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for _, batch in zip(range(spec.max_steps), batches):
        tokens += batch.pop(REAL_TOKENS_KEY)
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        timeline.append((time.perf_counter(), tokens))
    return {"timeline": timeline}


# -- measuring ---------------------------------------------------------------------------------


def flops_per_token(args, workdir: Path) -> float:
    """Model FLOPs per real token, forward and backward, by the method's rule plus attention."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(workdir / "models" / args.preset)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    matmul_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    per_weight = 6 if args.method == "full" else 4
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models" / args.preset)
    examples = Tokenization(tokenizer, max_length=args.max_seq_length)(read_jsonl(args.data))
    # Text rows are not truncated: they are cut into pieces of at most the max length, each its own context.
    lengths = [len(ids) for ids in split_documents(examples, args.max_seq_length).input_ids]
    average_context = sum(n * (n + 1) / 2 for n in lengths) / sum(lengths)
    width = config.num_attention_heads * (config.hidden_size // config.num_attention_heads)
    attention = 12 * config.num_hidden_layers * width * average_context
    return per_weight * matmul_weights + attention


def peak_memory_mb(cuda: bool) -> float:
    if cuda:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(args) -> None:
    """Child process: run one way of training and print its figures as the last line of JSON."""
    workdir = Path(args.workdir)
    total_steps = args.warmup + args.steps
    if args.phase in TUNELAB_PACKING:
        run = run_tunelab(args, workdir, bench_spec(args, total_steps=total_steps, packing=TUNELAB_PACKING[args.phase]))
    elif args.phase == "ceiling":
        run = run_ceiling(args, workdir, bench_spec(args, total_steps=total_steps, packing=args.ceiling_packing))
    elif args.phase == "recipe":
        run = run_recipe(args, workdir, bench_spec(args, total_steps=total_steps))
    else:
        run = run_trl(args, workdir, bench_spec(args, total_steps=total_steps), packing=args.phase == "trl-packed")
    timeline = run["timeline"][args.warmup - 1 :]
    rates = [(tokens - before) / (end - start) for (start, before), (end, tokens) in itertools.pairwise(timeline)]
    figures = {
        "tokens_per_second": statistics.median(rates),
        "steps": len(rates),
        "seconds": timeline[-1][0] - timeline[0][0],
        "peak_memory_mb": peak_memory_mb(args.device == "cuda"),
        "leak": run.get("leak"),
    }
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, help="a JSONL dataset in any supported causal-LM format (default: generated)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--method", choices=["lora", "qlora", "full"], default="lora")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way, interleaved; the best one counts")
    parser.add_argument("--warmup", type=int, default=1, help="steps run before measuring")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=800, help="rows to generate when no --data is given")
    parser.add_argument("--objective", choices=["sft", "dpo"], default="sft", help="dpo: against TRL's DPOTrainer")
    parser.add_argument(
        "--only", nargs="+", choices=PHASES, default=list(PHASES), help="measure these ways only (default: all)"
    )
    # A child run of one way: these ways, or "tunelab" / "trl" of the DPO benchmark (bench/dpo_throughput.py).
    parser.add_argument("--phase", choices=(*PHASES, "tunelab"), help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-packing", choices=["on", "off"], default="off", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.objective == "dpo":
        import dpo_throughput

        return dpo_throughput.run_phase(args) if args.phase else dpo_throughput.main(args, PRESETS)
    if args.phase:
        return run_phase(args)
    if args.device == "cuda" and args.preset == "tiny":
        print("note: the tiny preset cannot keep a GPU busy; use --preset 1b for meaningful GPU figures")

    phases = [phase for phase in PHASES if phase in args.only]
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-") as tmp:
        workdir = Path(tmp)
        make_tiny_model(workdir / "models" / args.preset, **PRESETS[args.preset])
        if args.data is None:
            args.data = workdir / "generated.jsonl"
            args.data.write_text("".join(json.dumps(row) + "\n" for row in generate_rows(args.rows, seed=0)))
        args.data = args.data.resolve()
        print(
            f"model: {args.preset} preset, {args.method}, {args.device}; data: {args.data.name}; batch {args.batch_size} "
            f"x max length {args.max_seq_length}; {args.warmup} warm-up + {args.steps} measured steps each; "
            f"load average before: {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        results: dict[str, dict] = {}
        for round_ in range(args.repeats):  # interleaved, so a busy spell on the machine hits one run, not one way
            for phase in phases:
                figures = run_child(args, tmp, phase, ceiling_packing(results))
                print(
                    f"  run {round_ + 1} {phase:10s} {figures['tokens_per_second']:8.0f} real tokens/s  "
                    f"(median of {figures['steps']} steps, {figures['seconds']:.1f} s in all)",
                    flush=True,
                )
                if phase not in results or figures["tokens_per_second"] > results[phase]["tokens_per_second"]:
                    results[phase] = figures
                    if phase == "ceiling":
                        results[phase]["batches"] = "packed" if ceiling_packing(results) == "on" else "grouped"
        report(args, workdir, results)


def ceiling_packing(results: dict[str, dict]) -> str:
    """The batches of tunelab's fastest mode measured so far (length-grouped until one is)."""
    modes = {"on": results.get("packed"), "off": results.get("grouped")}
    measured = {packing: figures["tokens_per_second"] for packing, figures in modes.items() if figures}
    return max(measured, key=measured.get) if measured else "off"


def run_child(args, workdir: str, phase: str, ceiling_packing: str) -> dict:
    command = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--workdir",
        workdir,
        "--data",
        str(args.data),
        "--device",
        args.device,
        "--preset",
        args.preset,
        "--method",
        args.method,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch-size",
        str(args.batch_size),
        "--max-seq-length",
        str(args.max_seq_length),
        "--ceiling-packing",
        ceiling_packing,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{phase} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args, workdir: Path, results: dict[str, dict]) -> None:
    print(f"best of {args.repeats} runs each (load average of the machine now: {os.getloadavg()[0]:.1f}):")
    default = results.get("default", {}).get("tokens_per_second")
    print(f"{'way':12s} {'real tokens/s':>14s} {'default/way':>12s} {'peak memory':>12s}")
    for phase, figures in results.items():
        rate = figures["tokens_per_second"]
        ratio = f"{default / rate:11.2f}x" if default else f"{'':12s}"
        note = f"  (over tunelab's {figures['batches']} batches)" if phase == "ceiling" else ""
        print(f"{phase:12s} {rate:14.0f} {ratio} {figures['peak_memory_mb']:9.0f} MB{note}")
    if "trl-packed" in results:
        leak = results["trl-packed"]["leak"]
        verdict = "yes, they attend to each other" if leak > 1e-3 else "no"
        print(f"TRL packing: packed examples leak into each other: {verdict} (largest logit difference {leak:.2g})")
    if default:
        if "trl" in results:
            print(f"target: default/trl >= 1.5x: {default / results['trl']['tokens_per_second']:.2f}x")
        others = {p: f["tokens_per_second"] for p, f in results.items() if p not in ("default", "ceiling")}
        if others:
            best = max(others, key=others.get)
            print(f"target: default/best other way ({best}) >= 0.9: {default / others[best]:.2f}")
    if args.device == "cuda":
        import torch

        name = torch.cuda.get_device_name()
        peak = next((flops for key, flops in PEAK_BF16 if key in name), None)
        per_token = flops_per_token(args, workdir)
        for phase, figures in results.items():
            achieved = per_token * figures["tokens_per_second"]
            mfu = f"{achieved / peak:6.1%}" if peak else "(unknown peak for this GPU)"
            print(f"MFU {phase:12s} {mfu}  ({achieved / 1e12:.0f} TFLOP/s on {name})")
        print("targets: the default's MFU >= 40% with --method lora; qlora within 30% of lora (run both)")


if __name__ == "__main__":
    main()
