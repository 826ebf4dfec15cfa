"""Sweep pages: the list, the launch form, and one sweep (its trials ranked, a scatter plot of
the metric against a parameter, the best trial marked)."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from app.api.deps import PageAccessDep, SessionDep
from app.chat.catalog import list_local_models
from app.core.tables import Job, Sweep
from app.datasets.team_datasets import list_datasets
from app.pages.rendering import in_current_team, page_json, render
from app.sweeps.space import TUNABLE
from app.sweeps.sweeps import SweepView, list_sweeps, sweep_view

router = APIRouter(include_in_schema=False)

WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD = 560, 300, 64, 40, 16


@router.get("/sweeps", response_class=HTMLResponse)
def sweeps_page(request: Request, access: PageAccessDep, session: SessionDep):
    sweeps = list_sweeps(session, access)
    return render(request, "sweeps.html", access=access, session=session, active="sweeps", sweeps=sweeps)


@router.get("/sweeps/new", response_class=HTMLResponse)
def new_sweep(request: Request, access: PageAccessDep, session: SessionDep, clone: int | None = None):
    """The launch form; `clone` starts it from a job's settings (a job of the current team)."""
    template = access.get(session, Job, clone) if clone else None
    data = {
        "models": [model.name for model in list_local_models()],
        "datasets": [{"id": d.id, "name": d.name, "rows": d.row_count} for d in list_datasets(session, access)],
        "tunable": list(TUNABLE),
        "clone": None
        if template is None
        else {
            "spec": template.spec,
            "dataset_id": template.dataset_id,
            "validation_dataset_id": template.validation_dataset_id,
            "queue": template.queue,
        },
    }
    return render(request, "new_sweep.html", access=access, session=session, active="sweeps", data=page_json(data))


def _scale(
    values: list[float], size: float, log: bool, *, exact_ticks: bool = True
) -> tuple[callable, list[tuple[float, str]]]:
    """A function from a value to a pixel offset in [0, size], and a few ticks (offset, label)."""
    fn = math.log10 if log else (lambda v: v)
    low, high = fn(min(values)), fn(max(values))
    if high == low:
        low, high = low - 1, high + 1
    span = high - low
    low, high = low - span * 0.08, high + span * 0.08

    def place(value: float) -> float:
        return (fn(value) - low) / (high - low) * size

    if exact_ticks and len(set(values)) <= 6:  # a grid's values, each where its trials are
        ticks = sorted(set(values))
    else:  # five evenly spaced, labelled with enough digits to tell them apart
        lo, hi = min(values), max(values)
        ticks = [lo + (hi - lo) * i / 4 for i in range(5)] if hi > lo else [lo]
    digits = 3
    while digits < 8 and len({f"{t:.{digits}g}" for t in ticks}) < len(ticks):
        digits += 1
    return place, [(place(t), f"{t:.{digits}g}") for t in ticks]


def scatter(view: SweepView, parameter: str) -> dict | None:
    """The points of a scatter plot of the sweep's metric (y) against `parameter` (x): each
    trial with a value, the best one marked; a log axis for a positive parameter spanning more
    than a factor of 20 (a learning rate). Categories (text, booleans) take even places."""
    rows = [row for row in view.trials if row.value is not None and parameter in row.values]
    if not rows:
        return None
    raw = [row.values[parameter] for row in rows]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    width, height = WIDTH - PAD_LEFT - PAD, HEIGHT - PAD_BOTTOM - PAD
    if numeric:
        log = min(raw) > 0 and max(raw) / min(raw) > 20
        place_x, x_ticks = _scale([float(v) for v in raw], width, log)
        xs = [place_x(float(v)) for v in raw]
    else:
        categories = sorted({str(v) for v in raw})
        step = width / len(categories)
        xs = [(categories.index(str(v)) + 0.5) * step for v in raw]
        x_ticks = [((i + 0.5) * step, name) for i, name in enumerate(categories)]
    place_y, y_ticks = _scale([row.value for row in rows], height, False, exact_ticks=False)
    points = [
        {
            "x": round(PAD_LEFT + x, 1),
            "y": round(PAD + height - place_y(row.value), 1),
            "trial": row.number,
            "label": f"trial {row.number}: {parameter}={row.values[parameter]}, {view.sweep.metric}={row.value:.4g}",
            "best": row.best,
            "status": row.status,
        }
        for x, row in zip(xs, rows, strict=True)
    ]
    return {
        "width": WIDTH,
        "height": HEIGHT,
        "left": PAD_LEFT,
        "top": PAD,
        "right": WIDTH - PAD,
        "bottom": HEIGHT - PAD_BOTTOM,
        "points": points,
        "x_ticks": [(round(PAD_LEFT + x, 1), label) for x, label in x_ticks],
        "y_ticks": [(round(PAD + height - y, 1), label) for y, label in y_ticks],
        "x_label": parameter,
        "y_label": view.sweep.metric,
    }


@router.get("/sweeps/{sweep_id}", response_class=HTMLResponse)
def sweep_page(
    sweep_id: int,
    request: Request,
    access: PageAccessDep,
    session: SessionDep,
    x: Annotated[str | None, Query(max_length=64, description="The parameter on the plot's x axis")] = None,
):
    sweep = in_current_team(request, access, session, Sweep, sweep_id)
    if not isinstance(sweep, Sweep):
        return sweep
    view = sweep_view(session, access, sweep.id)
    parameter = x if x in view.parameters else (view.parameters[0] if view.parameters else None)
    data = {"id": sweep.id, "state": sweep.state.value, "counts": view.counts()}
    return render(
        request,
        "sweep.html",
        access=access,
        session=session,
        active="sweeps",
        view=view,
        sweep=sweep,
        parameter=parameter,
        plot=scatter(view, parameter) if parameter else None,
        can_cancel=access.roles[sweep.team_id].can_write and sweep.state.value == "running",
        data=page_json(data),
    )
