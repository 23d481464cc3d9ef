"""The report's parts without a sweep: stops and audit verdicts, the page, the curves, the live line, UI views."""

from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sweeps.core.keys import (
    AUDIT_FALSE_STOP,
    AUDIT_TRUE_STOP,
    TAG_AUDIT_METRIC,
    TAG_AUDIT_VERDICT,
    TAG_WOULD_STOP_REASON,
    TAG_WOULD_STOP_SIGNAL,
    TAG_WOULD_STOP_STEP,
)
from sweeps.core.records import SweepState, TrialRecord
from sweeps.engine.live_view import LiveView, estimate_left, event_line, status_line, trial_left
from sweeps.results.figures import Curve, draw_learning_curves
from sweeps.results.page import html_page, ordered
from sweeps.results.report import clipped, stop_decisions, terminal_table, write_stops
from sweeps.tracking.ui_views import top_view, trials_view, view_key, view_url


def row(number: int, status: str, value: float | None, epochs: int, **extra: Any) -> dict[str, Any]:
    return {
        "trial": f"t{number:03d}",
        "number": number,
        "status": status,
        "val_loss": value,
        "epochs": epochs,
        "reason": extra.pop("reason", ""),
        "signal": extra.pop("signal", ""),
        "diverged_at_step": extra.pop("step", None),
        "rescue_of": extra.pop("rescue_of", ""),
        "best": extra.pop("best", False),
        "mlflow_run_id": f"run{number}",
        "param.lr": extra.pop("lr", 0.01),
        "param.seed": 0,
        **extra,
    }


ROWS = [
    row(0, "pruned", 1.5, 1, reason="stopped by ASHA after epoch 1"),
    row(1, "completed", 0.4, 4, best=True),
    row(2, "diverged", None, 2, reason="loss_explosion: smoothed loss 113 > 20 x its best 0.03",
        signal="loss_explosion", step=6),
    row(3, "completed", 0.7, 4, lr=0.1),
    row(4, "failed", None, 1, reason="ValueError: boom"),
    row(5, "pruned", 1.1, 2, reason="stopped by ASHA after epoch 2"),
]  # fmt: skip
META = {"metric": "val_loss", "mode": "min", "trainer": "toy", "epochs": 4, "searched": ["lr"]}


def test_trials_read_best_first_then_pruned_by_how_far_they_got_then_the_rest() -> None:
    assert [r["trial"] for r in ordered(ROWS, "val_loss", "min")] == ["t001", "t003", "t005", "t000", "t002", "t004"]
    assert [r["trial"] for r in ordered(ROWS, "val_loss", "max")][:2] == ["t003", "t001"]


def test_stop_decisions_list_divergence_then_would_be_stops_then_asha_with_audit_verdicts() -> None:
    tags = {
        "run2": {TAG_AUDIT_VERDICT: AUDIT_FALSE_STOP, TAG_AUDIT_METRIC: "0.35"},
        "run3": {TAG_WOULD_STOP_SIGNAL: "grad_explosion", TAG_WOULD_STOP_STEP: "40", TAG_WOULD_STOP_REASON: "norm 9"},
        "run0": {TAG_AUDIT_VERDICT: AUDIT_TRUE_STOP, TAG_AUDIT_METRIC: "1.2"},
    }
    stops = stop_decisions(ROWS, tags)
    assert [(s["trial"], s["decision"]) for s in stops] == [
        ("t002", "stopped: diverged"),
        ("t003", "would stop (observe)"),
        ("t000", "stopped: pruned"),
        ("t005", "stopped: pruned"),
    ]
    diverged, observed = stops[0], stops[1]
    assert (diverged["signal"], diverged["step"], diverged["verdict"], diverged["audit_metric"]) == (
        "loss_explosion",
        6,
        AUDIT_FALSE_STOP,
        0.35,
    )
    assert (observed["signal"], observed["step"], observed["reason"]) == ("grad_explosion", 40, "norm 9")
    assert stops[2]["verdict"] == AUDIT_TRUE_STOP and stops[3]["verdict"] == ""


def test_a_would_be_stop_without_its_tags_comes_from_the_rows_signal_at_step(tmp_path: Path) -> None:
    rows = [row(0, "completed", 0.5, 4, would_stop="collapse@17", steps=40)]
    [stop] = stop_decisions(rows, {})
    assert (stop["decision"], stop["signal"], stop["step"]) == ("would stop (observe)", "collapse", 17)
    # 10 steps an epoch: step 17 is in epoch 2, not the trial's last (a user's VQ-VAE sweep read "epoch 5" for all)
    assert stop["epoch"] == 2
    (tmp_path / "stops.json").write_text(json.dumps([stop]))
    assert "step 17 in epoch 2" in html_page("s1", META, rows, "", tmp_path)
    [unknown] = stop_decisions([row(0, "completed", 0.5, 4, would_stop="collapse@17")], {})
    assert unknown["epoch"] is None  # steps not recorded: no epoch rather than a wrong one


