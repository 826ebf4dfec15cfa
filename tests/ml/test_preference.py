"""Preference training (DPO, ORPO, KTO) on the tiny model: it learns the preference, on one base model."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from app.contract.spec import TrainingSpec
from tests.ml.conftest import COLOURS, TINY
from worker.ml import samples, training_run
from worker.ml.errors import DatasetError
from worker.ml.reporting import MemoryReporter
from worker.ml.samples import BASE, GENERATION


def _pairs(count: int, seed: int) -> list[dict]:
    """Pairs with a learnable preference: the thing's own colour over another one."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        thing = rng.choice(sorted(COLOURS))
        wrong = rng.choice(sorted(set(COLOURS.values()) - {COLOURS[thing]}))
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"What colour is the {thing}?"}],
                "chosen": [{"role": "assistant", "content": f"The {thing} is {COLOURS[thing]}."}],
                "rejected": [{"role": "assistant", "content": f"The {thing} is {wrong}."}],
            }
        )
    return rows


def _feedback(pairs: list[dict]) -> list[dict]:
    return [
        row
        for pair in pairs
        for row in (
            {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False},
        )
    ]


@pytest.fixture
def pair_files(tmp_path, write_jsonl):
    return write_jsonl(tmp_path / "pairs.jsonl", _pairs(40, 0)), write_jsonl(tmp_path / "held.jsonl", _pairs(12, 1))


def _build(spec, train_file, eval_file, models_dir, output_dir, **kwargs):
    reporter = MemoryReporter()
    prepared = training_run.prepare(
        spec, train_file=train_file, eval_file=eval_file, reporter=reporter, models_dir=models_dir, **kwargs
    )
    trainer, _ = training_run.build_trainer(prepared, output_dir / "checkpoints", reporter)
    return trainer, reporter


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_each_objective_raises_the_reward_margin_on_held_out_data(
    objective, make_spec, models_dir, tmp_path, write_jsonl
):
    train_rows, held_rows = _pairs(40, 0), _pairs(12, 1)
    if objective == "kto":
        train_rows, held_rows = _feedback(train_rows), _feedback(held_rows)
    train_file = write_jsonl(tmp_path / "train.jsonl", train_rows)
    held_file = write_jsonl(tmp_path / "held.jsonl", held_rows)
    spec = make_spec(objective=objective, max_steps=12, learning_rate=5e-3)
    trainer, reporter = _build(spec, train_file, held_file, models_dir, tmp_path)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_rewards/margins"] > before["eval_rewards/margins"] + 0.01
    if objective != "kto":  # KTO scores single answers: a margin, no accuracy
        assert after["eval_rewards/accuracies"] > max(before["eval_rewards/accuracies"], 0.6)
    # The reporter heard the preference metrics under tunelab's names.
    assert reporter.series("reward_margin") and reporter.series("logp_chosen")
    assert [name for name in ("eval_reward_margin", "eval_reward_chosen") if reporter.series(name)]


def _padding(batches) -> float:
    """The share of padding in the batches' sequences (prompts, answers, or both together)."""
    padded = real = 0
    for batch in batches:
        for name, mask in batch.items():
            if name.endswith("attention_mask"):
                padded, real = padded + mask.numel(), real + int(mask.sum())
    return 1 - real / padded


