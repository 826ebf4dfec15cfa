"""The training spec: sensible defaults, ranges, one-line help for every field."""

from __future__ import annotations

import annotated_types
import pytest
from pydantic import BaseModel, ValidationError

from app.contract.spec import LoraSettings, QuantizationSettings, TrainingSpec, field_help


def test_a_model_name_is_all_a_spec_needs():
    spec = TrainingSpec(base_model="tiny-llama")
    assert spec.method.value == "lora" and spec.effective_learning_rate == 2e-4
    assert spec.max_seq_length == 1024 and spec.packing == "auto"
    assert spec.lora.target_modules == "all-linear"
    assert spec.quantization.quant_type == "nf4" and spec.quantization.double_quant
    assert TrainingSpec(base_model="m", method="full").effective_learning_rate == 2e-5


def test_a_classifier_left_at_the_default_learning_rate_gets_the_classifiers_one():
    assert TrainingSpec(base_model="m").for_classifier().learning_rate == 1e-3
    assert TrainingSpec(base_model="m", method="full").for_classifier().learning_rate == 5e-5
    assert TrainingSpec(base_model="m", learning_rate=3e-4).for_classifier().learning_rate == 3e-4, "the user's own"
    spec = TrainingSpec(base_model="m")
    assert spec.load_best_model_at_end is False and spec.metric_for_best_model == "eval_loss"
    assert spec.learning_check_at == 0.5
    with pytest.raises(ValidationError, match="picks its best checkpoint by eval_loss"):
        TrainingSpec(
            base_model="m", objective="dpo", load_best_model_at_end=True, metric_for_best_model="eval_accuracy"
        )


def test_specs_from_before_packing_auto_keep_their_meaning():
    # Stored jobs and API clients said true or false.
    assert TrainingSpec(base_model="m", packing=True).packing == "on"
    assert TrainingSpec(base_model="m", packing=False).packing == "off"
    assert TrainingSpec(base_model="m", packing="off").model_dump()["packing"] == "off"
    with pytest.raises(ValidationError, match="'auto', 'on' or 'off'"):
        TrainingSpec(base_model="m", packing="sometimes")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"learning_rate": 3}, "less than or equal to 1"),
        ({"batch_size": 0}, "greater than or equal to 1"),
        ({"max_seq_length": 8}, "greater than or equal to 16"),
        ({"lora": {"r": 0}}, "greater than or equal to 1"),
        ({"lora": {"target_modules": ["q_proj", "bad name"]}}, "'bad name' is not a module name"),
        ({"method": "dpo"}, "Input should be 'full', 'lora' or 'qlora'"),
        ({"base_model": "../secrets"}, "must be a model name"),
        ({"method": "full", "merge_adapter": True}, "merge_adapter only applies to lora and qlora"),
        ({"epochs_typo": 3}, "Extra inputs are not permitted"),
    ],
)
def test_out_of_range_values_are_refused_with_a_clear_message(change, message):
    with pytest.raises(ValidationError, match=message):
        TrainingSpec(**{"base_model": "tiny-llama", **change})


def _fields(model: type[BaseModel]):
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _fields(info.annotation)
        else:
            yield f"{model.__name__}.{name}", info


@pytest.mark.parametrize("model", [TrainingSpec, LoraSettings, QuantizationSettings])
def test_every_field_has_a_default_a_range_and_help(model):
    for name, info in _fields(model):
        assert name == "TrainingSpec.base_model" or not info.is_required(), f"{name} has no default"
        assert info.description and "\n" not in info.description, f"{name} needs one line of help"
        if info.annotation in (int, float, int | None, float | None):
            bounds = {type(m) for m in info.metadata}
            assert bounds & {annotated_types.Ge, annotated_types.Gt}, f"{name} has no lower bound"
            assert bounds & {annotated_types.Le, annotated_types.Lt}, f"{name} has no upper bound"


def test_field_help_lists_nested_settings():
    help_ = field_help()
    assert help_["lora.r"]["default"] == 16
    assert help_["quantization.compute_dtype"]["default"] == "auto"
    assert help_["keep_checkpoints"]["help"]