def test_the_page_shows_the_stop_table_with_verdicts_and_a_sorted_trial_table(tmp_path: Path) -> None:
    tags = {"run2": {TAG_AUDIT_VERDICT: AUDIT_FALSE_STOP, TAG_AUDIT_METRIC: "0.35"}}
    (tmp_path / "stops.json").write_text(json.dumps(stop_decisions(ROWS, tags)))
    page = html_page("s1", META, ROWS, "diverged by signal: loss_explosion 1", tmp_path)
    stops = page.split("<section id='stops'>")[1].split("</section>")[0]
    assert "false stop: re-run reached 0.35 (better than the sweep&#x27;s best)" in stops
    assert "step 6 in epoch 2" in stops and "after epoch 1" in stops and "loss_explosion" in stops
    assert "title='loss_explosion: smoothed loss 113 &gt; 20 x its best 0.03'" in stops  # cut short, whole on hover
    trials = page.split("<section id='trials'>")[1]
    assert trials.index("* t001") < trials.index("t003") < trials.index("t005") < trials.index("t004")
    assert "<th>seed</th>" not in trials and "<th>lr</th>" in trials  # the swept parameters only
    # t002 was stopped in epoch 2: one epoch validated and part of the next, not "2" as if it ran two
    assert "<td class='num'>1+</td>" in trials.split("t002</td>")[1].split("</tr>")[0]
    table = terminal_table(ROWS, "val_loss")
    assert re.search(r"^ t002\s+diverged\s+-\s+1\+\s", table, re.M)
    assert table.endswith("\nepochs N+: stopped during epoch N+1, as diverged")
    assert "No sample images" in page  # no samples.json: the trainer logs none
    assert "run.image(grid)" in page and "sample_grid()" in page  # how, for either kind of trainer


def test_without_an_audit_the_page_says_so_and_has_no_audit_column(tmp_path: Path) -> None:
    (tmp_path / "stops.json").write_text(json.dumps(stop_decisions(ROWS, {})))
    page = html_page("s1", META, ROWS, "", tmp_path)
    assert "No audit recorded" in page and "<th>audit</th>" not in page
    # ASHA's cuts only: nothing sweeps audit would re-run (a user read "No audit recorded" as a to-do)
    cut = [r for r in ROWS if r["status"] != "diverged"]
    (tmp_path / "stops.json").write_text(json.dumps(stop_decisions(cut, {})))
    page = html_page("s1", META, cut, "", tmp_path)
    assert "Nothing to audit" in page and "No audit recorded" not in page
    (tmp_path / "stops.json").write_text(json.dumps(stop_decisions(ROWS, {})))
    (tmp_path / "audit.txt").write_text("t002 loss_explosion: false stop\n")  # what sweeps audit writes
    assert "t002 loss_explosion: false stop" in html_page("s1", META, ROWS, "", tmp_path)


def test_a_page_without_stops_does_not_say_every_trial_ran_to_its_end_when_some_failed(tmp_path: Path) -> None:
    (tmp_path / "stops.json").write_text("[]")
    rows = [row(1, "completed", 0.4, 4, best=True), row(4, "failed", None, 1), row(6, "oom", None, 1)]
    stops = html_page("s1", META, rows, "", tmp_path).split("<section id='stops'>")[1].split("</section>")[0]
    assert (
        "No trial was stopped by the divergence detector or ASHA; 2 ended before their last epoch (failed 1, oom 1)"
        in stops
    )
    assert "every trial ran" not in stops
    assert "ASHA.</p>" in html_page("s1", META, rows[:1], "", tmp_path)


def test_stops_written_before_are_kept_when_mlflow_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "stops.json").write_text('[{"trial": "t009"}]')
    write_stops(tmp_path, {**META, "tracking_uri": "", "parent_run_id": ""}, ROWS)
    assert json.loads((tmp_path / "stops.json").read_text()) == [{"trial": "t009"}]
    (tmp_path / "stops.json").unlink()
    write_stops(tmp_path, META, ROWS)
    assert [s["trial"] for s in json.loads((tmp_path / "stops.json").read_text())] == ["t002", "t000", "t005"]


