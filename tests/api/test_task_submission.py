"""A job whose data cannot train its base model's architecture (NER or QA rows on a causal LM or an
encoder-decoder, input / target rows on anything but an encoder-decoder) is refused when it is
submitted, naming both, instead of failing later on a worker; fitting pairs are accepted."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.helpers import TINY_MODEL, add_dataset, tiny_spec
from tests.ml.test_tasks import ner_rows, qa_rows, seq2seq_rows

BERT, T5 = "tiny-bert", "tiny-t5"
LLAMA_IS = "tiny-llama, a causal language model (LlamaForCausalLM)"


@pytest.fixture
def acme(make_account, models_env):
    from worker.ml.tiny import make_tiny_encoder, make_tiny_seq2seq

    if not (models_env / BERT).exists():
        make_tiny_encoder(models_env / BERT)
    if not (models_env / T5).exists():
        make_tiny_seq2seq(models_env / T5)
    return make_account(team="acme", role="member")


def submit(account, db, rows: list[dict], base_model: str):
    """The answer to submitting a job of `rows` on `base_model`, and the jobs of that dataset after it."""
    from app.core.tables import Job

    dataset = add_dataset(db, account, rows)
    response = account.client.post(
        "/api/jobs",
        json={"spec": tiny_spec(base_model=base_model), "dataset_id": dataset.id, "queue": "nobody-serves-this"},
    )
    return response, db.scalars(select(Job).where(Job.dataset_id == dataset.id)).all()


@pytest.mark.parametrize(
    ("rows", "base_model", "message"),
    [
        (ner_rows(8), TINY_MODEL, f"Tagged tokens (NER) data cannot train {LLAMA_IS}: it puts a head on an encoder"),
        (qa_rows(8), T5, "Question answering (SQuAD) data cannot train tiny-t5, an encoder-decoder (T5ForCondition"),
        (seq2seq_rows(8), BERT, "Input / target (seq2seq) data cannot train tiny-bert, an encoder (BertModel): input"),
        (seq2seq_rows(8, seed=1), TINY_MODEL, f"Input / target (seq2seq) data cannot train {LLAMA_IS}: input"),
    ],
)
def test_data_that_cannot_train_the_base_model_is_refused_at_submission(acme, db, rows, base_model, message):
    response, jobs = submit(acme, db, rows, base_model)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert message in response.json()["detail"][0]["msg"]
    assert jobs == [], "no job was created"


@pytest.mark.parametrize(("rows", "base_model"), [(ner_rows(8), BERT), (qa_rows(8), BERT), (seq2seq_rows(8), T5)])
def test_data_that_fits_the_base_model_is_accepted(acme, db, rows, base_model):
    response, jobs = submit(acme, db, rows, base_model)
    assert response.status_code == 201, response.text
    assert [job.id for job in jobs] == [response.json()["id"]]
