"""A classifier job's model tried on a text: the probability of each of its labels; and a tagger,
question answerer or encoder-decoder job's model tried on its input. Answered by an inference
worker, through the same requests as chat (`app.chat.completions`)."""

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


class PredictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="A tagger's or seq2seq's input")
    question: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="A question answerer's")
    context: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="and its context")


class PredictionOut(BaseModel):
    task: str = Field(description="token_classification, question_answering or seq2seq")
    tokens: list[str] | None = Field(None, description="The words of the text (token classification)")
    tags: list[str] | None = Field(None, description="The tag of each word (token classification)")
    entities: list[dict] | None = Field(None, description="Entities: type, text, start and end word (NER)")
    answer: str | None = Field(None, description='The answer span ("" when the context holds no answer)')
    start: int | None = Field(None, description="The answer's first character in the context (-1: no answer)")
    score: float | None = Field(None, description="The probability of that answer")
    target: str | None = Field(None, description="The generated target (seq2seq)")


@router.post(
    "/jobs/{job_id}/predict",
    response_model=PredictionOut,
    response_model_exclude_none=True,
    responses={
        409: {"description": "The job is not a finished tagger, question answerer or encoder-decoder"},
        503: {"description": "No inference worker answered"},
    },
)
async def predict(job_id: int, body: PredictIn, access: AccessDep, session: SessionDep) -> PredictionOut:
    """Run the model the job trained (a stopped job's last checkpoint) on `text`, or on `question` and `context`."""
    result = await completions.predict(session, access, job_id, body.model_dump(exclude_none=True))
    return PredictionOut(**result)
