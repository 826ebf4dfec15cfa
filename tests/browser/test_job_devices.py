"""A job on several devices, on its page: where its ranks run (host, devices, DDP or FSDP), each
rank's throughput over the steps and its latest figures, and the busiest device's memory; none of
it for a job on one device. The timeline is written by hand in the worker's own shapes (its start
event's `placement`, its `per_rank_metrics`), so no training is needed."""

from __future__ import annotations

import platform

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.helpers import add_job, tiny_spec


@pytest.fixture
def member(make_account):
    return make_account(team="acme", role="member")


def _timeline(db, job, steps: int, ranks: list[tuple[float, float]] | None) -> None:
    """`steps` train points; with `ranks` ([tokens/s, peak MB] per rank), as a job on those devices logs them."""
    from app.jobs import timeline
    from worker.ml.callbacks import per_rank_metrics

    points = []
    for step in range(1, steps + 1):
        values = {"loss": 3.0 / step, "learning_rate": 1e-4, "tokens_per_second": 900.0 + step}
        if ranks:
            values.update(per_rank_metrics([[tps + 10 * step, memory + step] for tps, memory in ranks]))
        points.append(timeline.MetricPoint(step, "train", values))
    timeline.add_metrics(db, job, points)
    db.commit()


def test_a_job_on_two_devices_shows_where_each_rank_runs_and_how_fast(pages, db, member):
    from app.contract.spec import Parallelism, TrainingSpec
    from app.core.tables import JobState
    from app.jobs import timeline
    from worker.distributed_job import placement

    job = add_job(db, member, JobState.succeeded, name="two-processes")
    where = placement(TrainingSpec.model_validate(tiny_spec(num_devices=2)), Parallelism.fsdp)
    timeline.add_event(db, job, "Training on 2 CPU processes with FSDP (sharded)", placement=where)
    _timeline(db, job, steps=6, ranks=[(450.0, 700.0), (430.0, 1200.0)])

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    card = page.get_by_test_id("devices")
    expect(card).to_be_visible()
    expect(card.locator("#devices-line")).to_have_text(f"2 ranks on {platform.node()} · FSDP (sharded)")
    rows = page.get_by_test_id("per-rank").locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text(["0", where["devices"][0], "510", "706.0 MB"])
    expect(rows.nth(1).locator("td")).to_have_text(["1", where["devices"][1], "490", "1.2 GB"])
    expect(rows.nth(1)).to_have_class("busiest")
    expect(page.get_by_test_id("busiest-memory")).to_have_text("Busiest device: 1.2 GB peak (rank 1), at step 6")
    expect(page.get_by_test_id("rank-tps-chart")).to_have_attribute("data-series", "2")
    labels = page.evaluate("charts.of(document.getElementById('rank-tps-chart')).plot.series.map((s) => s.label)")
    assert "rank 0 tokens/s" in labels and "rank 1 tokens/s" in labels, labels
    card.scroll_into_view_if_needed()
    screenshot(page, "job-devices")


def test_a_job_on_one_device_has_no_devices_card(pages, db, member):
    from app.core.tables import JobState

    job = add_job(db, member, JobState.succeeded, name="one-device")
    _timeline(db, job, steps=6, ranks=None)

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    expect(page.get_by_test_id("loss-chart")).to_have_attribute("data-points", "6")
    expect(page.get_by_test_id("devices")).to_be_hidden()


def test_a_job_on_two_nodes_shows_each_node_and_where_each_rank_runs(pages, db, member):
    from app.contract.spec import Parallelism, TrainingSpec
    from app.core.tables import JobState
    from app.jobs import timeline
    from worker.distributed_job import gang_placement

    job = add_job(db, member, JobState.succeeded, name="two-nodes")
    nodes = [
        {"hostname": host, "devices": [f"GPU {index}: NVIDIA H100" for index in range(2)]}
        for host in ("gpu-a", "gpu-b")
    ]
    spec = TrainingSpec.model_validate(tiny_spec(num_nodes=2, num_devices=2))
    where = gang_placement(spec, Parallelism.ddp, nodes)
    timeline.add_event(db, job, "Training on 2 nodes x 2 GPUs with DDP", placement=where)
    _timeline(db, job, steps=4, ranks=[(450.0, 700.0), (440.0, 710.0), (430.0, 720.0), (420.0, 1500.0)])

    page = pages.sign_in(member.email)
    page.goto(f"/jobs/{job.id}")
    card = page.get_by_test_id("devices")
    expect(card).to_be_visible()
    expect(card.locator("#devices-line")).to_have_text("4 ranks on 2 nodes (gpu-a: 2, gpu-b: 2) · DDP")
    rows = page.get_by_test_id("per-rank").locator("tbody tr")
    expect(rows).to_have_count(4)
    expect(rows.nth(2).locator("td").nth(1)).to_have_text("gpu-b · GPU 0: NVIDIA H100")
    expect(rows.nth(3)).to_have_class("busiest")
