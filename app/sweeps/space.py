"""A sweep's search space and the trials it expands to.

A parameter is named by its path in the job spec (`learning_rate`, `lora.r`, `epochs`, ...).
A grid gives each parameter a list of values and tries every combination; a random search
gives each one a distribution (`log_uniform`, `uniform`, `int_uniform` between `low` and
`high`, or `choice` among `values`) and draws `trials` combinations from a seeded generator,
so the same seed gives the same trials.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.contract.spec import TrainingSpec
from app.core.errors import InvalidField

MAX_TRIALS = 64
MAX_VALUES = 32  # values of one parameter in a grid, or choices in a random search

# Spec fields a sweep may vary: numbers and choices that change how training goes, not what
# is trained (the base model, method and data stay those of the base submission).
TUNABLE = (
    "learning_rate",
    "epochs",
    "max_steps",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "lr_scheduler",
    "max_seq_length",
    "seed",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.use_dora",
)

Scalar = float | int | str | bool


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """How a random search draws one parameter."""

    kind: Literal["log_uniform", "uniform", "int_uniform", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Scalar] | None = Field(None, min_length=1, max_length=MAX_VALUES)

    @model_validator(mode="after")
    def _bounds(self) -> Distribution:
        if self.kind == "choice":
            if not self.values:
                raise ValueError("a choice needs `values`")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.kind} needs `low` < `high`")
        if self.kind == "log_uniform" and self.low <= 0:
            raise ValueError("log_uniform needs `low` > 0")
        return self

    def draw(self, rng: random.Random) -> Scalar:
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "int_uniform":
            return rng.randint(math.ceil(self.low), math.floor(self.high))
        if self.kind == "log_uniform":
            return float(f"{math.exp(rng.uniform(math.log(self.low), math.log(self.high))):.4g}")
        return float(f"{rng.uniform(self.low, self.high):.4g}")


GridValues = Annotated[list[Scalar], Field(min_length=1, max_length=MAX_VALUES)]


class SearchSpace(_Strict):
    """What a sweep tries: `grid` (every combination of `parameters`' value lists) or `random`
    (`trials` draws from `parameters`' distributions, with `seed`)."""

    strategy: Literal["grid", "random"] = "grid"
    parameters: dict[str, GridValues | Distribution] = Field(min_length=1, max_length=8)
    trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="Random search: how many trials to draw.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Random search: the same seed draws the same trials.")

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpace:
        for name, values in self.parameters.items():
            if name not in TUNABLE:
                raise ValueError(f"{name!r} cannot be swept; choose among {', '.join(TUNABLE)}")
            if (self.strategy == "grid") != isinstance(values, list):
                wanted = "a list of values" if self.strategy == "grid" else "a distribution ({'kind': ...})"
                raise ValueError(f"a {self.strategy} search gives {name!r} {wanted}")
        if self.strategy == "random" and self.trials is None:
            raise ValueError("a random search needs `trials`")
        return self

    def expand(self) -> list[dict[str, Scalar]]:
        """Each trial's parameter values, in launch order."""
        if self.strategy == "grid":
            names = list(self.parameters)
            size = math.prod(len(self.parameters[name]) for name in names)
            if size > MAX_TRIALS:
                raise InvalidField(("space", "parameters"), f"this grid has {size} trials; at most {MAX_TRIALS}")
            return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*self.parameters.values())]
        rng = random.Random(self.seed)
        return [{name: dist.draw(rng) for name, dist in self.parameters.items()} for _ in range(self.trials)]


def apply(spec: dict[str, Any], values: dict[str, Scalar]) -> dict[str, Any]:
    """The base spec (JSON) with a trial's values set at their paths; validated by the caller."""
    out = {**spec, "lora": dict(spec.get("lora") or {})}
    for path, value in values.items():
        head, _, leaf = path.partition(".")
        if leaf:
            out[head][leaf] = value
        else:
            out[head] = value
    return out


def trial_spec(spec: dict[str, Any], values: dict[str, Scalar], trial: int) -> TrainingSpec:
    """A trial's spec, validated as any job's; InvalidField naming the trial and its values otherwise."""
    try:
        return TrainingSpec.model_validate(apply(spec, values))
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        raise InvalidField(
            ("space", "parameters"), f"trial {trial} ({shown}) is not a valid job: {where}: {first['msg']}"
        ) from None
