"""``sweeps audit``: a trial a heuristic signal stopped is re-run to the end, and a wrong stop is called so."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

SPEC = {
    "name": "audited",
    "trainer": "tests.toy_trainer:ToyTrainer",
    "metric": "val_loss",
    "seed": 7,  # the random sampler then draws two of each behavior
    "budget": {"trials": 4, "epochs": 3, "concurrency": 2},
    "asha": False,
    "search": {"sampler": "random"},
    # a collapse after 3 steps of zero loss, however late: the toy's epoch-2 zeros trip it, and the trial
    # would recover
    "divergence": {"collapse": {"steps": 3, "relative": 0}},
    "fixed": {"lr": 0.01, "width": 4},
    "params": {"behavior": {"choices": ["ok", "zeros"]}},
}


def test_audit_reruns_the_heuristic_stops_and_finds_the_false_one(
    ray_session: None, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    from sweeps.engine.audit import audit_sweep
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    (workdir / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="audited", stream=io.StringIO())
    stopped = [r for r in swept.state.trials.values() if r.status == "diverged"]
    assert stopped and all(r.signal == "collapse" and r.params["behavior"] == "zeros" for r in stopped)
    assert any(r.status == "completed" for r in swept.state.trials.values())

    result = audit_sweep(workdir / "runs", "audited")
    assert [s.run_id for s in result.stops] == [r.run_id for r in sorted(stopped, key=lambda r: r.number)]
    for stop in result.stops:
        # the same loss as the completed trials: it would have tied for the best
        assert stop.epochs == 3 and stop.value == pytest.approx(0.04 + 1 / 3)
        assert stop.verdict == "false_stop" and stop.rank == 1
    # tied with the best, not ahead of it: the sweep's best value would have been the same
    assert len(result.false_stops) == len(stopped) and result.best_changed == []
    assert result.summary().endswith("would have changed: no")

    client = MlflowClient(swept.tracking_uri)
    for stop in result.stops:
        tags = client.get_run(stop.run_id).data.tags
        assert tags["sweep.audit.verdict"] == "false_stop" and tags["sweep.audit.run_id"] == stop.audit_run_id
        rerun = client.get_run(stop.audit_run_id)
        assert rerun.data.tags["sweep.role"] == "audit" and rerun.data.tags["sweep.audit_of"] == stop.run_id
        assert rerun.data.tags["mlflow.parentRunId"] == swept.parent_run_id and rerun.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(stop.audit_run_id, "val_loss")] == [1, 2, 3]
    parent = client.get_run(swept.parent_run_id)
    assert parent.data.tags["sweep.audit.false_stops"] == str(len(stopped))
    assert "audit/audit_1.txt" in {a.path for a in client.list_artifacts(swept.parent_run_id, "audit")}
    report = workdir / "runs" / "audited" / "report"
    assert (report / "audit.txt").read_text().startswith("trial")
    verdicts = {s["trial"]: s.get("verdict") for s in json.loads((report / "stops.json").read_text())}
    assert {verdicts[s.label] for s in result.stops} == {"false_stop"}  # the page has them with no `sweeps report`
    assert result.page == report / "report.html" and "false stop" in result.page.read_text()

    from sweeps.cli import main

    assert main(["report", "audited", "--storage", str(workdir / "runs")]) == 0  # the verdicts in the terminal
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("audit:")]
    assert len(printed) == len(stopped) and all(": false stop: re-run reached 0.373" in line for line in printed)


def test_audit_of_an_observed_sweep_judges_each_flag_from_the_trials_own_end(ray_session: None, workdir: Path) -> None:
    """A user's observe sweep: ``sweeps audit`` said "no trial was stopped" and gave its flags no verdict."""
    from mlflow import MlflowClient

    from sweeps.engine.audit import audit_sweep
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    spec = {**SPEC, "name": "observed", "divergence": {"mode": "observe", "collapse": {"steps": 3, "relative": 0}}}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="observed", stream=io.StringIO())
    flagged = sorted((r for r in swept.state.trials.values() if r.would_stop), key=lambda r: r.number)
    assert flagged and all(r.status == "completed" and r.would_stop.startswith("collapse@") for r in flagged)
    client = MlflowClient(swept.tracking_uri)
    experiment = client.get_run(swept.parent_run_id).info.experiment_id
    runs_before = len(client.search_runs([experiment], max_results=100))

    result = audit_sweep(workdir / "runs", "observed")
    assert [s.run_id for s in result.stops] == [r.run_id for r in flagged]
    for stop in result.stops:  # it recovered to the same loss as the others: a flag the defaults would get wrong
        assert stop.observed and stop.value == pytest.approx(0.04 + 1 / 3) and stop.audit_run_id == ""
        assert stop.verdict == "false_stop" and stop.rank == 1
        assert "(observe)" in stop.line("val_loss", len(result.completed))
    assert result.best_changed == []  # they ran: the sweep's best counts them already
    assert f"0 heuristic stop(s) re-run, {len(flagged)} would-be stop(s) judged" in result.summary()
    assert len(client.search_runs([experiment], max_results=100)) == runs_before  # nothing re-run
    assert {client.get_run(s.run_id).data.tags["sweep.audit.verdict"] for s in result.stops} == {"false_stop"}
    report = workdir / "runs" / "observed" / "report"
    stops = [s for s in json.loads((report / "stops.json").read_text()) if s["decision"] == "would stop (observe)"]
    assert {s["verdict"] for s in stops} == {"false_stop"}
    assert result.page is not None and "false stop: ran on to 0.373" in result.page.read_text()


