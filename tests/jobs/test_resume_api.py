"""Pausing, resuming and continuing jobs through the API, without a worker: the states the
app moves a job through, the events it records, and what it refuses."""

from __future__ import annotations

import pytest

from app.contract.spec import TrainingSpec
from app.core.blobs import blob_store
from app.core.errors import InvalidField
from app.core.tables import Artifact, ArtifactKind, Job, JobState
from app.jobs.artifacts import job_output_key
from app.jobs.states import IllegalTransition, transition
from app.jobs.submission import check_parent
from tests.helpers import add_dataset, add_job, chat_rows, tiny_spec


@pytest.fixture
def acme(make_account, models_env):
    return make_account(team="acme", role="member")


@pytest.fixture
def job_in(db, acme):
    """job_in(state, account=acme) -> a job row in that state, on one dataset per team."""
    datasets = {}

    def make(state: JobState, account=acme, name: str = "job") -> Job:
        if account.team_id not in datasets:
            datasets[account.team_id] = add_dataset(db, account, chat_rows(6))
        return add_job(db, account, state, name=name, dataset=datasets[account.team_id])

    return make


def _messages(account, job_id: int) -> list[str]:
    return [e["message"] for e in account.client.get(f"/api/jobs/{job_id}/events", params={"limit": 1000}).json()]


def _stored(db, job: Job, kind: ArtifactKind, step: int, name: str) -> Artifact:
    """An artifact of the job with its folder in the blob store, as a worker leaves it."""
    store = blob_store()
    key = f"{job_output_key(job.id)}/{name}"
    with store.writer(f"{key}/adapter_config.json") as handle:
        handle.write(b"{}")
    artifact = Artifact(job_id=job.id, kind=kind, step=step, blob_key=key, size_bytes=2, meta={})
    db.add(artifact)
    db.commit()
    return artifact


def test_a_failed_job_resumes_from_its_last_checkpoint_with_fresh_attempts_and_no_error(acme, db, job_in):
    job = job_in(JobState.failed)
    job.error, job.attempts, job.crashes, job.step, job.total_steps = "CUDA out of memory", 3, 2, 9, 12
    db.commit()
    _stored(db, job, ArtifactKind.checkpoint, 4, "checkpoints/step-4")
    _stored(db, job, ArtifactKind.checkpoint, 8, "checkpoints/step-8")
    merged_key = _stored(db, job, ArtifactKind.merged, 8, "merged").blob_key  # built from that checkpoint

    response = acme.client.post(f"/api/jobs/{job.id}/resume")
    assert response.status_code == 200, response.text
    resumed = response.json()
    assert resumed["state"] == "queued" and resumed["error"] is None and resumed["attempts"] == 0
    assert resumed["step"] == 8 and resumed["finished_at"] is None
    db.expire_all()
    assert db.get(Job, job.id).crashes == 0
    kinds = [a["kind"] for a in acme.client.get(f"/api/jobs/{job.id}/artifacts").json()]
    assert kinds == ["checkpoint", "checkpoint"], "the merged model of a checkpoint goes: training goes past it"
    assert not blob_store().exists(merged_key)
    assert _messages(acme, job.id)[-1] == f"Resumed by {acme.email}: training continues from the checkpoint at step 8"


def test_a_job_without_a_checkpoint_is_resumed_from_step_zero_and_the_event_says_so(acme, db, job_in):
    job = job_in(JobState.cancelled)
    job.step = 2
    db.commit()
    resumed = acme.client.post(f"/api/jobs/{job.id}/resume").json()
    assert resumed["state"] == "queued" and resumed["step"] == 0
    assert (
        _messages(acme, job.id)[-1]
        == f"Resumed by {acme.email}: no checkpoint was kept, so training starts again from step 0"
    )


@pytest.mark.parametrize("state", [JobState.queued, JobState.running, JobState.succeeded, JobState.cancelling])
def test_only_cancelled_failed_or_paused_jobs_can_be_resumed(state, acme, db, job_in):
    job = job_in(state)
    response = acme.client.post(f"/api/jobs/{job.id}/resume")
    assert response.status_code == 409
    assert (
        response.json()["detail"] == f"only a cancelled, failed or paused job can be resumed; this one is {state.value}"
    )
    db.expire_all()
    assert db.get(Job, job.id).state == state


def test_a_job_whose_dataset_was_deleted_cannot_be_resumed(acme, db, job_in):
    job = job_in(JobState.cancelled)
    job.dataset_id = None
    db.commit()
    response = acme.client.post(f"/api/jobs/{job.id}/resume")
    assert response.status_code == 409 and "dataset was deleted" in response.json()["detail"]


