"""The sweep page's scatter plot: where the trials land, the axis scale, the best point."""

from __future__ import annotations

from app.core.tables import Sweep
from app.pages.sweeps import scatter
from app.sweeps.sweeps import SweepView, TrialRow


def _view(rows: list[tuple[dict, float | None, bool]]) -> SweepView:
    sweep = Sweep(metric="eval_loss", direction="minimize", trials=[values for values, _, _ in rows])
    return SweepView(sweep, [TrialRow(i, values, None, value, best) for i, (values, value, best) in enumerate(rows)])


def test_a_learning_rate_spanning_decades_is_on_a_log_axis_and_lower_loss_is_higher_up():
    view = _view(
        [
            ({"learning_rate": 1e-5}, 2.0, False),
            ({"learning_rate": 1e-3}, 1.0, True),
            ({"learning_rate": 1e-1}, 3.0, False),
        ]
    )
    plot = scatter(view, "learning_rate")
    xs = [p["x"] for p in plot["points"]]
    assert abs((xs[1] - xs[0]) - (xs[2] - xs[1])) < 0.5  # evenly spaced decades
    ys = {p["trial"]: p["y"] for p in plot["points"]}
    assert ys[1] > ys[0] > ys[2]  # SVG y grows downwards: the lowest loss is drawn lowest
    assert [p["best"] for p in plot["points"]] == [False, True, False]
    assert [label for _, label in plot["x_ticks"]] == ["1e-05", "0.001", "0.1"]


def test_close_values_get_tick_labels_that_tell_them_apart_and_trials_without_a_value_are_left_out():
    view = _view([({"lora.r": 4}, 6.537, False), ({"lora.r": 8}, 6.539, True), ({"lora.r": 16}, None, False)])
    plot = scatter(view, "lora.r")
    assert len(plot["points"]) == 2
    labels = [label for _, label in plot["y_ticks"]]
    assert len(set(labels)) == len(labels) == 5


def test_a_choice_parameter_gets_one_place_per_category():
    view = _view([({"lr_scheduler": "cosine"}, 1.0, True), ({"lr_scheduler": "linear"}, 2.0, False)])
    plot = scatter(view, "lr_scheduler")
    assert [label for _, label in plot["x_ticks"]] == ["cosine", "linear"]
    assert scatter(_view([({"lora.r": 4}, None, False)]), "lora.r") is None