def test_write_stops_reads_audit_verdicts_and_would_be_stops_from_mlflow(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(experiment).info.run_id
    runs = {}
    for number, tags in ((2, {TAG_AUDIT_VERDICT: AUDIT_FALSE_STOP, TAG_AUDIT_METRIC: "0.3"}), (3, {}), (0, {})):
        tags = {**tags, "mlflow.parentRunId": parent}
        if number == 3:
            tags.update({TAG_WOULD_STOP_SIGNAL: "collapse", TAG_WOULD_STOP_STEP: "12"})
        runs[number] = client.create_run(experiment, tags=tags).info.run_id
    rows = [{**r, "mlflow_run_id": runs.get(r["number"], "none")} for r in ROWS]
    meta = {**META, "tracking_uri": uri, "experiment_id": experiment, "parent_run_id": parent}
    write_stops(tmp_path, meta, rows)
    stops = {(s["trial"], s["decision"]): s for s in json.loads((tmp_path / "stops.json").read_text())}
    assert stops["t002", "stopped: diverged"]["verdict"] == AUDIT_FALSE_STOP
    assert stops["t002", "stopped: diverged"]["audit_metric"] == 0.3
    assert stops["t003", "would stop (observe)"]["step"] == 12


def test_learning_curves_draw_every_ending_with_its_mark(tmp_path: Path) -> None:
    curves = [
        Curve("t000", "completed", [(1, 1.0), (2, 0.6), (3, 0.5), (4, 0.45)], best=True, rank=1),
        Curve("t001", "completed", [(1, 1.1), (2, 0.8), (3, 0.7), (4, 0.65)], rank=2),
        Curve("t002", "pruned", [(1, 2.0), (2, 1.8)]),
        Curve("t003", "diverged", [(1, 1.4)], stop_epoch=2),
        Curve("t004", "diverged", [], stop_epoch=1),  # no finite epoch: its cross sits on the top edge
        Curve("t005", "diverged", [(1, 1e9)], stop_epoch=2),  # far off: does not squash the others
        Curve("t006", "failed", [(1, math.nan)]),
    ]
    path = draw_learning_curves(curves, "val_loss", "min", 4, [1, 2], tmp_path / "curves.png")
    assert path is not None
    with Image.open(path) as image:
        assert image.size == (1000, 480)
    assert draw_learning_curves([Curve("t0", "failed", [])], "m", "min", 4, [], tmp_path / "none.png") is None


def test_a_would_be_stop_is_a_thin_cross_on_its_trial_line_at_the_epoch_it_fell_in() -> None:
    from sweeps.results.figures import _draw_curves, _figure, plain_style
    from sweeps.results.report import would_stop_epoch

    # 40 steps over 4 epochs: step 12 falls in epoch 2, step 10 in epoch 1, step 40 in epoch 4
    row = {"would_stop": "loss_explosion@12", "steps": 40, "epochs": 4}
    assert would_stop_epoch(row) == 2
    assert would_stop_epoch({**row, "would_stop": "collapse@10"}) == 1
    assert would_stop_epoch({**row, "would_stop": "collapse@40"}) == 4
    assert would_stop_epoch({**row, "would_stop": ""}) == 0
    assert would_stop_epoch({**row, "would_stop": "collapse@?"}) == 0
    assert would_stop_epoch({**row, "steps": 0}) == 0
    curves = [
        Curve("t000", "completed", [(1, 1.0), (2, 0.6), (3, 0.5), (4, 0.45)], best=True, rank=1),
        Curve("t001", "completed", [(1, 1.1), (2, 0.9), (3, 0.8), (4, 0.7)], rank=2, would_stop_epoch=2),
        Curve("t002", "completed", [(1, 1.2), (2, 1.0), (3, 0.9), (4, 0.8)], rank=3),
        Curve("t003", "completed", [(1, 1.25), (2, 1.05), (3, 0.95), (4, 0.85)], rank=4, would_stop_epoch=2),
    ]
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, "m", "min", 4, [])
        figure.canvas.draw()
    marks = [line for line in figure.axes[0].lines if line.get_marker() == "x"]
    assert sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in marks) == [(2.0, 0.9), (2.0, 1.05)]
    # one label for the two crosses of epoch 2, not two drawn over each other
    assert [t.get_text() for t in figure.axes[0].texts if "t003" in t.get_text()] == ["t001, t003"]
    legend = figure.axes[0].get_legend()
    assert "would stop (observe): 2" in [text.get_text() for text in legend.get_texts()]
    assert legend.get_window_extent().x1 <= figure.bbox.x1  # its text whole, not cut at the image's edge


