"""Request and response bodies of the JSON API (pydantic). The training spec lives in
`app.spec`, shared with the worker."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.models import JobState, Role
from app.spec import TrainingSpec


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class LoginIn(_In):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)


class TeamRoleOut(BaseModel):
    id: int
    name: str
    role: Role


class MeOut(BaseModel):
    id: int
    email: str
    is_admin: bool
    teams: list[TeamRoleOut]


class TokenIn(_In):
    name: str = Field("default", max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(_Out):
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreatedOut(TokenOut):
    token: str = Field(description="The token itself. It is shown this once and cannot be recovered.")


class TeamIn(_In):
    name: str = Field(max_length=64)


class MemberIn(_In):
    email: str = Field(max_length=254)
    role: Role = Role.member


class MemberOut(BaseModel):
    user_id: int
    email: str
    role: Role


class UserIn(_In):
    email: str = Field(max_length=254)
    password: str = Field(max_length=1024)
    team: str = Field(max_length=64)
    role: Role = Role.member
    is_admin: bool = False


class UserOut(_Out):
    id: int
    email: str
    is_admin: bool


# ---- jobs ----------------------------------------------------------------------------------

_QUEUE_PATTERN = r"^[a-z0-9][a-z0-9_\-]{0,63}$"


class JobIn(_In):
    spec: TrainingSpec
    dataset_id: int
    validation_dataset_id: int | None = None
    name: str | None = Field(None, max_length=200)
    suffix: str | None = Field(None, pattern=r"^[A-Za-z0-9._\-]{1,64}$",
                               description="Goes into the fine-tuned model's name: ft:<base>:<team>:<suffix>:ftjob-<id>.")  # fmt: skip
    team_id: int | None = Field(None, description="Team to run in (default: your team, if you have one).")
    queue: str = Field("default", pattern=_QUEUE_PATTERN, description="Workers serving this queue take the job.")
    metadata: dict[str, str] = Field(default_factory=dict, description="Up to 16 key-value pairs of your own.")

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16:
            raise ValueError("at most 16 metadata keys")
        for key, item in value.items():
            if not 1 <= len(key) <= 64 or len(item) > 512:
                raise ValueError("metadata keys are 1-64 characters and values at most 512")
        return value


class ArtifactOut(_Out):
    id: int
    kind: str
    step: int
    size_bytes: int
    created_at: datetime
    meta: dict


class JobOut(BaseModel):
    id: int
    name: str
    suffix: str | None
    team_id: int
    created_by: str | None
    state: JobState
    base_model: str
    method: str
    dataset_id: int | None
    validation_dataset_id: int | None
    queue: str
    spec: dict
    metadata: dict
    error: str | None
    attempts: int
    step: int
    total_steps: int | None
    progress: float | None = Field(description="step / total_steps, 0 to 1")
    eta_seconds: float | None
    epoch: float | None
    train_loss: float | None
    eval_loss: float | None
    trained_tokens: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobPage(BaseModel):
    data: list[JobOut]
    has_more: bool


class JobEventOut(_Out):
    seq: int
    created_at: datetime
    level: str
    message: str
    data: dict


class MetricOut(BaseModel):
    seq: int
    step: int
    split: str
    created_at: datetime
    values: dict


# ---- datasets ------------------------------------------------------------------------------


class DatasetOut(_Out):
    id: int
    team_id: int
    name: str
    filename: str
    purpose: str
    format: str
    row_count: int
    size_bytes: int
    sha256: str
    stats: dict
    created_at: datetime
    created_by: str | None = None
    duplicate: bool = Field(False, description="True when this exact file was already uploaded to the team.")