def test_a_queued_job_pauses_at_once_and_a_running_one_at_its_next_step(acme, db, job_in):
    queued = job_in(JobState.queued)
    paused = acme.client.post(f"/api/jobs/{queued.id}/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert paused.json()["finished_at"] is None, "a paused job has not finished"
    assert acme.client.post(f"/api/jobs/{queued.id}/pause").json()["state"] == "paused", "asking twice is no error"
    assert _messages(acme, queued.id)[-1] == "Job paused while queued: no worker takes it until it is resumed"
    assert acme.client.post(f"/api/jobs/{queued.id}/resume").json()["state"] == "queued"

    running = job_in(JobState.running)
    assert acme.client.post(f"/api/jobs/{running.id}/pause").json()["state"] == "pausing"
    assert acme.client.post(f"/api/jobs/{running.id}/pause").json()["state"] == "pausing"
    assert acme.client.post(f"/api/jobs/{running.id}/resume").status_code == 409, "not before it has paused"


def test_a_finished_job_cannot_be_paused_and_a_paused_one_can_be_cancelled(acme, db, job_in):
    done = job_in(JobState.succeeded)
    refused = acme.client.post(f"/api/jobs/{done.id}/pause")
    assert refused.status_code == 409
    assert refused.json()["detail"] == "only a queued or running job can be paused; this one is succeeded"

    paused = job_in(JobState.paused)
    cancelled = acme.client.post(f"/api/jobs/{paused.id}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["finished_at"] is not None


def test_the_openai_api_reads_a_paused_or_pausing_job_as_paused(acme, db, job_in):
    for state in (JobState.pausing, JobState.paused):
        job = job_in(state)
        assert acme.client.get(f"/v1/fine_tuning/jobs/ftjob-{job.id}").json()["status"] == "paused"
    job = job_in(JobState.running)
    paused = acme.client.post(f"/v1/fine_tuning/jobs/ftjob-{job.id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    refused = acme.client.post(f"/v1/fine_tuning/jobs/ftjob-{job.id}/resume")
    assert refused.status_code == 409 and "pausing" in refused.json()["error"]["message"]


def test_viewers_cannot_pause_or_resume_and_other_teams_see_nothing(make_account, acme, db, job_in):
    viewer = make_account(team="acme", role="viewer")
    stranger = make_account(team="globex", role="member")
    cancelled = job_in(JobState.cancelled)
    running = job_in(JobState.running)
    assert viewer.client.post(f"/api/jobs/{cancelled.id}/resume").status_code == 403
    assert viewer.client.post(f"/api/jobs/{running.id}/pause").status_code == 403
    assert stranger.client.post(f"/api/jobs/{cancelled.id}/resume").status_code == 404
    assert stranger.client.post(f"/api/jobs/{running.id}/pause").status_code == 404
    db.expire_all()
    assert db.get(Job, cancelled.id).state == JobState.cancelled and db.get(Job, running.id).state == JobState.running


def test_resumable_states_go_back_to_the_queue_and_nowhere_else(acme, db, job_in):
    job = job_in(JobState.cancelled)
    for state in JobState:
        if state != JobState.queued:
            with pytest.raises(IllegalTransition):
                transition(db, job, state)
    transition(db, job, JobState.queued)
    db.commit()
    assert db.get(Job, job.id).state == JobState.queued


# ---- continuing a succeeded job ----


@pytest.fixture
def parent(acme, db, job_in) -> Job:
    job = job_in(JobState.succeeded, name="colours v1")
    _stored(db, job, ArtifactKind.adapter, 12, "final")
    return job


def _continue(account, dataset_id: int, parent_id: int, **spec):
    body = {"spec": tiny_spec(**spec), "dataset_id": dataset_id, "parent_job_id": parent_id}
    return account.client.post("/api/jobs", json=body)


def test_a_continued_job_is_linked_to_its_parent(acme, db, parent):
    more = add_dataset(db, acme, chat_rows(12), name="more colours.jsonl")
    response = _continue(acme, more.id, parent.id, max_steps=30)
    assert response.status_code == 201, response.text
    child = response.json()
    assert child["parent_job_id"] == parent.id and child["dataset_id"] == more.id
    assert _messages(acme, child["id"]) == [
        f"Job created by {acme.email}, continuing job #{parent.id} from its adapter"
    ]
    assert acme.client.get(f"/api/jobs/{parent.id}").json()["parent_job_id"] is None


def test_a_supervised_job_continues_as_dpo_on_preference_pairs(acme, db, parent):
    """The usual SFT-then-DPO chain: the DPO job starts from the SFT job's adapter."""
    pairs = [{"prompt": f"Colour of thing {i}?", "chosen": "Red.", "rejected": "Blue."} for i in range(6)]
    dataset = add_dataset(db, acme, pairs, name="pairs.jsonl")
    response = _continue(acme, dataset.id, parent.id, objective="dpo", preference={"beta": 0.2})
    assert response.status_code == 201, response.text
    child = response.json()
    assert child["parent_job_id"] == parent.id and child["spec"]["objective"] == "dpo"
    assert _messages(acme, child["id"]) == [
        f"Job created by {acme.email}, continuing job #{parent.id} from its adapter"
    ]
    # A continued job trains on data its objective takes: pairs for DPO, not the parent's chats.
    refused = _continue(acme, parent.dataset_id, parent.id, objective="dpo")
    assert refused.status_code == 422 and "dpo learns from preference pairs" in refused.text


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"method": "full"}, ["body", "spec", "method"], "keeps its parent's method (lora)"),
        ({"lora": {"r": 8}}, ["body", "spec", "lora", "r"], "lora.r must be 16"),
    ],
)
def test_a_continued_job_keeps_its_parents_model_method_and_adapter(acme, db, parent, change, field, message):
    response = _continue(acme, parent.dataset_id, parent.id, **change)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == field and message in detail["msg"]


