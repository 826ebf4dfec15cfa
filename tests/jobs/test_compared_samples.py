"""Jobs compared by their answers (GET /api/compare/samples): each job's answers at its last
evaluation, lined up by prompt."""

from __future__ import annotations

from app.core.tables import JobState
from app.jobs.timeline import add_samples
from tests.helpers import add_dataset, add_job, chat_rows


def _answers(step: int, answers: dict[str, str]) -> list[dict]:
    return [
        {"row": i, "prompt": prompt, "reference": "The sky is blue.", "answer": answer, "loss": 1.0 / step}
        for i, (prompt, answer) in enumerate(answers.items())
    ]


def test_the_jobs_last_answers_to_the_same_prompts_stand_side_by_side(db, make_account):
    acme = make_account(team="acme")
    dataset = add_dataset(db, acme, chat_rows(6))
    first, second = (
        add_job(db, acme, JobState.succeeded, name=name, dataset=dataset) for name in ("low-lr", "high-lr")
    )
    add_samples(db, first, "base", 0, _answers(1, {"sky?": "zzz", "sea?": "zzz"}))
    add_samples(db, first, "generation", 4, _answers(4, {"sky?": "early", "sea?": "early"}))
    add_samples(db, first, "generation", 8, _answers(8, {"sky?": "The sky is blue.", "sea?": "The sky."}))
    add_samples(db, second, "generation", 8, _answers(8, {"sea?": "Blue sea.", "tree?": "Green."}))
    db.commit()

    response = acme.client.get("/api/compare/samples", params={"jobs": [first.id, second.id]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [job["name"] for job in body["jobs"]] == ["low-lr", "high-lr"]
    by_prompt = {p["prompt"]: p["answers"] for p in body["prompts"]}
    assert by_prompt == {
        "sky?": ["The sky is blue.", None],
        "sea?": ["The sky.", "Blue sea."],
        "tree?": [None, "Green."],
    }, "the last evaluation's answers, not the base model's or an earlier one's"
    assert body["prompts"][0]["losses"] == [0.125, None]


def test_another_teams_job_is_not_compared(db, make_account):
    acme, other = make_account(team="acme"), make_account(team="other")
    theirs = add_job(db, other, JobState.succeeded)
    assert acme.client.get("/api/compare/samples", params={"jobs": [theirs.id]}).status_code == 404
