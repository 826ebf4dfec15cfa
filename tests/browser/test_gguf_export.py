"""The job page's GGUF export: the exports a worker made are downloads (a zip with the GGUF
file and its Ollama Modelfile), and the export button asks for another quantisation, whose
request shows in the job's events."""

from __future__ import annotations

import io
import zipfile

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import add_job


def _stored(db, job, kind, folder: str, files: dict[str, bytes]):
    from app.core.blobs import blob_store, directory_size
    from app.core.tables import Artifact

    path = blob_store().path(f"jobs/{job.id}/{folder}")
    path.mkdir(parents=True)
    for name, content in files.items():
        (path / name).write_bytes(content)
    meta = {"quantization": "q8_0"} if folder.startswith("gguf") else {}
    db.add(
        Artifact(
            job_id=job.id,
            kind=kind,
            step=6,
            blob_key=f"jobs/{job.id}/{folder}",
            size_bytes=directory_size(path),
            meta=meta,
        )
    )


def test_the_job_page_downloads_gguf_exports_and_asks_for_another(pages, db, make_account):
    from app.core.tables import ArtifactKind, JobState

    member = make_account(team="acme", role="member")
    job = add_job(db, member, JobState.succeeded, name="colours")
    job.queue = "gguf-browser-test-nobody-listens"  # the request is queued; no worker takes it here
    _stored(db, job, ArtifactKind.adapter, "final", {"adapter_model.safetensors": b"\0" * 4096})
    _stored(
        db,
        job,
        ArtifactKind.gguf_q8_0,
        "gguf-q8_0",
        {"model.gguf": b"GGUF" * 2048, "Modelfile": b"FROM ./model.gguf\n"},
    )
    db.commit()

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    link = page.get_by_role("link", name="GGUF Q8_0 + Ollama Modelfile (.zip)")
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    names = zipfile.ZipFile(io.BytesIO(download.value.path().read_bytes())).namelist()
    assert sorted(names) == [f"tunelab-job-{job.id}-gguf-q8_0/Modelfile", f"tunelab-job-{job.id}-gguf-q8_0/model.gguf"]

    page.get_by_label("GGUF quantisation").select_option("q4_0")
    page.get_by_role("button", name="Export GGUF").click()
    expect(page.get_by_role("button", name="Exporting…")).to_be_disabled()
    expect(page.locator("#events")).to_contain_text(f"GGUF Q4_0 export requested by {member.email}")
    screenshot(page, "job-gguf-export")


def test_a_tagger_job_page_says_why_it_offers_no_gguf_export(pages, db, make_account):
    from app.core.tables import ArtifactKind, JobState
    from tests.helpers import add_dataset
    from tests.ml.test_tasks import ner_rows

    member = make_account(team="acme", role="member")
    job = add_job(db, member, JobState.succeeded, name="tagger", dataset=add_dataset(db, member, ner_rows(8)))
    job.base_model = "tiny-bert"
    _stored(db, job, ArtifactKind.adapter, "final", {"adapter_model.safetensors": b"\0" * 4096})
    db.commit()

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    expect(page.locator("#downloads")).to_contain_text(
        "No GGUF export: the job trains a token classifier (NER): GGUF export converts causal language models"
    )
    expect(page.get_by_role("button", name="Export GGUF")).to_have_count(0)
    expect(page.get_by_label("GGUF quantisation")).to_have_count(0)
    screenshot(page, "job-gguf-refused-for-tagger")