@pytest.mark.parametrize(("mode", "far", "edge"), [("min", 1e9, 0.96), ("max", -1e9, 0.04)])
def test_a_diverged_trial_off_the_plot_sits_on_the_worse_edge(mode: str, far: float, edge: float) -> None:
    from sweeps.results.figures import _draw_curves, _figure, plain_style

    good, worse = (0.4, 1.0) if mode == "min" else (30.0, 20.0)
    curves = [
        Curve("t000", "completed", [(1, worse), (2, good)], best=True, rank=1),
        Curve("t001", "diverged", [], stop_epoch=1),  # no finite epoch
        Curve("t002", "diverged", [(1, far)], stop_epoch=2),  # far off on the worse side
        Curve("t003", "diverged", [(1, worse)], stop_epoch=2),  # on the plot: where it was
    ]
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, "m", mode, 2, [])
    crosses = [line for line in figure.axes[0].lines if line.get_marker() == "X"]
    assert sorted(float(line.get_ydata()[0]) for line in crosses) == sorted([edge, edge, worse])


def test_a_trial_cut_far_off_leaves_the_plot_instead_of_squashing_the_completed_curves() -> None:
    """A user's flow: one pruned trial's first epoch at 38.4 bits/dim set the y-axis to 40, the completed curves
    (5.6 to 8.1) squashed into its lowest fifth. Its value now leaves the plot; its circle sits on the top edge,
    labelled with the value; the nearer pruned trial stays where it was."""
    from sweeps.results.figures import _draw_curves, _figure, plain_style

    curves = [
        Curve("t012", "completed", [(1, 7.9), (2, 6.9), (3, 6.2), (4, 5.57)], best=True, rank=1),
        Curve("t001", "completed", [(1, 8.07), (2, 7.5), (3, 7.0), (4, 6.63)], rank=2),
        Curve("t014", "pruned", [(1, 38.39)]),
        Curve("t013", "pruned", [(1, 8.0)]),
        Curve("t002", "diverged", [], stop_epoch=1),
    ]
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, "val_bpd", "min", 4, [1])
    ax = figure.axes[0]
    low, high = ax.get_ylim()
    assert 5.0 < low < 5.57 and 8.07 < high < 9.0, (low, high)
    circles = sorted(float(line.get_ydata()[0]) for line in ax.lines if line.get_marker() == "o" and line.get_ms() == 7)
    assert circles == [0.96, 8.0]  # t014 on the top edge (axes height), t013 at its value
    assert "t014 (38.39)" in [text.get_text() for text in ax.texts]  # apart from t002's cross label at that spot


def test_a_long_reason_in_the_terminal_table_is_cut_at_a_word() -> None:
    reason = "runaway_weights: d: last-layer weight norm 80.6 > 50 x 0.583 on 15 of the last 19 steps"
    assert clipped(reason, 60) == "runaway_weights: d: last-layer weight norm 80.6 > 50 x..."
    assert clipped("x" * 80, 60) == "x" * 57 + "..." and clipped("short", 60) == "short"
    table = terminal_table([row(0, "diverged", None, 1, reason=reason)], "val_loss")
    assert table.splitlines()[-2].endswith("> 50 x 0.583 on 15 of the last 19 steps")  # a stop's reason: whole
    failure = (
        "RuntimeError: Given groups=1, weight of size [8, 3, 3, 3], expected input[4, 1, 32, 32] to have 3 channels"
    )
    table = terminal_table([row(0, "failed", None, 1, reason=failure)], "val_loss")
    assert table.splitlines()[-1].endswith("expected input[4, 1, 32, 32] to...")


def test_diverged_trials_stopped_at_the_same_spot_are_named_in_one_label() -> None:
    from sweeps.results.figures import _merged

    crosses = [(1, 0.96, "t002", "r", True), (1, 0.96, "t003", "r", True), (2, 0.96, "t010", "r", True)]
    crosses.append((1, 0.96, "t011", "r", False))  # at a value that happens to be 0.96: not on the edge
    assert [c[2] for c in _merged(crosses)] == ["t002, t003", "t010", "t011"]


def record(number: int, status: str, value: float | None = None) -> TrialRecord:
    return TrialRecord(number, f"ray{number}", f"run{number}", {}, {}, status=status, value=value)


def test_the_live_line_says_trials_done_of_planned_and_the_time_left() -> None:
    state = SweepState(metric="val_loss", mode="min")
    for number, status, value in ((0, "completed", 0.5), (1, "pruned", None), (2, "running", None)):
        state.trials[f"ray{number}"] = record(number, "running")
        if status != "running":
            state.observe(state.trials[f"ray{number}"], {"val_loss": value} if value else None)
            state.finish(state.trials[f"ray{number}"], status)
    line = status_line(state, 12, 125.0, estimate_left(2, 100.0, 10))
    assert line == (
        "[02:05] · trials 2/12 done · running 1 · completed 1 · pruned 1 · best val_loss=0.5 (t000) · ~08:20 left"
    )
    assert status_line(state, 12, 5.0).endswith("time left ?")
    assert estimate_left(0, 10.0, 5) is None and estimate_left(3, 3 * 3600.0, 3) == 3 * 3600.0
    assert "~1:00:00 left" in status_line(state, 12, 5.0, 3600.0)
    state.trials["ray0"].value = 29.9954  # as the table shows it (5 digits), not "30"
    assert "best val_loss=29.995 (t000)" in status_line(state, 12, 5.0)
    assert event_line(state.trials["ray0"], "val_loss").startswith("  t000  completed   val_loss=29.995 after")


