"""POST /api/jobs/estimate: the memory a job would need, for the data it would train on."""

from __future__ import annotations

import pytest

from tests.helpers import chat_rows, jsonl, tiny_spec

LABELED = [{"text": f"review number {i}", "label": ["good", "bad", "meh"][i % 3]} for i in range(9)]


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


def _upload(account, name, rows) -> int:
    response = account.client.post("/api/datasets", files={"file": (name, jsonl(rows))})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _estimate(account, **body):
    return account.client.post("/api/jobs/estimate", json={"spec": tiny_spec(max_seq_length=2048), **body})


def test_a_classification_dataset_is_estimated_without_lm_logits(acme):
    chat = _estimate(acme, dataset_id=_upload(acme, "chat.jsonl", chat_rows(6))).json()
    classifier = _estimate(acme, dataset_id=_upload(acme, "reviews.jsonl", LABELED)).json()
    assert _estimate(acme).json() == chat  # no dataset: a causal LM, as before

    chat_parts = {part["name"]: part["gib"] for part in chat["parts"]}
    classifier_parts = {part["name"]: part["gib"] for part in classifier["parts"]}
    assert "logits (fp32, with their gradient)" in chat_parts
    assert "logits (fp32, with their gradient)" not in classifier_parts
    assert classifier_parts["class scores (fp32, with their gradient)"] == 0  # 3 scores a row, not 512 a token
    assert classifier["total_gib"] == pytest.approx(
        chat["total_gib"] - chat_parts["logits (fp32, with their gradient)"], abs=0.02
    )


def test_another_teams_dataset_is_not_found(acme, make_account):
    theirs = _upload(make_account(team="globex"), "reviews.jsonl", LABELED)
    assert _estimate(acme, dataset_id=theirs).status_code == 404


def test_full_dpo_counts_its_frozen_reference_and_lora_dpo_does_not(acme):
    def parts(**spec):
        body = {"spec": tiny_spec(max_seq_length=4096, batch_size=256, **spec)}
        answer = acme.client.post("/api/jobs/estimate", json=body).json()
        return {part["name"]: part["gib"] for part in answer["parts"]}

    full_sft, full_dpo = parts(method="full"), parts(method="full", objective="dpo")
    assert full_dpo["reference model (bf16, frozen)"] == full_sft["weights (bf16)"]
    assert "reference model (bf16, frozen)" not in full_sft
    assert "reference model (bf16, frozen)" not in parts(method="lora", objective="dpo")
    assert "reference model (bf16, frozen)" not in parts(method="full", objective="orpo")  # ORPO has none
    reference_free = parts(method="full", objective="dpo", preference={"reference_free": True})
    assert "reference model (bf16, frozen)" not in reference_free
    reference = full_dpo["reference model (bf16, frozen)"]
    assert sum(reference_free.values()) == pytest.approx(sum(full_dpo.values()) - reference, abs=0.05)
    # Chosen and rejected run side by side: twice the activations of a supervised batch.
    assert full_dpo["activations"] == pytest.approx(2 * full_sft["activations"], rel=0.01)
