"""Named-entity recognition in the browser, with real workers (one training, one inference) on
Redis and Postgres: a tagged-tokens dataset uploaded and previewed with its entities marked, a
job launched from the form on a tiny BERT (full fine-tuning), its entity F1 charted at each evaluation, and the
playground marking the entities of a typed sentence. Screenshots go to docs/."""

from __future__ import annotations

import csv
import io
import json
import re
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Pages
from tests.helpers import SharedServices
from tests.ml.test_tasks import ner_rows

BERT = "tiny-bert"
DOCS = Path(__file__).resolve().parents[2] / "docs"


def shot(page, name: str) -> None:
    page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)


@pytest.fixture(scope="class")
def signed_in(browser, migrated_database, redis_url, tmp_path_factory):
    """A member signed in to the browser, a training worker and an inference worker, a tiny BERT to train."""
    from worker.ml.tiny import make_tiny_encoder

    models = tmp_path_factory.mktemp("models")
    make_tiny_encoder(models / BERT)
    inference_queue = f"test-{uuid.uuid4().hex[:10]}-inference"
    services = SharedServices(
        migrated_database, tmp_path_factory.mktemp("data"), models, redis_url, TUNELAB_INFERENCE_QUEUE=inference_queue
    )
    with services:
        server = services.serve()
        member = services.account(team="acme", role="member")
        services.workers.start()
        services.workers.start(queue=inference_queue, max_tasks_per_child=None)
        pages = Pages(browser, server)
        try:
            yield pages, pages.sign_in(member.email), services.workers.queue, tmp_path_factory.mktemp("files")
        finally:
            pages.close()


class TestNamedEntitiesInTheBrowser:
    def test_a_ner_dataset_trains_charts_its_f1_and_tags_a_sentence_in_the_playground(self, signed_in):
        pages, page, queue, files = signed_in
        data = files / "people-and-places.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in ner_rows(80)))

        page.goto("/datasets")
        page.set_input_files("#file-input", str(data))
        expect(page.locator(".success")).to_contain_text("people-and-places.jsonl (80 rows · Tagged tokens (NER))")
        page.click("#datasets-body a:has-text('people-and-places.jsonl')")
        expect(page.locator("#preview mark.entity").first).to_be_visible()
        expect(page.locator("#composition")).to_contain_text("PER entities")
        shot(page, "dataset-ner-preview")
        dataset_url = page.url

        page.goto(f"/jobs/new?dataset={dataset_url.rsplit('/', 1)[1]}")
        page.select_option("select[name='spec.base_model']", BERT)
        page.check("input[name='spec.method'][value='full']")  # the tiny BERT learns fastest with every weight
        page.fill("input[name='name']", "people and places")
        page.fill("input[name='spec.max_steps']", "60")
        page.fill("input[name='spec.learning_rate']", "0.002")
        page.fill("input[name='spec.batch_size']", "8")
        page.fill("input[name='spec.max_seq_length']", "64")
        page.fill("input[name='spec.eval_split']", "0.2")
        page.fill("input[name='spec.eval_steps']", "15")
        page.click("details.advanced summary")
        page.fill("input[name='spec.logging_steps']", "5")
        page.fill("input[name='queue']", queue)
        page.click("#launch")
        page.wait_for_url(re.compile(r".*/jobs/\d+$"))
        job_id = int(page.url.rsplit("/", 1)[1])

        expect(page.locator("#job-state .state")).to_have_text("succeeded", timeout=300_000)
        expect(page.locator("#task-charts")).to_be_visible()
        chart = page.locator("#task-chart")
        expect(chart).to_have_attribute("data-series", re.compile(r"\beval_f1\b.*\beval_f1_PER\b"))
        expect(page.locator("#task-chart-note")).to_contain_text("seqeval")
        shot(page, "job-ner-f1")
        # The result file: a column per task metric, filled at each evaluation (the step-0 baseline of
        # the untrained model, then steps 15, 30, 45, 60).
        rows = list(csv.DictReader(io.StringIO(page.request.get(f"/api/jobs/{job_id}/metrics.csv").text())))
        evaluated = [row for row in rows if row["valid_f1"]]
        assert [int(row["step"]) for row in evaluated] == [0, 15, 30, 45, 60]
        assert all(row["valid_f1_PER"] and row["valid_precision"] and row["valid_recall"] for row in evaluated)

        page.goto(f"/playground?job={job_id}")
        expect(page.locator("#predict-panel")).to_be_visible()
        expect(page.locator("#chat-panel")).to_be_hidden()
        page.fill("#predict-text", "Ada Lovelace was in Paris with Acme .")
        page.click("#predict-send")
        marks = page.locator("#predict-result mark.entity")
        expect(marks.first).to_be_visible(timeout=120_000)
        assert marks.count() >= 2, page.locator("#predict-result").inner_text()
        shot(page, "playground-ner")
        assert pages.errors == [], "JavaScript errors on the pages"