def test_time_left_is_never_less_than_a_running_trial_needs_at_its_own_pace() -> None:
    # 3 of 12 trials diverged in seconds: the pace says 4 s left; a slow trial has 3 of 4 epochs to go
    assert estimate_left(3, 3.0, 4) == 4.0
    slow = trial_left({"epoch": 1, "time_total_s": 20.0, "timestamp": 1000.0}, 4, now=1005.0)
    assert slow == 55.0  # 20 s an epoch, 3 epochs left, 5 s of them gone since it reported
    assert estimate_left(3, 3.0, 4, [slow, 2.0]) == 55.0
    assert estimate_left(0, 0.0, 4, [slow]) is None  # before any trial ended: "time left ?"
    assert estimate_left(9, 900.0, 3, [slow]) == 300.0  # the pace, when it says more
    assert trial_left({"epoch": 4, "time_total_s": 8.0, "timestamp": 0.0}, 4, now=1.0) == 0.0
    assert trial_left({"training_iteration": 2, "time_total_s": 8.0}, 4, now=1.0) == 8.0  # a user's own epoch key
    assert trial_left({}, 4, now=0.0) is None and trial_left({"epoch": 1}, 4, now=0.0) is None
    assert trial_left({"timestamp": 5.0}, 4, now=70.0, started=10.0) == 180.0  # 60 s in, no epoch done yet

    state = SweepState(metric="val_loss", mode="min")
    view = LiveView(state, 12, io.StringIO(), epochs=4)
    view.on_trial_start(0, [], None)
    view.ended_here = 1
    running = type("T", (), {"trial_id": "a", "status": "RUNNING"})()
    view.on_trial_result(0, [], running, {"epoch": 1, "time_total_s": 600.0})
    view._count_running([running, type("T", (), {"trial_id": "b", "status": "PENDING"})()])
    assert view.line().endswith("~30:00 left")  # 600 s an epoch, 3 to go


def test_the_live_view_prints_a_line_per_ended_trial_and_its_status_line() -> None:
    state = SweepState(metric="val_loss", mode="min")
    state.trials["ray0"] = record(0, "running")
    out = io.StringIO()
    view = LiveView(state, 4, out)
    view.on_trial_start(0, [], None)
    state.observe(state.trials["ray0"], {"val_loss": 0.25, "epoch": 3})
    state.finish(state.trials["ray0"], "completed")
    ended = type("T", (), {"trial_id": "ray0", "status": "RUNNING"})()  # Tune marks it ended after the callback
    others = [type("T", (), {"trial_id": i, "status": s})() for i, s in (("a", "RUNNING"), ("b", "PENDING"))]
    for number in (8, 9):  # asked for: one waits for CPUs, one is "a" (running)
        state.trials[f"ray{number}"] = record(number, "running")
    view.on_trial_complete(0, [ended, *others], ended)
    first, second = out.getvalue().splitlines()
    assert "running 1 ·" in second  # users saw "running 3" on 2 CPUs, and "running 1" while 2 trained
    assert first.split() == ["t000", "completed", "val_loss=0.25", "after", "3", "epoch(s)"]
    diverged = record(1, "diverged")
    diverged.epochs, diverged.reason = 1, "loss_explosion: ... (step 14)"
    assert event_line(diverged, "val_loss") == "  t001  diverged    in epoch 1 (loss_explosion: ... (step 14))"
    diverged.epochs, diverged.value = 2, 0.5  # a user read "val_fd=32.415 in epoch 2" as epoch 2's value
    assert event_line(diverged, "val_loss").startswith("  t001  diverged    in epoch 2, last val_loss=0.5 (")
    assert "trials 1/4 done" in second and second.endswith(" left") and "~" in second