@pytest.mark.parametrize("objective", ["dpo", "orpo"])
def test_pairs_are_batched_by_length_and_padded_only_to_the_longest_of_their_batch(
    objective, make_spec, models_dir, tmp_path, write_jsonl
):
    # Short and long pairs alternate in the file: batches in file order would each pad short
    # answers to long ones.
    rows = []
    for index, (thing, colour) in enumerate(sorted(COLOURS.items()) * 27):
        words = 1 if index % 2 == 0 else 24
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"What colour is the {thing}?"}],
                "chosen": [{"role": "assistant", "content": " ".join([colour] * words)}],
                "rejected": [{"role": "assistant", "content": " ".join(["grey"] * words)}],
            }
        )
    spec = make_spec(objective=objective, batch_size=4, max_seq_length=512)
    trainer, _ = _build(spec, write_jsonl(tmp_path / "pairs.jsonl", rows), None, models_dir, tmp_path)
    batches = list(trainer.get_train_dataloader())
    for batch in batches:  # padded to the longest of the batch, never to max_seq_length
        for name, mask in batch.items():
            if name.endswith("attention_mask"):
                assert mask.shape[1] == int(mask.sum(dim=1).max()) < 512 / 2
    dataset = trainer.train_dataset
    starts = range(0, len(dataset), 4)
    in_file_order = [trainer.data_collator([dataset[i] for i in range(s, min(s + 4, len(dataset)))]) for s in starts]
    assert _padding(batches) < _padding(in_file_order) / 3


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_dpo_with_adapters_keeps_one_base_model_in_memory(method, make_spec, models_dir, pair_files, tmp_path):
    spec = make_spec(objective="dpo", method=method, max_steps=2)
    trainer, _ = _build(spec, pair_files[0], None, models_dir, tmp_path)
    assert trainer.ref_model is None  # the reference is the adapter switched off (or its frozen copy)
    base_weights = [name for name, _ in trainer.model.named_parameters() if "lora_" not in name]
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(models_dir / TINY)
    assert len(base_weights) == len(list(plain.named_parameters()))  # one copy of each base weight
    trainer.train()
    assert trainer.state.global_step == 2


def test_full_dpo_compares_with_a_frozen_copy(make_spec, models_dir, pair_files, tmp_path):
    spec = make_spec(objective="dpo", method="full", max_steps=3, learning_rate=1e-3)
    trainer, _ = _build(spec, pair_files[0], None, models_dir, tmp_path)
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model
    assert not any(parameter.requires_grad for parameter in reference.parameters())
    frozen = {name: value.clone() for name, value in reference.state_dict().items()}
    trainer.train()
    assert all((reference.state_dict()[name] == value).all() for name, value in frozen.items())
    changed = [name for name, value in trainer.model.state_dict().items() if not (frozen[name] == value).all()]
    assert changed


@pytest.mark.parametrize("method", ["full", "lora", "continued lora"])
def test_reference_free_dpo_keeps_no_reference_and_scores_the_answers_as_they_are(
    method, make_spec, models_dir, colour_file, pair_files, tmp_path
):
    start_from = None
    if method == "continued lora":  # an SFT adapter, of which TRL would keep a reference copy
        method, sft = "lora", make_spec(max_steps=1)
        start_from = training_run.train(
            sft, train_file=colour_file, output_dir=tmp_path / "sft", reporter=MemoryReporter(), models_dir=models_dir
        ).final_dir
    spec = make_spec(
        objective="dpo",
        method=method,
        max_steps=3,
        learning_rate=1e-3,
        preference={"reference_free": True, "beta": 0.2},
    )
    trainer, reporter = _build(spec, pair_files[0], pair_files[1], models_dir, tmp_path, start_from=start_from)
    assert trainer.ref_model is None and "ref" not in getattr(trainer.model, "peft_config", {})
    assert any(message.startswith("Reference-free DPO") for message in reporter.messages())
    trainer.train()
    assert trainer.state.global_step == 3
    # No reference: an answer's reward is beta times its log-probability, and the margin is
    # there from the first step on.
    for (_, reward), (_, logp) in zip(reporter.series("reward_chosen"), reporter.series("logp_chosen"), strict=True):
        assert reward == pytest.approx(0.2 * logp, rel=1e-4)
    assert reporter.series("reward_margin")[0][1] != pytest.approx(0.0, abs=1e-4)
    assert reporter.series("eval_reward_accuracy")


def test_a_reference_free_full_dpo_run_completes_and_says_so(make_spec, models_dir, pair_files, tmp_path):
    spec = make_spec(objective="dpo", method="full", max_steps=2, preference={"reference_free": True})
    reporter = MemoryReporter()
    result = training_run.train(
        spec, train_file=pair_files[0], output_dir=tmp_path / "run", reporter=reporter, models_dir=models_dir
    )
    assert result.completed and (result.final_dir / "model.safetensors").exists()
    assert any(message.startswith("Reference-free DPO") for message in reporter.messages())
    assert "beta 0.1, reference-free" in (result.final_dir / "README.md").read_text()