def test_audit_of_an_observed_sweep_calls_a_flag_right_when_its_trial_ended_with_no_metric(
    ray_session: None, workdir: Path
) -> None:
    """An observed trial flagged by a heuristic signal that ran on to a NaN metric: the flag was right, and
    nothing is re-run (the trial's own end is the evidence)."""
    from mlflow import MlflowClient

    from sweeps.engine.audit import audit_sweep
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    spec = {
        **SPEC,
        "name": "observed-nan",
        "budget": {"trials": 2, "epochs": 3, "concurrency": 2},
        "divergence": {"mode": "observe", "collapse": {"steps": 3, "relative": 0}},
        "fixed": {"width": 4, "behavior": "zeros_nan"},
        "params": {"lr": {"choices": [0.01, 0.02]}},
    }
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="observed", stream=io.StringIO())
    flagged = sorted(swept.state.trials.values(), key=lambda r: r.number)
    assert len(flagged) == 2 and all(r.status == "diverged" and r.would_stop.startswith("collapse@") for r in flagged)

    result = audit_sweep(workdir / "runs", "observed")
    assert [s.run_id for s in result.stops] == [r.run_id for r in flagged]
    for stop in result.stops:
        assert stop.observed and stop.value is None and stop.audit_run_id == ""
        assert stop.failure == "no finite val_loss at the end" and stop.verdict == "true_stop"
        assert "ran on: no finite" in stop.line("val_loss", len(result.completed))  # clipped; whole on the run
    assert result.false_stops == [] and result.best_changed == []
    client = MlflowClient(swept.tracking_uri)
    assert {client.get_run(s.run_id).data.tags["sweep.audit.verdict"] for s in result.stops} == {"true_stop"}