def test_ui_views_open_the_sweeps_trials_and_its_top_trials_compared() -> None:
    trials = trials_view("s'1", "val_mse", "min", ["lr", "precision"])
    assert trials["searchFilter"] == "tags.`sweep.name` = 's\\'1' AND tags.`sweep.role` != 'parent'"
    assert trials["orderByKey"] == "metrics.`sweep/final`" and trials["orderByAsc"] is True  # completed first
    assert trials["selectedColumns"][:3] == ["metrics.`val_mse`", "params.`lr`", "params.`precision`"]
    assert trials["columnOrder"] == trials["selectedColumns"]  # in that order, not MLflow's alphabetical one
    top = top_view("psnr", "max", ["lr"], ["a1", "b2"])
    assert top["searchFilter"] == "attributes.run_id IN ('a1', 'b2')" and top["orderByAsc"] is False
    parallel, per_epoch = top["compareRunCharts"]
    assert (parallel["type"], parallel["selectedParams"], parallel["selectedMetrics"]) == ("PARALLEL", ["lr"], ["psnr"])
    assert (per_epoch["type"], per_epoch["metricKey"]) == ("LINE", "psnr")
    assert {c["metricSectionId"] for c in top["compareRunCharts"]} == {top["compareRunSections"][0]["uuid"]}
    key = view_key("vae-demo-1", "top5")
    assert key == view_key("vae-demo-1", "top5") != view_key("vae-demo-2", "top5")
    assert view_url("http://h:5000/", "7", key, charts=True) == (
        f"http://h:5000/#/experiments/7/runs?viewStateShareKey={key}&compareRunsMode=CHART&workflowType=machine_learning"
    )


def test_the_top_trials_chart_holds_only_the_parameters_every_top_trial_has(tmp_path: Path) -> None:
    """A user's top 5 showed 2 lines: MLflow's parallel coordinates leaves out a run without a charted parameter
    (the conditional ``init_scale`` of fp16 trials), and the sweep's best ran at fp32."""
    import json

    from mlflow import MlflowClient

    from sweeps.tracking.ui_views import SHARED_VIEW_TAG, save_views

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store = MlflowClient(uri)
    experiment = store.create_experiment("e")
    ids = []
    for params in ({"lr": "0.01", "precision": "fp32"}, {"lr": "0.02", "precision": "fp16", "init_scale": "1024"}):
        run = store.create_run(experiment)
        for key, value in params.items():
            store.log_param(run.info.run_id, key, value)
        ids.append(run.info.run_id)
    views = save_views(uri, experiment, "s", "val_mse", "min", ["lr", "precision", "init_scale"], ids)
    assert views.params == ["lr", "precision"]  # what the parent's description says is compared
    top = json.loads(store.get_experiment(experiment).tags[SHARED_VIEW_TAG + views.top_key])
    assert top["compareRunCharts"][0]["selectedParams"] == ["lr", "precision"]
    trials = json.loads(store.get_experiment(experiment).tags[SHARED_VIEW_TAG + views.trials_key])
    assert "params.`init_scale`" in trials["selectedColumns"]  # the table still shows it


@pytest.mark.parametrize("mode", ["min", "max"])
def test_ordered_puts_trials_without_a_value_after_those_with_one(mode: str) -> None:
    rows = [row(0, "completed", None, 4), row(1, "completed", 0.3, 4), row(2, "completed", math.inf, 4)]
    assert [r["trial"] for r in ordered(rows, "val_loss", mode)][0] == "t001"


