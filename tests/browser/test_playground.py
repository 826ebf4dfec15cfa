"""The playground and the compare page in the browser, with real workers (one training, one
inference) on Redis and Postgres: a conversation held with a fine-tuned model and its base
side by side, older turns dropped when they no longer fit, a classifier's label probabilities,
and two jobs' differing settings and final metrics beside their curves."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from tests.browser.conftest import Pages, screenshot
from tests.helpers import TINY_MODEL, Account, SharedServices, chat_rows, jsonl, wait_for, warm_and_cool_rows

CONTEXT = 256  # the tiny model's context here: a few long turns overflow it


@dataclass
class Trained:
    pages: Pages
    page: object
    member: Account
    chat_job: int
    classifier_job: int


def _train(member: Account, queue: str, name: str, filename: str, rows: list[dict], **spec) -> int:
    dataset = member.client.post("/api/datasets", files={"file": (filename, jsonl(rows))})
    assert dataset.status_code == 201, dataset.text
    settings = {"base_model": TINY_MODEL, "batch_size": 4, "logging_steps": 1, "max_seq_length": 64, **spec}
    job = member.client.post(
        "/api/jobs", json={"spec": settings, "dataset_id": dataset.json()["id"], "name": name, "queue": queue}
    )
    assert job.status_code == 201, job.text
    return job.json()["id"]


@pytest.fixture(scope="class")
def trained(browser, migrated_database, redis_url, tmp_path_factory):
    """A chat job and a classifier job, trained once for the class on a tiny model that reads
    CONTEXT tokens; a member signed in to the browser."""
    from worker.ml.tiny import make_tiny_model

    models = tmp_path_factory.mktemp("models")
    make_tiny_model(models / TINY_MODEL, max_positions=CONTEXT)
    inference_queue = f"test-{uuid.uuid4().hex[:10]}-inference"
    services = SharedServices(
        migrated_database, tmp_path_factory.mktemp("data"), models, redis_url, TUNELAB_INFERENCE_QUEUE=inference_queue
    )
    with services:
        server = services.serve()
        member = services.account(team="acme", role="member")
        services.workers.start()
        services.workers.start(queue=inference_queue, max_tasks_per_child=None)
        queue = services.workers.queue
        chat_job = _train(
            member, queue, "colours", "colours.jsonl", chat_rows(48), max_steps=60, learning_rate=0.01, packing="on"
        )
        classifier_job = _train(
            member,
            queue,
            "warm or cool",
            "weather.jsonl",
            warm_and_cool_rows(),
            max_steps=80,  # 5 epochs: both words of each label learned, whatever order the batches come in
            learning_rate=0.003,
            eval_split=0.25,
            eval_steps=20,
        )
        for job_id in (chat_job, classifier_job):
            job = wait_for(lambda job_id=job_id: _finished(member, job_id), timeout=300, interval=0.5, message="a job")
            assert job["state"] == "succeeded", job["error"]
        pages = Pages(browser, server)
        try:
            yield Trained(pages, pages.sign_in(member.email), member, chat_job, classifier_job)
        finally:
            pages.close()


def _finished(member: Account, job_id: int) -> dict | None:
    job = member.client.get(f"/api/jobs/{job_id}").json()
    return job if job["state"] in ("succeeded", "failed", "cancelled") else None


def _send(page, text: str) -> None:
    page.fill("#playground-prompt", text)
    page.press("#playground-prompt", "Enter")
    expect(page.locator("#playground-stop")).to_be_hidden(timeout=60_000)
    expect(page.locator("#playground-send")).to_be_enabled()


def _last_request(model_prefix: str) -> dict:
    from app.core.database import session_scope
    from app.core.tables import Completion

    with session_scope() as session:
        query = select(Completion.request).where(Completion.model.startswith(model_prefix))
        return session.scalars(query.order_by(Completion.id.desc())).first()


class TestThePlaygroundAndCompareInTheBrowser:
    @pytest.fixture(autouse=True)
    def _no_javascript_errors(self, trained):
        yield
        errors = list(trained.pages.errors)
        trained.pages.errors.clear()
        assert errors == [], "JavaScript errors on the pages"

    def test_a_conversation_keeps_its_history_in_both_columns_and_each_turn_sends_all_of_it(self, trained):
        page = trained.page
        page.goto(f"/playground?job={trained.chat_job}")
        expect(page.locator("#classify-panel")).to_be_hidden()
        page.fill("input[name=temperature]", "0")
        page.fill("input[name=max_tokens]", "16")
        tuned, base = page.locator("#log-fine-tuned"), page.locator("#log-base")

        _send(page, "What colour is the sky?")
        expect(tuned.locator(".bubble.assistant .content")).to_have_text(["The sky is blue."])
        _send(page, "What colour is the snow?")
        for log in (tuned, base):
            expect(log.locator(".bubble .role")).to_have_text(["user", "assistant", "user", "assistant"])
            expect(log.locator(".bubble.user .content")).to_have_text(
                ["What colour is the sky?", "What colour is the snow?"]
            )
        expect(page.locator("#playground-turns")).to_have_text("2 turns")
        expect(page.locator("#usage-fine-tuned")).to_contain_text("prompt +")

        sent = _last_request("ft:")["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"], "the whole conversation goes each turn"
        assert sent[1]["content"] == "The sky is blue." and sent[2]["content"] == "What colour is the snow?"
        base_sent = _last_request(TINY_MODEL)["messages"]
        assert base_sent[1]["content"] == base.locator(".bubble.assistant .content").first.text_content(), (
            "the base column sends its own answers"
        )
        screenshot(page, "playground-chat")

    def test_older_turns_that_no_longer_fit_are_dropped_and_the_user_is_told(self, trained):
        page = trained.page
        page.goto(f"/playground?job={trained.chat_job}")
        page.fill("input[name=temperature]", "0")
        page.fill("input[name=max_tokens]", "16")
        _send(page, "What colour is the car?")
        page.click("#playground-new")
        expect(page.locator("#log-fine-tuned .bubble")).to_have_count(0)
        expect(page.locator("#playground-turns")).to_have_text("")

        for i in range(4):
            _send(page, f"{i}: " + "red green blue yellow " * 8)
        for column in ("#log-fine-tuned", "#log-base"):
            log = page.locator(column)
            expect(log.locator(".notice").first).to_contain_text(
                re.compile(r"no longer fits in the model's context: its oldest \d+ messages were left out")
            )
            expect(log.locator(".bubble.user").first).to_have_class(re.compile("dropped"))
            expect(log.locator(".bubble.user").last).not_to_have_class(re.compile("dropped"))
        sent = _last_request("ft:")["messages"]
        assert sent[0]["role"] == "user" and not sent[0]["content"].startswith("0:"), "the oldest turn was not sent"
        assert sent[-1]["content"].startswith("3:")
        screenshot(page, "playground-dropped")

    def test_a_classifier_job_shows_the_probability_of_each_label(self, trained):
        page = trained.page
        page.goto(f"/playground?job={trained.classifier_job}")
        expect(page.locator("#chat-panel")).to_be_hidden()
        expect(page.locator("input[name=temperature]")).to_be_hidden()
        page.fill("#classify-text", "the day was really hot")
        page.click("#classify-send")
        labels = page.locator("#classify-result li")
        expect(labels).to_have_count(2, timeout=60_000)
        expect(labels.nth(0)).to_have_attribute("data-label", "warm")
        expect(labels.nth(1)).to_have_attribute("data-label", "cool")
        warm = float(labels.nth(0).locator(".probability").text_content().rstrip("%"))
        cool = float(labels.nth(1).locator(".probability").text_content().rstrip("%"))
        assert warm > 80 and warm + cool == pytest.approx(100, abs=0.2)
        expect(page.locator("#classify-result")).to_contain_text("tokens")
        screenshot(page, "playground-classifier")

        page.fill("#classify-text", "today was very cold")
        page.click("#classify-send")
        expect(labels.nth(0)).to_have_attribute("data-label", "cool", timeout=60_000)

    def test_compare_shows_the_settings_that_differ_and_the_final_metrics_beside_the_curves(self, trained):
        page = trained.page
        page.goto(f"/compare?jobs={trained.chat_job},{trained.classifier_job}")
        expect(page.locator("#compare-chart canvas")).to_have_count(1)
        table = page.locator("#compare-table")
        expect(table.locator("th.job-head")).to_have_text(
            [f"#{trained.classifier_job} warm or cool", f"#{trained.chat_job} colours"]
        )
        expect(table.locator("tr[data-setting='dataset'] td")).to_have_text(
            ["dataset", "weather.jsonl", "colours.jsonl"]
        )
        expect(table.locator("tr[data-setting='learning_rate'] td")).to_have_text(["learning_rate", "0.003", "0.01"])
        expect(table.locator("tr[data-setting='max_steps'] td")).to_have_text(["max_steps", "80", "60"])
        expect(table.locator("tr[data-metric='steps'] td")).to_have_text(["Steps", "80", "60"])
        expect(table.locator("tr[data-metric='train_loss'] td.best")).to_have_count(1)
        expect(table.locator("tr[data-metric='eval_loss'] td").nth(2)).to_have_text("–")
        expect(table.locator("tr[data-metric='eval_accuracy'] td").nth(1)).to_have_text(re.compile(r"^\d+\.\d%$"))

        equal = page.locator("[data-testid=compare-equal]")
        expect(equal).to_be_hidden()
        toggle = page.locator("#toggle-equal")
        expect(toggle).to_have_text(re.compile(r"^Show \d+ settings equal$"))
        expect(table.locator("tr[data-setting='batch_size']")).to_be_hidden()
        screenshot(page, "compare-table")
        toggle.click()
        expect(table.locator("tr[data-setting='batch_size'] td")).to_have_text(["batch_size", "4", "4"])
        expect(toggle).to_have_text(re.compile(r"^Hide \d+ settings equal$"))

        page.locator("#job-picker input[type=checkbox]").nth(0).uncheck()
        expect(table.locator("th.job-head")).to_have_count(1)