def test_a_continued_job_keeps_its_parents_base_model(acme, db, parent):
    other_model = TrainingSpec.model_validate(tiny_spec(base_model="another-model"))
    with pytest.raises(InvalidField, match=r"keeps its parent's base model \(") as refused:
        check_parent(db, acme.team_id, parent.id, other_model)
    assert refused.value.loc == ("spec", "base_model")


@pytest.mark.parametrize("state", [JobState.failed, JobState.cancelled, JobState.running])
def test_only_a_succeeded_job_can_be_continued(acme, db, state, job_in):
    unfinished = job_in(state)
    response = _continue(acme, unfinished.dataset_id, unfinished.id)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "parent_job_id"]
    assert (
        f"only a succeeded job can be continued; job {unfinished.id} is {state.value}"
        in response.json()["detail"][0]["msg"]
    )


def test_another_teams_job_or_a_lost_adapter_cannot_be_continued(make_account, acme, db, parent):
    stranger = make_account(team="globex", role="member")
    theirs = add_dataset(db, stranger, chat_rows(6))
    refused = _continue(stranger, theirs.id, parent.id)
    assert refused.status_code == 422 and refused.json()["detail"][0]["msg"].endswith("job not found in this team")

    blob_store().delete(f"{job_output_key(parent.id)}/final")
    gone = _continue(acme, parent.dataset_id, parent.id)
    assert gone.status_code == 422 and "no longer stored" in gone.json()["detail"][0]["msg"]
    assert [job["id"] for job in acme.client.get("/api/jobs").json()["data"]] == [parent.id], "nothing was queued"


def test_a_job_whose_worker_died_while_pausing_ends_paused_not_requeued(acme, db, job_in):
    from app.jobs.recovery import recover_orphan

    job = job_in(JobState.pausing)
    assert recover_orphan(db, job, max_attempts=3) is False, "not sent to the queue again"
    db.commit()
    assert db.get(Job, job.id).state == JobState.paused and db.get(Job, job.id).crashes == 0
    assert _messages(acme, job.id)[-1].startswith("Job paused (its worker stopped while pausing)")


def test_the_openai_api_continues_a_job_given_its_fine_tuned_model_as_the_base(make_account, acme, db, parent):
    parent.spec = tiny_spec(lora={"r": 8, "alpha": 16})  # not the defaults: the child takes them from its parent
    db.commit()
    fine_tuned = acme.client.get(f"/v1/fine_tuning/jobs/ftjob-{parent.id}").json()["fine_tuned_model"]
    assert fine_tuned.startswith("ft:") and fine_tuned.endswith(f":ftjob-{parent.id}")
    body = {"model": fine_tuned, "training_file": f"file-{parent.dataset_id}", "hyperparameters": {"n_epochs": 2}}
    created = acme.client.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["model"] == parent.base_model
    child = acme.client.get(f"/api/jobs/{created.json()['id'].removeprefix('ftjob-')}").json()
    assert child["parent_job_id"] == parent.id and child["spec"]["epochs"] == 2
    assert child["spec"]["method"] == parent.method and child["spec"]["lora"]["r"] == 8
    assert child["spec"]["lora"]["alpha"] == 16

    stranger = make_account(team="globex", role="member")
    theirs = add_dataset(db, stranger, chat_rows(6))
    refused = stranger.client.post("/v1/fine_tuning/jobs", json={**body, "training_file": f"file-{theirs.id}"})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "model" and refused.json()["error"]["code"] == "model_not_found"
