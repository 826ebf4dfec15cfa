"""train(): each method learns, saves what it learned, reports, stops and resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import weakref
from collections import Counter
from pathlib import Path

import pytest
import torch

from worker.ml import ConfigurationError, DatasetError, MemoryReporter, ModelNotFoundError, train
from worker.ml.data import IGNORE_INDEX, Task
from worker.ml.loading import (
    DevicePlan,
    cuda_attention,
    load_model,
    plan_device,
    quantization_config_for,
    resolve_model,
)
from worker.ml.saving import save_final
from worker.ml.training_run import build_trainer, prepare

METHODS = ["full", "lora", "qlora"]


def mean(values):
    return sum(values) / len(values)


def every(interval: int, total: int) -> list[int]:
    """Steps at which something happens every `interval` steps, and at the last step."""
    steps = list(range(interval, total + 1, interval))
    return steps if steps and steps[-1] == total else [*steps, total]


def losses(reporter: MemoryReporter) -> list[float]:
    return [value for _, value in reporter.series("loss")]


def accuracies(reporter: MemoryReporter, name: str = "mean_token_accuracy") -> list[float]:
    return [value for _, value in reporter.series(name)]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_learns_a_small_dataset(method, make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(method=method, max_steps=16, learning_rate=3e-3 if method == "full" else 5e-3)
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    curve = losses(reporter)
    assert result.completed and result.step == 16
    assert mean(curve[-3:]) < 0.6 * mean(curve[:3]), curve
    assert result.metrics["loss"] == curve[-1]


def test_qlora_trains_adapters_on_real_4bit_layers(make_spec, models_dir, tokenizer):
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit as LoraLinear4bit

    spec = make_spec(method="qlora")
    model = load_model(
        spec, plan_device(spec), models_dir / "tiny-llama", task=Task.causal_lm, pad_token_id=tokenizer.pad_token_id
    )
    attention = model.base_model.model.model.layers[0].self_attn
    assert isinstance(attention.q_proj, LoraLinear4bit)
    assert isinstance(attention.q_proj.base_layer, bnb.nn.Linear4bit)
    assert attention.q_proj.base_layer.weight.dtype == torch.uint8  # two 4-bit weights per byte
    assert attention.q_proj.base_layer.weight.quant_state.quant_type == "nf4"
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_qlora_still_learns_after_an_evaluation(make_spec, models_dir, tokenizer):
    """bitsandbytes repacks 4-bit weights for CPU inference in eval mode; gradients must still flow after it."""
    spec = make_spec(method="qlora", lora={"dropout": 0.0})
    model = load_model(
        spec, plan_device(spec), models_dir / "tiny-llama", task=Task.causal_lm, pad_token_id=tokenizer.pad_token_id
    )
    ids = torch.tensor([tokenizer("The car is red and the sky is blue.")["input_ids"]])
    first_lora = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight

    def gradient():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return first_lora.grad.clone()

    before = gradient()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    torch.testing.assert_close(gradient(), before)
    assert before.abs().sum() > 0


@pytest.mark.parametrize("method", METHODS)
def test_saved_output_gives_the_logits_of_the_trained_model(method, make_spec, colour_file, models_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = make_spec(method=method, max_steps=4)
    reporter = MemoryReporter()
    prepared = prepare(spec, train_file=colour_file, reporter=reporter, models_dir=models_dir)
    trainer, _ = build_trainer(prepared, tmp_path / "checkpoints", reporter)
    trainer.train()
    final = save_final(trainer, prepared, tmp_path / "final", colour_file.name, metrics={})

    ids = torch.tensor([prepared.tokenizer("What colour is the sky? The sky is blue.")["input_ids"]])
    trained = trainer.model.eval()
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
    if method == "full":
        loaded = AutoModelForCausalLM.from_pretrained(final)
    else:  # as a user would: the base (4-bit for qlora), then the adapter
        base = AutoModelForCausalLM.from_pretrained(
            resolve_model("tiny-llama", models_dir), quantization_config=quantization_config_for(spec, prepared.plan)
        )
        loaded = PeftModel.from_pretrained(base, final)
        # bitsandbytes' CPU inference kernel (AVX512-BF16) computes in bf16; compare with the
        # fp32 dequantizing path the trained model ran, so only the saved weights differ.
        for module in loaded.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    with torch.no_grad():
        actual = loaded.eval()(input_ids=ids).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, _untrained_logits(models_dir, ids), atol=1e-3), "training changed nothing"


def _untrained_logits(models_dir, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return (
            AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama", models_dir)).eval()(input_ids=ids).logits
        )


def test_final_output_has_adapter_tokenizer_and_model_card(
    make_spec, colour_file, colour_rows, write_jsonl, models_dir, tmp_path
):
    validation = write_jsonl(tmp_path / "validation.jsonl", colour_rows(8, seed=1))
    reporter = MemoryReporter()
    result = train(
        make_spec(max_steps=3),
        train_file=colour_file,
        eval_file=validation,
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    # The step-0 baseline (the base model), then an evaluation at the end.
    assert [step for step, m in reporter.metrics if "eval_loss" in m] == [0, 3]
    final = result.final_dir
    assert final == tmp_path / "run" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
        p.name for p in final.iterdir()
    }
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA"
    # The base as the job named it, not the folder this server loaded it from: the adapter loads elsewhere.
    assert adapter_config["base_model_name_or_path"] == "tiny-llama"
    card = (final / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny-llama\n")
    assert 'base = AutoModelForCausalLM.from_pretrained("tiny-llama")' in card
    assert 'model = PeftModel.from_pretrained(base, "path/to/this/folder")' in card
    assert str(models_dir) not in card + json.dumps(adapter_config)
    assert "colours.jsonl" in card
    assert f"eval_loss: {result.metrics['eval_loss']:.4g}" in card
    assert '"method": "lora"' in card


def test_reports_metrics_progress_events_and_checkpoints(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(
        max_steps=None, epochs=2, logging_steps=2, save_steps=4, keep_checkpoints=2, eval_steps=3, eval_split=0.25
    )
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)

    total = result.total_steps
    assert [step for step, _, _ in reporter.steps] == list(range(1, total + 1))
    assert {total_steps for _, total_steps, _ in reporter.steps} == {total}
    train_points = [(step, m) for step, m in reporter.metrics if "loss" in m]
    assert [step for step, _ in train_points] == [1, *range(2, total + 1, 2)]
    for _, point in train_points:
        assert {"loss", "learning_rate", "grad_norm", "epoch", "tokens_per_second", "peak_memory_mb"} <= point.keys()
        assert point["tokens_per_second"] > 0 and point["peak_memory_mb"] > 0
        assert 0 <= point["mean_token_accuracy"] <= 1
    assert [step for step, m in reporter.metrics if "eval_loss" in m] == [0, *every(3, total)]  # 0: the baseline
    assert all(0 <= m["eval_mean_token_accuracy"] <= 1 for _, m in reporter.metrics if "eval_loss" in m)
    assert [step for step, _ in reporter.checkpoints] == every(4, total)
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert kept == sorted(path.name for _, path in reporter.checkpoints[-2:])
    messages = reporter.messages()
    assert any(m.startswith("Loaded model tiny-llama") for m in messages)
    assert any(m.startswith("Read 48 rows from colours.jsonl") for m in messages)
    assert "Saved checkpoint at step 4" in messages


def test_token_accuracy_rises_as_the_model_learns(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=16, eval_split=0.25, eval_steps=4)
    train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    curve, eval_curve = accuracies(reporter), accuracies(reporter, "eval_mean_token_accuracy")
    assert len(curve) == len(losses(reporter)) and len(eval_curve) == 5  # the baseline, then steps 4 to 16
    assert all(0 <= value <= 1 for value in curve + eval_curve)
    assert mean(curve[-3:]) > curve[0] + 0.3, curve
    assert eval_curve[-1] > eval_curve[0] + 0.2, eval_curve
    assert not reporter.series("accuracy") and not reporter.series("eval_accuracy"), "those are a classifier's"


def test_eval_token_accuracy_is_the_share_of_trained_tokens_predicted_right(
    make_spec, colour_file, models_dir, tmp_path
):
    # One evaluation batch holds all the held-out examples, so the figure is over all their tokens.
    spec = make_spec(max_steps=6, eval_split=0.25, batch_size=16)
    reporter = MemoryReporter()
    prepared = prepare(spec, train_file=colour_file, reporter=reporter, models_dir=models_dir)
    trainer, _ = build_trainer(prepared, tmp_path / "checkpoints", reporter)
    trainer.train()
    logged = trainer.evaluate()["eval_mean_token_accuracy"]

    model, right, trained = trainer.model.eval(), 0, 0
    with torch.no_grad():
        for ids, labels in zip(prepared.eval_examples.input_ids, prepared.eval_examples.labels):
            predicted = model(input_ids=torch.tensor([ids])).logits[0].argmax(-1)  # predicted[i]: token i + 1
            for position, label in enumerate(labels):
                if label != IGNORE_INDEX:
                    trained += 1
                    right += int(predicted[position - 1]) == label
    assert 0 < logged < 1
    assert logged == pytest.approx(right / trained)
    assert reporter.series("eval_mean_token_accuracy")[-1] == (6, logged)


def test_trained_tokens_count_every_real_token_once_per_epoch(make_spec, colour_file, models_dir, tmp_path, tokenizer):
    from worker.ml.data import Tokenization, read_jsonl

    for packing in (True, False):
        spec = make_spec(max_steps=None, epochs=2, packing=packing)
        result = train(
            spec,
            train_file=colour_file,
            output_dir=tmp_path / str(packing),
            reporter=MemoryReporter(),
            models_dir=models_dir,
        )
        tokens = Tokenization(tokenizer, max_length=spec.max_seq_length)(read_jsonl(colour_file)).tokens
        assert result.trained_tokens == 2 * tokens


def test_the_batching_auto_chose_is_what_trains_and_the_job_says_so(make_spec, colour_file, models_dir, tmp_path):
    # This CPU has SDPA only: auto picks length-grouped batches, which train with an attention
    # mask over padding rather than packed rows with position ids.
    reporter = MemoryReporter()
    spec = make_spec(max_steps=1)
    assert spec.packing == "auto"
    prepared = prepare(spec, train_file=colour_file, reporter=reporter, models_dir=models_dir)
    (event,) = [(m, data) for _, m, data in reporter.events if m.startswith("Batching: ")]
    assert event == (
        (
            "Batching: length-grouped batches padded to their longest row (packing auto: sdpa attention would need a "
            "dense block-diagonal mask for packed rows, which costs more than the padding of length-grouped batches)"
        ),
        {"packing": "auto", "packed": False, "padding_free": False},
    )
    assert "seq_lengths" not in prepared.train_dataset.column_names
    batch = prepared.collator([prepared.train_dataset[i] for i in range(4)])
    assert "attention_mask" in batch and "position_ids" not in batch


def test_long_rows_are_truncated_and_reported(make_spec, colour_rows, write_jsonl, models_dir, tmp_path):
    rows = colour_rows(12) + [{"instruction": "Tell a story.", "output": "Once upon a time " * 30}] * 3
    reporter = MemoryReporter()
    result = train(
        make_spec(max_steps=2),
        train_file=write_jsonl(tmp_path / "long.jsonl", rows),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    assert result.truncated_rows == 3
    warnings = [m for level, m, _ in reporter.events if level == "warning"]
    assert any(m.startswith("Truncated 3 rows longer than 64 tokens (") for m in warnings)


@pytest.mark.parametrize("packing", [True, False])
def test_long_text_rows_train_on_every_token_and_say_so(packing, make_spec, write_jsonl, models_dir, tmp_path):
    paragraph = "The river runs north past the old mill, and the town wakes up slowly. "
    rows = [{"text": paragraph * (3 + i % 4)} for i in range(8)]  # each over 64 tokens
    reporter = MemoryReporter()
    result = train(
        make_spec(max_steps=1, packing=packing),
        train_file=write_jsonl(tmp_path / "text.jsonl", rows),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    assert result.truncated_rows == 0
    assert not [m for level, m, _ in reporter.events if level == "warning"]
    (read,) = [data for _, m, data in reporter.events if m.startswith("Read 8 rows")]
    (batched,) = [data for _, m, data in reporter.events if "tokens_after" in data]
    assert batched["tokens_before"] == batched["tokens_after"] == read["tokens"] > 8 * 64
    assert batched["sequences"] >= -(-read["tokens"] // 64)


def test_a_checkpoint_becomes_resumable_only_after_its_metrics_are_flushed(
    make_spec, colour_file, models_dir, tmp_path
):
    """A worker killed just after a checkpoint appears resumes from it; every point logged up
    to that step must already be durable then, or the loss curve keeps a hole."""
    checkpoints = tmp_path / "run" / "checkpoints"

    class FlushWatcher(MemoryReporter):
        def __init__(self) -> None:
            super().__init__()
            self.flushes: list[tuple[list[int], list[str]]] = []

        def flush(self) -> None:
            visible = sorted(p.name for p in checkpoints.glob("step-*")) if checkpoints.exists() else []
            self.flushes.append(([step for step, m in self.metrics if "loss" in m], visible))

    reporter = FlushWatcher()
    train(
        make_spec(max_steps=6, logging_steps=1, save_steps=2, keep_checkpoints=5),
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    assert reporter.flushes == [([1, 2], []), ([1, 2, 3, 4], ["step-2"]), ([1, 2, 3, 4, 5, 6], ["step-2", "step-4"])]


def test_stop_request_ends_training_cleanly_and_keeps_a_checkpoint(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter(stop_at_step=3)
    result = train(
        make_spec(), train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir
    )
    assert result.status == "stopped" and not result.completed
    assert result.step == 3 and reporter.steps[-1][0] == 3
    assert result.final_dir is None and not (tmp_path / "run" / "final").exists()
    assert reporter.checkpoints == [(3, tmp_path / "run" / "checkpoints" / "step-3")]
    assert result.checkpoint_dir == tmp_path / "run" / "checkpoints" / "step-3"
    assert {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"} <= {
        p.name for p in result.checkpoint_dir.iterdir()
    }


def test_stop_requested_before_training_starts_trains_nothing(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter(stop_at_step=0)
    result = train(
        make_spec(), train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir
    )
    assert result.status == "stopped" and result.step == 0
    assert reporter.steps == [] and reporter.metrics == []


@pytest.mark.parametrize("packing", [True, False], ids=["packed", "length-grouped"])
def test_resumed_run_ends_where_an_uninterrupted_one_does(packing, make_spec, colour_file, models_dir, tmp_path):
    # Dropout on, several epochs, stopped mid-epoch: data order, RNG and optimizer state must all come back.
    spec = make_spec(max_steps=20, packing=packing, lora={"dropout": 0.1}, save_steps=50)
    straight = MemoryReporter()
    expected = train(
        spec, train_file=colour_file, output_dir=tmp_path / "straight", reporter=straight, models_dir=models_dir
    )

    stopped = train(
        spec,
        train_file=colour_file,
        output_dir=tmp_path / "resumed",
        reporter=MemoryReporter(stop_at_step=7),
        models_dir=models_dir,
    )
    assert stopped.status == "stopped" and stopped.step == 7
    second = MemoryReporter()
    resumed = train(
        spec, train_file=colour_file, output_dir=tmp_path / "resumed", reporter=second, models_dir=models_dir
    )

    assert "Resuming from the checkpoint at step 7" in second.messages()
    assert second.steps[0][0] == 8
    assert resumed.completed and resumed.step == expected.step == 20
    assert resumed.trained_tokens == expected.trained_tokens
    assert losses(second) == pytest.approx(losses(straight)[7:], rel=1e-4)
    assert accuracies(second) == pytest.approx(accuracies(straight)[7:], rel=1e-4)
    assert resumed.metrics["loss"] == pytest.approx(expected.metrics["loss"], rel=1e-4)


def test_running_a_finished_job_again_changes_nothing(make_spec, colour_file, models_dir, tmp_path):
    """A job redelivered after it finished (Celery late ack) resumes at its last step and ends the same."""
    spec = make_spec(max_steps=4, eval_split=0.25)
    first = train(
        spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=MemoryReporter(), models_dir=models_dir
    )
    reporter = MemoryReporter()
    again = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert reporter.steps == []
    assert again.completed and again.step == first.step == 4
    assert again.metrics == first.metrics
    assert again.trained_tokens == first.trained_tokens
    assert (again.final_dir / "adapter_model.safetensors").read_bytes() == (
        first.checkpoint_dir / "adapter_model.safetensors"
    ).read_bytes()


def test_resume_false_starts_over(make_spec, colour_file, models_dir, tmp_path):
    train(
        make_spec(),
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=MemoryReporter(stop_at_step=2),
        models_dir=models_dir,
    )
    reporter = MemoryReporter()
    result = train(
        make_spec(max_steps=3),
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
        resume=False,
    )
    assert reporter.steps[0][0] == 1 and result.step == 3


def test_classifier_learns_labels_of_text(make_spec, write_jsonl, models_dir, tmp_path, tokenizer):
    import random

    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    rng = random.Random(0)
    warm, cold = ["sun", "fire", "summer", "hot"], ["snow", "ice", "winter", "cold"]
    filler = ["the", "a", "day", "was", "very", "and", "today", "really"]
    rows = []
    for i in range(64):
        label, words = ("warm", warm) if i % 2 else ("cool", cold)
        text = " ".join(rng.sample(filler, 4) + [rng.choice(words)])  # the word that decides comes last
        rows.append({"text": text, "label": label})
    reporter = MemoryReporter()
    spec = make_spec(max_steps=40, learning_rate=3e-3, eval_split=0.25, eval_steps=10)
    result = train(
        spec,
        train_file=write_jsonl(tmp_path / "labels.jsonl", rows),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    eval_losses = [value for _, value in reporter.series("eval_loss")]
    assert eval_losses[-1] < 0.3 * eval_losses[0], eval_losses
    assert all(0 <= value <= 1 for value in accuracies(reporter, "accuracy"))
    eval_accuracy = accuracies(reporter, "eval_accuracy")
    assert len(eval_accuracy) == len(eval_losses) and eval_accuracy[-1] == 1.0, eval_accuracy  # 16 held-out rows
    assert not reporter.series("mean_token_accuracy"), "a classifier predicts a class, not tokens"

    assert json.loads((result.final_dir / "class_names.json").read_text()) == ["cool", "warm"]
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model("tiny-llama", models_dir), num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    classifier = PeftModel.from_pretrained(base, result.final_dir).eval()
    texts = ["the day was really hot", "today was very cold"]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        predicted = classifier(**batch).logits.argmax(-1).tolist()
    assert predicted == [1, 0]


def test_merged_model_gives_the_adapter_logits(make_spec, colour_file, models_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(
        make_spec(max_steps=3, merge_adapter=True),
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=MemoryReporter(),
        models_dir=models_dir,
    )
    assert result.merged_dir == tmp_path / "run" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-llama", models_dir))
    adapted = PeftModel.from_pretrained(base, result.final_dir).eval()
    ids = AutoTokenizer.from_pretrained(result.merged_dir)("The sky is blue.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-5)


def test_early_stopping_ends_a_run_whose_eval_loss_stops_improving(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    # A learning rate this high makes the eval loss climb after the first steps.
    spec = make_spec(
        method="full", learning_rate=0.5, max_steps=40, eval_split=0.25, eval_steps=1, early_stopping_patience=2
    )
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert result.completed and result.step < 40
    assert any(m.startswith("Stopped early at step") for m in reporter.messages())


def test_a_missing_model_is_a_clear_error(make_spec, colour_file, models_dir, tmp_path):
    with pytest.raises(
        ModelNotFoundError, match="Base model 'no-such-model' was not found: not in the models directory"
    ):
        train(
            make_spec(base_model="no-such-model"),
            train_file=colour_file,
            output_dir=tmp_path,
            reporter=MemoryReporter(),
            models_dir=models_dir,
        )


@pytest.mark.parametrize("name", ["../tiny-llama", "/etc/passwd", "a/b/c", "org/../../x"])
def test_model_names_cannot_leave_the_models_directory(name, models_dir):
    with pytest.raises(ModelNotFoundError, match="is not a model name"):
        resolve_model(name, models_dir)


def test_models_dir_names_may_have_an_organisation(models_dir, tmp_path):
    shutil.copytree(models_dir / "tiny-llama", tmp_path / "acme" / "tiny")
    assert resolve_model("acme/tiny", tmp_path) == tmp_path / "acme" / "tiny"


def test_models_in_the_hugging_face_cache_load_offline(make_spec, colour_file, models_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "hub" / "models--acme--cached-tiny" / "snapshots" / "0123abc"
    shutil.copytree(models_dir / "tiny-llama", snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("acme/cached-tiny", models_dir) == snapshot
    result = train(
        make_spec(base_model="acme/cached-tiny", max_steps=2),
        train_file=colour_file,
        output_dir=tmp_path / "run",
        reporter=MemoryReporter(),
        models_dir=models_dir,
    )
    assert result.completed


def test_a_name_is_never_read_as_a_path_from_the_working_directory(models_dir, tmp_path, monkeypatch):
    shutil.copytree(models_dir / "tiny-llama", tmp_path / "private-model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelNotFoundError, match="'private-model' was not found"):
        resolve_model("private-model", models_dir)


def test_a_dataset_with_nothing_to_learn_is_a_clear_error(make_spec, write_jsonl, models_dir, tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hello?"}]}] * 4
    with pytest.raises(DatasetError, match="none of the 4 rows has a token to learn from"):
        train(
            make_spec(),
            train_file=write_jsonl(tmp_path / "users.jsonl", rows),
            output_dir=tmp_path / "run",
            reporter=MemoryReporter(),
            models_dir=models_dir,
        )


def test_early_stopping_without_eval_data_is_refused(make_spec, colour_file, models_dir, tmp_path):
    with pytest.raises(ConfigurationError, match="early stopping needs evaluation data"):
        train(
            make_spec(early_stopping_patience=2),
            train_file=colour_file,
            output_dir=tmp_path / "run",
            reporter=MemoryReporter(),
            models_dir=models_dir,
        )


def test_importing_the_library_does_not_import_torch():
    code = "import sys, worker.ml; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none is present")
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_gpu_trains_in_bf16(method, make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(method=method, max_steps=16)
    assert plan_device(spec).precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    curve = losses(reporter)
    assert result.completed and mean(curve[-3:]) < 0.6 * mean(curve[:3])
    assert result.metrics["peak_memory_mb"] > 0


@pytest.mark.parametrize("installed", [True, False], ids=["flash-attn installed", "not installed"])
def test_gpu_workers_train_with_flash_attention_where_it_is_installed(installed, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: (find_spec("torch") if installed else None) if name == "flash_attn" else find_spec(name),
    )
    for precision in ("bf16", "fp16"):
        plan = DevicePlan("cuda", precision, cuda_attention(precision))
        assert plan.varlen_attention is installed  # what lets packing: auto pack
    assert cuda_attention("fp32") == "sdpa"  # flash-attention computes in 16 bits only


def test_gradient_accumulation_matches_a_bigger_batch(make_spec, colour_file, models_dir, tmp_path):
    runs = {}
    for batch_size, accumulation in ((4, 1), (2, 2)):
        reporter = MemoryReporter()
        spec = make_spec(
            max_steps=6, batch_size=batch_size, gradient_accumulation_steps=accumulation, lora={"dropout": 0.0}
        )
        train(
            spec,
            train_file=colour_file,
            output_dir=tmp_path / str(batch_size),
            reporter=reporter,
            models_dir=models_dir,
        )
        runs[batch_size] = losses(reporter)
    assert runs[2] == pytest.approx(runs[4], rel=1e-4)


class SavedActivations:
    """While active, the peak bytes of the tensors autograd keeps for the backward pass, the
    weights excluded: the activation memory that gradient checkpointing trades for compute.
    Each storage counts once, from the first time a tensor of it is saved until autograd
    releases the last."""

    def __init__(self, model):
        self.weights = {param.untyped_storage().data_ptr() for param in model.parameters()}
        self.savers = Counter()  # storage address -> saved tensors alive on it
        self.live = self.peak = 0

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._hooks.__exit__(*exc_info)

    def _pack(self, tensor):
        saved = _Saved(tensor)
        storage = tensor.untyped_storage()
        address, size = storage.data_ptr(), storage.nbytes()
        if address not in self.weights:
            if not self.savers[address]:
                self.live += size
                self.peak = max(self.peak, self.live)
            self.savers[address] += 1
            weakref.finalize(saved, self._release, address, size)
        return saved

    def _unpack(self, saved):
        return saved.tensor

    def _release(self, address, size):
        self.savers[address] -= 1
        if not self.savers[address]:
            self.live -= size


class _Saved:
    """What autograd holds instead of a saved tensor, so that its release can be seen."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_gradient_checkpointing_changes_memory_not_results(make_spec, colour_file, models_dir, tmp_path):
    runs, peaks = {}, {}
    for checkpointing in (False, True):
        reporter = MemoryReporter()
        spec = make_spec(max_steps=4, gradient_checkpointing=checkpointing, lora={"dropout": 0.0})
        prepared = prepare(spec, train_file=colour_file, reporter=reporter, models_dir=models_dir)
        trainer, _ = build_trainer(prepared, tmp_path / str(checkpointing), reporter)
        with SavedActivations(prepared.model) as saved:
            trainer.train()
        assert saved.live == 0, "every saved tensor was released by its backward pass"
        runs[checkpointing], peaks[checkpointing] = losses(reporter), saved.peak
    assert runs[True] == pytest.approx(runs[False], rel=1e-5)
    # Without it both layers keep their activations; with it, each keeps only its input (and
    # the logits and loss outside the layers stay as they were): about a fifth here.
    assert peaks[True] < 0.5 * peaks[False], peaks


