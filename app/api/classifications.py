"""A classifier job's model tried on a text: the probability of each of its labels. Answered by
an inference worker, through the same requests as chat (`app.chat.completions`)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import AccessDep, SessionDep
from app.chat import completions

router = APIRouter(prefix="/api", tags=["jobs"])

# Far more than a classifier reads (a text longer than its context is cut to fit, and the
# answer says so), small enough to store and tokenize at once.
MAX_TEXT_CHARS = 100_000


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)


class LabelOut(BaseModel):
    label: str
    probability: float


class ClassificationOut(BaseModel):
    labels: list[LabelOut] = Field(description="Every label of the classifier, most probable first.")
    tokens: int = Field(description="The text's length in tokens, as the classifier read it.")
    truncated: bool = Field(description="The text was longer than the model reads: only its start was labelled.")


@router.post(
    "/jobs/{job_id}/classify",
    response_model=ClassificationOut,
    responses={
        409: {"description": "The job is not a finished text classifier"},
        503: {"description": "No inference worker answered"},
    },
)
async def classify(job_id: int, body: ClassifyIn, access: AccessDep, session: SessionDep) -> ClassificationOut:
    """Label `text` with the classifier the job trained (a stopped job's last checkpoint)."""
    result = await completions.classify(session, access, job_id, body.text)
    return ClassificationOut(
        labels=[LabelOut(label=label, probability=p) for label, p in result.labels],
        tokens=result.tokens,
        truncated=result.truncated,
    )