def test_ui_links_of_a_sweep_with_no_completed_trial_say_so_instead_of_a_top_0(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from sweeps.cli import _sweep_links
    from sweeps.core.keys import ROLE_PARENT, TAG_NAME, TAG_ROLE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("ui")
    parent = client.create_run(experiment, tags={TAG_ROLE: ROLE_PARENT, TAG_NAME: "s1"}).info.run_id
    client.log_param(parent, "metric", "val_loss")
    client.log_param(parent, "searched", "lr")
    lines = _sweep_links(uri, experiment, "http://127.0.0.1:5000", 3, None)
    assert len(lines) == 2 and lines[0].startswith("sweep s1, its trials by val_loss: http://127.0.0.1:5000/")
    assert lines[1] == "(no top trials to compare: no trial of it completed with a val_loss)"


def test_the_end_of_run_names_where_each_failed_trials_traceback_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sweeps.cli import _print_result
    from sweeps.engine.runner import SweepResult
    from sweeps.spec.sweep_spec import load_spec
    from sweeps.store.sweep_dir import new_sweep_dir
    from tests.helpers import toy_spec, write_spec

    state = SweepState(metric="val_loss", mode="min")
    for number, status in ((0, "completed"), (1, "failed"), (2, "oom")):
        state.trials[f"ray{number}"] = record(number, "running", 0.5)
        state.finish(state.trials[f"ray{number}"], status)
    result = SweepResult(new_sweep_dir(tmp_path, "s"), state, "p", "sqlite:///m.db")
    assert _print_result(result, load_spec(write_spec(tmp_path, toy_spec("s"))), "sweep_runs") == 0
    assert "errors:  traceback.txt in the MLflow run of t001 run1, t002 run2\n" in capsys.readouterr().out


def test_a_would_be_stop_shows_in_the_trial_tables_and_the_ended_trials_line() -> None:
    """A user's observe sweep showed its flags only in the final block: the tables' reason was empty."""
    from sweeps.core.records import TrialRecord
    from sweeps.engine.live_view import event_line

    rows = [row(8, "completed", 0.046, 5, would_stop="collapse@73"), row(1, "completed", 0.04, 5, best=True)]
    table = terminal_table(rows, "val_loss")
    assert re.search(r"^ t008\s+completed.*would have stopped at collapse@73 \(observe\)$", table, re.M), table
    assert "would have stopped" not in table.split("t001")[1]
    page = html_page("s1", META, rows, "", Path("/nonexistent"))
    assert "would have stopped at collapse@73 (observe)" in page.split("<section id='trials'>")[1]
    record = TrialRecord(8, "a", "r8", {}, {}, status="completed", value=0.046, epochs=5, would_stop="collapse@73")
    assert event_line(record, "val_mse").endswith("after 5 epoch(s) · would have stopped at collapse@73 (observe)")


def test_what_mattered_says_the_importances_leave_out_the_trials_that_did_not_complete(tmp_path: Path) -> None:
    """A user read ``output_activation 0.00`` while its five worst trials, all cut by ASHA, shared one value."""
    (tmp_path / "importances.json").write_text(json.dumps({"lr": 0.9, "width": 0.1}))
    page = html_page("s1", META, ROWS, "", tmp_path)
    mattered = html.unescape(page.split("<section id='mattered'>")[1].split("</section>")[0])
    assert (
        "Each parameter's share of the metric's variance (fANOVA) over the 2 completed trials of 6: the 4 pruned, "
        "stopped or failed ones have no final value and are left "
        "out, so a parameter whose bad values were all cut early can score near 0 here (the trials table shows "
        "them). Few trials: read these as a hint, not a measurement."
    ) in mattered


def test_importances_count_only_completed_trials_and_leave_out_parameters_some_lack() -> None:
    """A user's ``poison`` parameter decided every divergence and scored 0.016: the diverged trials, COMPLETE in
    Optuna with their last value, were counted; ``res_blocks``, only the resnet trials', read 0.00."""
    import optuna

    from sweeps.results.page import importance_scope
    from sweeps.results.report import importances

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(24):
        trial = study.ask()
        lr, poison = trial.suggest_float("lr", 1e-4, 1.0, log=True), trial.suggest_categorical("poison", [0, 1])
        arch = trial.suggest_categorical("arch", ["unet", "resnet"])
        if arch == "resnet":
            trial.suggest_int("res_blocks", 1, 4)
        diverged = poison == 1 and number % 3 != 0
        trial.set_user_attr("status", "diverged" if diverged else "completed")
        study.tell(trial, 5.0 if diverged else abs(math.log10(lr) + 2))  # a diverged trial: its last value
    found = importances(study)
    assert set(found) == {"lr", "poison", "arch"}  # res_blocks: not in every completed trial
    assert found["lr"] > 0.5 and abs(sum(found.values()) - 1) < 1e-6
    rows = [
        {"trial": "t000", "status": "completed", "param.arch": "unet", "param.res_blocks": None},
        {"trial": "t001", "status": "completed", "param.arch": "resnet", "param.res_blocks": 2},
        {"trial": "t002", "status": "diverged", "param.arch": "resnet", "param.res_blocks": 3},
    ]
    said = importance_scope(rows, ["arch", "res_blocks"])
    assert "over the 2 completed trials of 3" in said
    assert "Not measured: res_blocks (only some completed trials have it)" in said


def test_a_copy_of_the_page_links_the_report_folders_files_where_they_are(tmp_path: Path) -> None:
    """``sweeps report --html FILE``'s copy linked ``plots.html`` and ``results.csv`` next to itself, where none are."""
    from sweeps.results.page import linked_from

    for name in ("plots.html", "results.csv"):
        (tmp_path / name).write_text("x")
    page = html_page("s1", META, ROWS, "", tmp_path)
    assert "href='plots.html'" in page and "href='results.csv'" in page  # the page in its folder: relative
    copy = linked_from(page, tmp_path)
    assert f"href='{(tmp_path / 'plots.html').as_uri()}'" in copy and "href='plots.html'" not in copy
    assert f"href='{(tmp_path / 'results.csv').as_uri()}'" in copy


def test_the_top_trials_end_labels_stay_inside_the_plot_and_apart() -> None:
    """A user's ``t008 best`` was drawn on the plot's top edge: its spread, made in pixels, was applied in points."""
    from sweeps.results.figures import _draw_curves, _figure, plain_style

    curves = [  # max mode: the best three end together at the top of the plot
        Curve("t000", "completed", [(1, 20.0), (2, 27.784)], best=True, rank=1),
        Curve("t001", "completed", [(1, 20.5), (2, 27.775)], rank=2),
        Curve("t002", "completed", [(1, 21.0), (2, 27.70)], rank=3),
        Curve("t003", "completed", [(1, 19.0), (2, 25.0)], rank=4),
    ]
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, "val_psnr", "max", 2, [])
        figure.canvas.draw()
    ax = figure.axes[0]
    box = ax.get_window_extent()
    labels = [t for t in ax.texts if t.get_text().startswith(("t000", "t001", "t002"))]
    assert len(labels) == 3
    extents = [t.get_window_extent() for t in labels]  # each label with its line to its point
    assert all(box.y0 <= e.y0 and e.y1 <= box.y1 for e in extents), (box, extents)
    # the labels' centres, in pixels: at least a line of 8-point text (11 px at 100 dpi) apart
    centres = sorted(ax.transData.transform(t.xy)[1] + t.xyann[1] * figure.dpi / 72 for t in labels)
    assert all(high - low >= 12 for low, high in zip(centres, centres[1:], strict=False)), centres