def test_dora_adapters_train_and_save_as_dora(make_spec, colour_file, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=10, lora={"use_dora": True, "r": 8})
    result = train(spec, train_file=colour_file, output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir)
    assert json.loads((result.final_dir / "adapter_config.json").read_text())["use_dora"] is True
    curve = losses(reporter)
    assert mean(curve[-3:]) < 0.8 * mean(curve[:3]), curve


def test_many_short_epochs_checkpoint_a_few_times_not_at_every_epoch(
    make_spec, write_jsonl, colour_rows, models_dir, tmp_path
):
    """4 rows in a batch of 4 for 20 epochs: one step an epoch. A checkpoint (and its event) at each
    of the 20 epoch ends would flood the job's events; every second epoch keeps it to 10."""
    reporter = MemoryReporter()
    spec = make_spec(max_steps=None, epochs=20, batch_size=4, logging_steps=10)
    result = train(
        spec,
        train_file=write_jsonl(tmp_path / "few.jsonl", colour_rows(4)),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )
    assert result.completed and result.step == 20
    saved = [message for _level, message, _data in reporter.events if message.startswith("Saved checkpoint")]
    assert saved == [f"Saved checkpoint at step {step}" for step in range(2, 21, 2)]
    assert [step for step, _path in reporter.checkpoints] == list(range(2, 21, 2))
    # The epoch comes with every step, not only with the logged points (every 10 steps).
    assert [epoch for epoch in reporter.epochs] == pytest.approx([float(step) for step, _total, _t in reporter.steps])


def test_event_counts_read_as_english_in_the_singular(make_spec, write_jsonl, colour_rows, models_dir, tmp_path):
    reporter = MemoryReporter()
    spec = make_spec(max_steps=1, packing=True, max_seq_length=128)
    train_file = write_jsonl(tmp_path / "two.jsonl", colour_rows(2))
    prepare(spec, train_file=train_file, reporter=reporter, models_dir=models_dir)
    messages = [message for _level, message, _data in reporter.events]
    assert any(m.startswith("Packed 2 examples into 1 sequence of up to 128 tokens: ") for m in messages), messages
    assert any(m.startswith("Read 2 rows from two.jsonl") for m in messages), messages
