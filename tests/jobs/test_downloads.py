"""Downloads read only what the job wrote: a README.md that is a link elsewhere is no card."""

from __future__ import annotations

from app.core.blobs import blob_store
from app.core.tables import Artifact, ArtifactKind, Job, JobState
from tests.helpers import add_job


def _finished_job_with_adapter(db, account) -> tuple[Job, object]:
    job = add_job(db, account, JobState.succeeded, name="done")
    folder = blob_store().path(f"jobs/{job.id}/final")
    folder.mkdir(parents=True)
    db.add(Artifact(job_id=job.id, kind=ArtifactKind.adapter, step=1, blob_key=f"jobs/{job.id}/final"))
    db.commit()
    return job, folder


def test_the_model_card_is_served_from_the_adapter_folder(make_account, db):
    acme = make_account()
    job, folder = _finished_job_with_adapter(db, acme)
    (folder / "README.md").write_text("# the card")
    response = acme.client.get(f"/api/jobs/{job.id}/model-card")
    assert response.status_code == 200 and response.text == "# the card"


def test_a_model_card_that_links_outside_the_folder_is_not_served(make_account, db, tmp_path):
    acme = make_account()
    job, folder = _finished_job_with_adapter(db, acme)
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker's secrets")
    (folder / "README.md").symlink_to(secret)
    response = acme.client.get(f"/api/jobs/{job.id}/model-card")
    assert response.status_code == 404 and "secrets" not in response.text