def test_dpo_continues_a_supervised_adapter_measured_against_it(
    make_spec, models_dir, colour_file, tmp_path, pair_files
):
    supervised = training_run.train(
        make_spec(max_steps=20),
        train_file=colour_file,
        output_dir=tmp_path / "sft",
        reporter=MemoryReporter(),
        models_dir=models_dir,
    )
    spec = make_spec(objective="dpo", max_steps=2, learning_rate=1e-3)
    fresh = MemoryReporter()
    training_run.train(
        spec, train_file=pair_files[0], output_dir=tmp_path / "fresh", reporter=fresh, models_dir=models_dir
    )
    chained = MemoryReporter()
    result = training_run.train(
        spec,
        train_file=pair_files[0],
        output_dir=tmp_path / "chain",
        reporter=chained,
        models_dir=models_dir,
        start_from=supervised.final_dir,
        start_from_name="the SFT job",
    )
    assert result.status == "completed"
    assert "Starting from the trained weights of the SFT job" in chained.messages()
    # The policy starts as the supervised adapter, which already knows the chosen answers...
    assert chained.series("logp_chosen")[0][1] > fresh.series("logp_chosen")[0][1] + 1.0
    # ...and the reference is that same adapter, so the first step's margin is nil.
    assert chained.series("reward_margin")[0][1] == pytest.approx(0.0, abs=1e-5)
    # The saved adapter is the trained one alone, without TRL's reference copy.
    assert not (result.final_dir / "ref").exists()


def test_preference_objectives_refuse_data_they_cannot_train_on(
    make_spec, models_dir, colour_file, tmp_path, write_jsonl
):
    with pytest.raises(DatasetError, match="dpo trains on preference data .* Instruction"):
        training_run.prepare(
            make_spec(objective="dpo"), train_file=colour_file, reporter=MemoryReporter(), models_dir=models_dir
        )
    feedback = write_jsonl(tmp_path / "feedback.jsonl", _feedback(_pairs(4, 0)))
    with pytest.raises(DatasetError, match="only kto trains on"):
        training_run.prepare(
            make_spec(objective="orpo"), train_file=feedback, reporter=MemoryReporter(), models_dir=models_dir
        )
    with pytest.raises(DatasetError, match="preference data: train it with the objective dpo, orpo or kto"):
        training_run.prepare(make_spec(), train_file=feedback, reporter=MemoryReporter(), models_dir=models_dir)
    good_only = write_jsonl(tmp_path / "good.jsonl", _feedback(_pairs(4, 0))[::2])
    with pytest.raises(DatasetError, match="kto learns from both good and bad answers"):
        training_run.prepare(
            make_spec(objective="kto"), train_file=good_only, reporter=MemoryReporter(), models_dir=models_dir
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"objective": "orpo", "preference": {"loss_type": "ipo"}}, "preference.loss_type only applies to dpo"),
        ({"objective": "kto", "preference": {"rpo_alpha": 1.0}}, "preference.rpo_alpha only applies to dpo"),
        ({"objective": "dpo", "preference": {"desirable_weight": 2.0}}, "only apply to kto"),
        ({"objective": "orpo", "preference": {"reference_free": True}}, "reference_free only applies to dpo"),
        ({"objective": "kto", "batch_size": 1}, "kto needs batch_size 2 or more"),
        ({"objective": "dpo", "preference": {"loss_type": "nope"}}, "Input should be 'sigmoid', 'ipo'"),
        ({"objective": "dpo", "preference": {"beta": 0}}, "greater than 0"),
    ],
)
def test_preference_settings_are_checked(settings, message):
    with pytest.raises(ValidationError, match=message):
        TrainingSpec(base_model=TINY, **settings)


def test_preference_defaults_work_and_use_a_gentler_learning_rate():
    spec = TrainingSpec(base_model=TINY, objective="dpo")
    assert (spec.preference.beta, spec.preference.loss_type, spec.effective_learning_rate) == (0.1, "sigmoid", 5e-5)
    assert TrainingSpec(base_model=TINY, objective="dpo", method="full").effective_learning_rate == 1e-6
    assert "preference" not in TrainingSpec(base_model=TINY).values_used()