def test_audit_names_the_stops_it_does_not_re_run(
    ray_session: None, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's audit said only "no trial was stopped (or, observed, flagged)" of a sweep whose trial a
    ``loss_scale`` flag (a loss not finite under loss scaling) had ended: it said nothing of that one."""
    from sweeps.cli import main
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    spec = {
        **SPEC,
        "name": "irrecoverable",
        "budget": {"trials": 2, "epochs": 3, "concurrency": 2},
        "divergence": {},
        "fixed": {"width": 4, "behavior": "diverge"},  # a NaN loss at epoch 2: non_finite, no scaler
        "params": {"lr": {"choices": [0.01, 0.02]}},
    }
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="nan", stream=io.StringIO())
    stopped = sorted(swept.state.trials.values(), key=lambda r: r.number)
    assert [r.signal for r in stopped] == ["non_finite", "non_finite"]
    assert main(["audit", "nan", "--storage", str(workdir / "runs")]) == 0
    out = capsys.readouterr().out.splitlines()
    steps = [r.diverged_at for r in stopped]
    assert out == [
        "nan: no trial was stopped (or, observed, flagged) by a heuristic signal",
        f"not re-run (no later step undoes them): t000 non_finite@{steps[0]}, t001 non_finite@{steps[1]}",
    ]


def test_audit_re_runs_a_rescue_a_heuristic_signal_stopped(ray_session: None, workdir: Path) -> None:
    """A user's fp16 trial ended by ``loss_scale`` was rescued at bf16, and ``loss_explosion`` stopped the rescue:
    the audit neither re-ran nor named it."""
    from mlflow import MlflowClient

    from sweeps.engine.audit import audit_sweep
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    spec = {
        **SPEC,
        "name": "rescued",
        "trainer": "tests.function_trainers:diverges_at_each_precision",
        "budget": {"trials": 1, "epochs": 2, "concurrency": 2},
        "divergence": {"rescue": True},
        "fixed": {"precision": "fp16"},
        "params": {"lr": {"choices": [0.01, 0.02]}},
    }
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="rescued", stream=io.StringIO())
    ended = {r.label: (r.status, r.signal) for r in swept.state.trials.values()}
    assert ended == {"t000": ("diverged", "loss_scale"), "t000r": ("diverged", "loss_explosion")}

    result = audit_sweep(workdir / "runs", "rescued")
    assert [s.label for s in result.stops] == ["t000r"] and result.irrecoverable[0].startswith("t000 loss_scale@")
    (stop,) = result.stops
    rerun = MlflowClient(swept.tracking_uri).get_run(stop.audit_run_id)
    assert rerun.data.params["precision"] == "bf16" and stop.value == 100.0 and stop.verdict == "unjudged"


def test_audit_calls_a_collapse_right_when_its_re_run_was_still_collapsed_at_the_end(
    ray_session: None, workdir: Path
) -> None:
    """A user's all-zero collapses re-ran to the end still all-zero, tied the sweep's all-zero completed trials,
    and read ``false_stop``: the re-run observes, and a collapse that held to its end proves the stop right."""
    from mlflow import MlflowClient

    from sweeps.engine.audit import audit_sweep
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import load_spec

    spec = {**SPEC, "name": "stuck", "fixed": {"lr": 0.01, "width": 4}}
    spec["params"] = {"behavior": {"choices": ["ok", "zeros_stay"]}}
    (workdir / "spec.yaml").write_text(yaml.safe_dump(spec))
    swept = run_sweep(load_spec(workdir / "spec.yaml"), root=workdir / "runs", name="stuck", stream=io.StringIO())
    stopped = [r for r in swept.state.trials.values() if r.status == "diverged"]
    assert stopped and all(r.signal == "collapse" and r.params["behavior"] == "zeros_stay" for r in stopped)

    result = audit_sweep(workdir / "runs", "stuck")
    assert [s.run_id for s in result.stops] == [r.run_id for r in sorted(stopped, key=lambda r: r.number)]
    for stop in result.stops:  # the same val_loss as the completed trials, its loss still 0 at the end
        assert stop.value == pytest.approx(0.04 + 1 / 3) and "loss exactly 0 for its last" in stop.collapsed
        assert stop.verdict == "true_stop" and stop.line("val_loss", len(result.completed)).endswith("true_stop")
    assert result.false_stops == [] and result.best_changed == []
    client = MlflowClient(swept.tracking_uri)
    for stop in result.stops:
        assert client.get_run(stop.audit_run_id).data.tags["sweep.collapsed_at_end"] == stop.collapsed


def test_audit_of_a_sweep_that_does_not_exist_is_one_line(workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sweeps", "audit", "nope"], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope" in done.stderr


def test_a_re_run_with_no_completed_trial_to_compare_is_not_judged_a_false_stop() -> None:
    """A newcomer's sweep at lr 1.0 completed no trial: its stop's re-run (val_loss 14.9, worse than the 6.3 it
    was stopped after) read "rank 1 of 1 false_stop"."""
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    stop = AuditedStop("t000", 0, "r", "loss_explosion", "12", 6.3, value=14.867)
    lost = AuditedStop("t001", 1, "s", "loss_explosion", "9", 7.0, value=None)
    result = AuditResult("s", "val_loss", "min", [stop, lost], completed=[], top_k=1)
    _judge(result)
    assert (stop.verdict, lost.verdict) == ("unjudged", "true_stop") and not result.false_stops
    _judge(AuditResult("s", "val_loss", "min", [stop], completed=[20.0], top_k=1))
    assert stop.verdict == "false_stop"


def test_with_no_completed_trial_only_the_best_re_run_would_have_changed_the_best() -> None:
    """A user's fp16 sweep completed no trial: ``--top-k 1`` named three re-runs as changing its best, two of
    them at 5 dB (the untrained model: 23.4 dB)."""
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    ends = {"t001": 5.204, "t004": 5.649, "t005": 22.839}
    stops = [
        AuditedStop(label, int(label[1:]), label, "loss_explosion", "7", None, value=v) for label, v in ends.items()
    ]
    result = AuditResult("s", "val_psnr", "max", stops, completed=[], top_k=1)
    _judge(result)
    assert [s.label for s in result.best_changed] == ["t005"]
    result.top_k = 2
    assert [s.label for s in result.best_changed] == ["t004", "t005"]
    # a completed trial at 10 dB: only t005 is ahead of it, at any k
    result = AuditResult("s", "val_psnr", "max", stops, completed=[10.0], top_k=2)
    _judge(result)
    assert [s.label for s in result.best_changed] == ["t005"]


def test_an_observed_flag_is_judged_against_the_trials_no_signal_flagged() -> None:
    """A user's inpainting sweep: the same trial, same metric, read ``true_stop`` stopped and ``false_stop`` observed.

    Observed, the pool held the other flagged trials (one-colour fills at 0.195, one at 1.6e6) and lowered the median.
    """
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    flagged = [0.19508, 0.19510, 0.19514, 0.19587, 0.19603, 1.58e6]
    unflagged = [0.1504, 0.1512, 0.1530]
    stop = AuditedStop("t006", 6, "r", "collapse", "38", None, value=0.19508, observed=True)
    result = AuditResult("s", "val_l1", "min", [stop], completed=flagged + unflagged, top_k=1, unflagged=unflagged)
    _judge(result)
    assert (stop.verdict, stop.rank) == ("true_stop", 4)
    assert "rank 4 of 4" in stop.line("val_l1", len(result.unflagged))


def test_an_observed_flag_on_the_sweeps_best_says_stopping_it_would_have_changed_the_best() -> None:
    """A user's observe sweep: its best trial was flagged at step 7, and the audit said "would have changed: no"."""
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    best = AuditedStop("t000", 0, "r", "loss_explosion", "7", None, value=6.53, observed=True)
    tied = AuditedStop("t003", 3, "s", "collapse", "21", None, value=8.0, observed=True)
    result = AuditResult("s", "val_fd", "min", [best, tied], [6.53, 8.0, 8.0, 9.1], top_k=1, unflagged=[8.0, 9.1])
    _judge(result)
    assert result.best_changed == [best]  # tied with the unflagged best: stopping it changes nothing
    assert result.summary().endswith("the sweep's best would have changed had they been stopped: t000")


def test_a_re_run_tied_with_the_best_does_not_change_it() -> None:
    """A user's all-zero collapses re-ran to exactly the value of the sweep's best (0.085265): "would have changed"."""
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    tied = AuditedStop("t000", 0, "r", "collapse", "22", None, value=0.085265)
    ahead = AuditedStop("t003", 3, "s", "loss_explosion", "9", 4.1, value=0.08)
    result = AuditResult("s", "val_mse", "min", [tied, ahead], completed=[0.085265, 0.085265, 0.0919], top_k=1)
    _judge(result)
    assert (tied.rank, ahead.rank) == (1, 1)
    assert result.best_changed == [ahead]
    assert result.summary().endswith("would have changed: t003")


def test_an_observed_flag_followed_by_damage_no_step_undoes_is_a_true_stop() -> None:
    """A user's observed trial: 6 overflows in a row at step 7, then its loss scale below its floor; it completed
    mid-table and would have read against the median alone."""
    from sweeps.engine.audit import AuditedStop, AuditResult, _judge

    later = "loss_scale@20: d: loss scale 0.5 below floor 1"
    stop = AuditedStop("t006", 6, "r", "loss_scale", "7", None, value=30.1, observed=True, later=later)
    result = AuditResult("s", "val_psnr", "max", [stop], [33.3, 30.1, 27.7], top_k=1, unflagged=[33.3, 27.7])
    _judge(result)
    assert stop.verdict == "true_stop" and stop.line("val_psnr", 2).split()[3:5] == ["ran", "on:"]
    assert "then loss_scale" in stop.line("val_psnr", 2)