def test_the_names_of_stopped_trials_are_drawn_apart() -> None:
    """A user's VQ-VAE: two collapsed trials stopped in epoch 2 at 0.05462 and 0.05464 had their names drawn over
    each other, and two trials cut far off had their names and values drawn over those of the crosses beside them."""
    from matplotlib.text import Text

    from sweeps.results.figures import _draw_curves, _figure, plain_style

    best = [(1, 0.0449), (2, 0.0386), (3, 0.031), (4, 0.0205), (5, 0.0187), (6, 0.0166), (7, 0.0155), (8, 0.0155)]
    second = [(1, 0.0548), (2, 0.0489), (3, 0.038), (4, 0.030), (5, 0.0253), (6, 0.0234), (7, 0.0226), (8, 0.0219)]
    curves = [
        Curve("t008", "completed", best, best=True, rank=1),
        Curve("t004", "completed", second, rank=2),
        Curve("t005", "diverged", [(1, 0.05462)], stop_epoch=2),
        Curve("t010", "diverged", [(1, 0.05464)], stop_epoch=2),
        Curve("t000", "diverged", [(1, 0.0547), (2, 0.0546)], stop_epoch=3),
        Curve("t013", "diverged", [(1, 0.0562)], stop_epoch=1),
        Curve("t002", "pruned", [(1, 0.2998)]),
        Curve("t014", "pruned", [(1, 0.1114)]),
        Curve("t009", "pruned", [(1, 0.0549)]),
        Curve("t016", "pruned", [(1, 0.0547), (2, 0.0475), (3, 0.0419)]),
    ]
    with plain_style():
        figure = _figure(10.0, 4.8)
        _draw_curves(figure, curves, "val_mse", "min", 8, [1, 3])
        figure.savefig(io.BytesIO(), format="png")  # every text placed as in the report's PNG
    names = [t for t in figure.axes[0].texts if t.get_text().startswith("t")]
    named = {name for t in names for name in re.findall(r"t\d{3}", t.get_text())}
    assert named == {"t005", "t010", "t000", "t013", "t002", "t014", "t008", "t004"}
    boxes = [(t.get_text(), Text.get_window_extent(t)) for t in names]  # the text alone, not an end label's line
    for i, (text, box) in enumerate(boxes):
        for other, other_box in boxes[i + 1 :]:
            assert not box.overlaps(other_box), (text, other, box, other_box)


def test_the_curves_caption_puts_far_off_crosses_on_the_worse_edge(tmp_path: Path) -> None:
    """A user's SR sweep (higher is better) read that a diverged cross sits on the top edge; the plot puts it on the
    bottom, the worse edge, as docs/recording.md says."""
    draw_learning_curves(
        [Curve("t000", "completed", [(1, 20.0)], best=True, rank=1)],
        "m",
        "max",
        1,
        [],
        tmp_path / "learning_curves.png",
    )
    for mode, edge, other in (("min", "top", "bottom"), ("max", "bottom", "top")):
        page = html_page("s1", {**META, "mode": mode}, ROWS, "", tmp_path)
        assert f"on the {edge} edge when its metric was off the scale" in page
        assert f"on the {other} edge" not in page