def test_the_model_card_names_the_preference_objective():
    from worker.ml.card import model_card

    card = model_card(
        TrainingSpec(base_model=TINY, objective="dpo", preference={"beta": 0.2}),
        dataset_name="pairs.jsonl",
        data_summary={},
        metrics={},
    )
    assert "# lora DPO fine-tune of tiny-llama" in card and "- dpo\n" in card
    assert "preference training with TRL's DPO loss (beta 0.2)" in card
    reference_free = TrainingSpec(base_model=TINY, objective="dpo", preference={"reference_free": True})
    card = model_card(reference_free, dataset_name="pairs.jsonl", data_summary={}, metrics={})
    assert "preference training with TRL's DPO loss (beta 0.1, reference-free)" in card
    assert "# lora fine-tune of tiny-llama" in model_card(
        TrainingSpec(base_model=TINY), dataset_name="x.jsonl", data_summary={}, metrics={}
    )


def test_a_stopped_dpo_run_resumes_where_an_uninterrupted_one_goes(make_spec, models_dir, pair_files, tmp_path):
    spec = make_spec(objective="dpo", max_steps=8, save_steps=50, learning_rate=1e-3)
    straight = MemoryReporter()
    expected = training_run.train(
        spec, train_file=pair_files[0], output_dir=tmp_path / "straight", reporter=straight, models_dir=models_dir
    )
    stopped = training_run.train(
        spec,
        train_file=pair_files[0],
        output_dir=tmp_path / "resumed",
        reporter=MemoryReporter(stop_at_step=3),
        models_dir=models_dir,
    )
    assert stopped.status == "stopped" and stopped.step == 3
    second = MemoryReporter()
    resumed = training_run.train(
        spec, train_file=pair_files[0], output_dir=tmp_path / "resumed", reporter=second, models_dir=models_dir
    )
    assert "Resuming from the checkpoint at step 3" in second.messages()
    assert resumed.completed and resumed.step == 8
    assert resumed.trained_tokens == expected.trained_tokens > 0
    assert [v for _, v in second.series("reward_margin")] == pytest.approx(
        [v for s, v in straight.series("reward_margin") if s > 3], rel=1e-3, abs=1e-5
    )


@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_a_preference_run_answers_the_held_out_prompts_beside_the_chosen_answers_and_the_base_model(
    objective, make_spec, models_dir, tmp_path, write_jsonl, monkeypatch
):
    # Whole answers: time enough for them at every evaluation, however busy the machine is.
    monkeypatch.setattr(samples, "MIN_TIME_S", samples.TIME_LIMIT_S)
    monkeypatch.setattr(samples, "BASE_TIME_S", samples.TIME_LIMIT_S)
    train_rows, held_rows = _pairs(40, 0), _pairs(12, 1)
    if objective == "kto":
        train_rows, held_rows = _feedback(train_rows), _feedback(held_rows)
    spec = make_spec(
        objective=objective,
        max_steps=12,
        eval_steps=4,
        learning_rate=5e-3,
        eval_samples=6,
        eval_sample_max_new_tokens=12,
    )
    reporter = MemoryReporter()
    training_run.train(
        spec,
        train_file=write_jsonl(tmp_path / "train.jsonl", train_rows),
        eval_file=write_jsonl(tmp_path / "held.jsonl", held_rows),
        output_dir=tmp_path / "run",
        reporter=reporter,
        models_dir=models_dir,
    )

    kinds = [(kind, step) for kind, step, _ in reporter.sample_sets]
    assert kinds == [(BASE, 0), (GENERATION, 4), (GENERATION, 8), (GENERATION, 12)]
    sets = [rows for _, _, rows in reporter.sample_sets]
    assert all(len(rows) == 6 for rows in sets)
    prompts = [[(row["row"], row["prompt"], row["reference"]) for row in rows] for rows in sets]
    assert all(p == prompts[0] for p in prompts), "every evaluation answers the same prompts"
    # The reference is the chosen answer (never a rejected one, nor a KTO answer marked bad).
    chosen = {pair["prompt"][0]["content"]: pair["chosen"][0]["content"] for pair in _pairs(12, 1)}
    for _, prompt, reference in prompts[0]:
        question = next(q for q in chosen if q in prompt)
        assert reference == chosen[question]
    assert all(isinstance(row["answer"], str) and row["loss"] > 0 for rows in sets for row in rows)
    # The trained adapter answers, not the base model: its losses on the references moved.
    assert [row["loss"] for row in sets[-1]] != pytest.approx([row["loss"] for row in sets[0]], rel=1e-3)
