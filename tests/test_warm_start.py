"""Warm start: an earlier sweep's trials told to a new study, its best configs first (real Ray, Optuna, MLflow)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from sweeps.cli import main
from sweeps.engine.runner import SweepResult, run_sweep
from sweeps.engine.warm_start import (
    WarmStart,
    check_warm_start,
    fixed_mismatch_note,
    point_in_space,
    tell_earlier_trials,
    unknown_in,
    warm_start_note,
)
from sweeps.results.export import best_config
from sweeps.results.report import importances
from sweeps.spec.params import sample
from sweeps.spec.sweep_spec import load_spec
from sweeps.store.study import QUEUED_ATTR, WARM_ATTR, create_study, load_study
from sweeps.store.sweep_dir import SweepStoreError, new_sweep_dir
from tests.helpers import spec_from_dict, toy_spec, write_spec

EARLIER = toy_spec("wa", budget__trials=6, budget__epochs=2)
NARROWER = toy_spec("wb", budget__trials=4, budget__epochs=2, params__lr__low=1e-3)  # lr 1e-3..1, was 1e-5..1


def sweep(workdir: Path, data: dict[str, Any], **kwargs: Any) -> SweepResult:
    path = write_spec(workdir, data, f"{data['name']}.yaml")
    kwargs.setdefault("stream", io.StringIO())
    return run_sweep(load_spec(path), root=workdir / "runs", name=data["name"], **kwargs)


def frozen(params: dict[str, Any], config: dict[str, Any] | None = None, value: float = 0.1) -> Any:
    dists = {k: optuna.distributions.FloatDistribution(1e-9, 10.0) for k in params}
    return optuna.trial.create_trial(value=value, params=params, distributions=dists, user_attrs={"config": config})


def test_a_trial_is_a_point_of_the_new_space_only_where_every_value_fits() -> None:
    spec = spec_from_dict(NARROWER)
    assert point_in_space(frozen({"lr": 0.01}, {"lr": 0.01, "width": 4}), spec)[0] == {"lr": 0.01, "width": 4}  # type: ignore[index]
    assert point_in_space(frozen({"lr": 1e-4}, {"lr": 1e-4, "width": 4}), spec) == "lr outside this space"
    assert point_in_space(frozen({"lr": 0.01}, {"lr": 0.01, "width": 9}), spec) == "width outside this space"
    fixed_width = spec_from_dict(toy_spec("f", params={"lr": EARLIER["params"]["lr"]}, fixed={"width": 4}))
    assert point_in_space(frozen({"lr": 0.01}, {"lr": 0.01, "width": 2}), fixed_width) == "fixed width differs"
    wider = spec_from_dict(
        toy_spec("w", params={**EARLIER["params"], "steps_per_epoch": {"type": "int", "low": 1, "high": 9}})
    )
    # a parameter new to the space: the trial is told without it (a user's warm start after adding one told nothing)
    assert point_in_space(frozen({"lr": 0.01}, {"lr": 0.01, "width": 4}), wider)[0] == {"lr": 0.01, "width": 4}  # type: ignore[index]
    assert unknown_in({"lr": 0.01, "width": 4}, wider) == ["steps_per_epoch"]
    other = spec_from_dict(toy_spec("o", params={"steps_per_epoch": {"type": "int", "low": 1, "high": 9}}))
    assert point_in_space(frozen({"lr": 0.01}, {"lr": 0.01}), other) == "no value of any parameter searched here"


def earlier_study(tmp_path: Path) -> tuple[Any, optuna.Study, dict[str, Any]]:
    """The earlier sweep ``wa`` (EARLIER's space) with an empty study, and its distributions of lr and width."""
    earlier = new_sweep_dir(tmp_path, "wa")
    lr = optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)
    width = optuna.distributions.IntDistribution(1, 8)
    return earlier, create_study(earlier, spec_from_dict(EARLIER)), {"lr": lr, "width": width}


def test_the_warm_start_line_counts_the_earlier_trials_it_could_not_tell(tmp_path: Path) -> None:
    spec = spec_from_dict(NARROWER)
    earlier, old, dists = earlier_study(tmp_path)
    lr, width = dists["lr"], dists["width"]
    for value, trial_lr in ((0.5, 0.01), (0.4, 1e-4)):  # told; outside the narrower lr range
        trial = optuna.trial.create_trial(
            value=value, params={"lr": trial_lr, "width": 4}, distributions={"lr": lr, "width": width}
        )
        old.add_trial(trial)
    for _ in range(2):  # a failed and an interrupted trial: nothing to tell
        old.tell(old.ask(), state=TrialState.FAIL)
    warm = tell_earlier_trials(create_study(new_sweep_dir(tmp_path, "wb"), spec), earlier, spec)
    assert warm.line() == (
        "warm start from wa: told 1 trial, its best 1 first; left out 3 (2 failed or interrupted, "
        "1 lr outside this space)"
    )


def test_a_warm_start_from_a_sweep_stopped_by_ctrl_c_trains_its_interrupted_trials_again(tmp_path: Path) -> None:
    """A user's GAN sweep, Ctrl-C'd: the trial that was running (8.48 in an earlier sweep) was never tried again."""
    spec = spec_from_dict(NARROWER)
    earlier, old, dists = earlier_study(tmp_path)
    config = {"lr": 0.01, "width": 4}
    old.add_trial(optuna.trial.create_trial(value=0.5, params=config, distributions=dists))
    for trial_lr, status in ((0.05, "interrupted"), (0.06, "failed"), (1e-4, "interrupted")):  # the last: out of space
        trial = old.ask(dists)
        trial.set_user_attr("config", {"lr": trial_lr, "width": 3})
        trial.set_user_attr("status", status)
        old.tell(trial, state=TrialState.FAIL)
    study = create_study(new_sweep_dir(tmp_path, "wb"), spec)
    warm = tell_earlier_trials(study, earlier, spec)
    assert warm.line() == (
        "warm start from wa: told 1 trial, its best 1 first, then its 1 interrupted trial again; "
        "left out 3 (3 failed or interrupted)"
    )
    assert [t.user_attrs[QUEUED_ATTR] for t in study.get_trials(states=(TrialState.WAITING,))] == [
        "wa t000",
        "wa t001 (interrupted)",
    ]
    assert [sample(study.ask(), spec.params, spec.fixed) for _ in range(2)] == [config, {"lr": 0.05, "width": 3}]
    only = WarmStart("wa", 0, 0, {"failed or interrupted": 2}, rerun=2)  # nothing completed before Ctrl-C
    assert (
        only.line()
        == "warm start from wa: told 0 trials, its 2 interrupted trials first; left out 2 (2 failed or interrupted)"
    )


def test_a_warm_start_after_a_parameter_was_added_tells_its_trials_and_draws_it_in_their_best(tmp_path: Path) -> None:
    """A user added ``wd`` to the space: "told 0 trials, its best 0 first; left out 12 (8 no value of wd ...)"."""
    added = {**EARLIER["params"], "steps_per_epoch": {"type": "int", "low": 1, "high": 9}}
    wider = spec_from_dict(toy_spec("w", params=added))
    earlier = new_sweep_dir(tmp_path, "wa")
    old = create_study(earlier, spec_from_dict(EARLIER))
    lr = optuna.distributions.FloatDistribution(1e-5, 1.0, log=True)
    width = optuna.distributions.IntDistribution(1, 8)
    for value, trial_lr in ((0.5, 0.01), (0.4, 0.02)):
        config = {"lr": trial_lr, "width": 4}
        old.add_trial(
            optuna.trial.create_trial(
                value=value, params=config, distributions={"lr": lr, "width": width}, user_attrs={"config": config}
            )
        )
    study = create_study(new_sweep_dir(tmp_path, "wb"), wider)
    warm = tell_earlier_trials(study, earlier, wider)
    assert warm.line() == "warm start from wa: told 2 trials (2 without steps_per_epoch, drawn anew), its best 2 first"
    first = study.ask()  # the earlier best, queued: its lr and width, steps_per_epoch drawn
    drawn = sample(first, wider.params, wider.fixed)
    assert (drawn["lr"], drawn["width"]) == (0.02, 4) and 1 <= drawn["steps_per_epoch"] <= 9


def test_a_warm_start_from_a_sweep_of_other_epochs_gets_a_note(tmp_path: Path) -> None:
    earlier = new_sweep_dir(tmp_path, "wa")
    earlier.write_meta({"epochs": 4})
    assert warm_start_note(earlier, spec_from_dict(NARROWER)) == (
        "its trials trained 4 epochs, this sweep's train 2: their values are told as they were reached, "
        "and its best configs are trained again at this sweep's epochs"
    )
    earlier.write_meta({"epochs": 2})
    assert warm_start_note(earlier, spec_from_dict(NARROWER)) is None


def test_a_warm_start_of_the_same_seed_does_not_draw_the_earlier_sweeps_start_up_configs_again(tmp_path: Path) -> None:
    """A user's warm-started sweep re-ran three of the earlier sweep's random start-up configs, value for value."""
    spec = spec_from_dict({**EARLIER, "search": {"n_startup_trials": 8, "random_fraction": 0}})
    earlier = new_sweep_dir(tmp_path, "wa")
    old = create_study(earlier, spec)
    first = []
    for value in (0.3, 0.2):  # two finished: fewer than n_startup_trials, so start-up draws go on
        trial = old.ask()
        trial.suggest_float("lr", 1e-5, 1.0, log=True)
        trial.suggest_int("width", 1, 8)
        first.append(trial.params)
        old.tell(trial, value)
    study = create_study(new_sweep_dir(tmp_path, "wb"), spec)
    warm = tell_earlier_trials(study, earlier, spec)
    assert (warm.told, warm.queued) == (2, 2)
    drawn = []
    for _ in range(4):  # its 2 best first, then start-up draws
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1.0, log=True)
        trial.suggest_int("width", 1, 8)
        drawn.append(trial.params)
        study.tell(trial, 0.5)
    assert drawn[:2] == [first[1], first[0]] and not any(d in first for d in drawn[2:])


def test_a_warm_start_that_a_fixed_value_empties_says_which_and_how_to_match_it(tmp_path: Path) -> None:
    """A user's print flag (``verbose``) differed: the header said only "told 0 trials ... 16 fixed verbose differs"."""
    earlier = new_sweep_dir(tmp_path, "wa")
    old = create_study(earlier, spec_from_dict(EARLIER))
    for lr in (0.01, 0.02):
        old.add_trial(frozen({"lr": lr}, {"lr": lr, "width": 4, "mode": "b"}))
    quiet = spec_from_dict(toy_spec("q", budget__epochs=2, fixed={"mode": "a"}))
    assert fixed_mismatch_note(earlier, quiet) == (
        "none of its trials can be told: 2 of 2 ran with mode='b', where this spec fixes 'a'; "
        "if mode does not change training, add --set mode=b to warm-start from them"
    )
    assert fixed_mismatch_note(earlier, spec_from_dict(toy_spec("same", budget__epochs=2, fixed={"mode": "b"}))) is None


def test_a_parameter_left_to_the_trainers_default_tells_only_the_trials_that_ran_at_it(tmp_path: Path) -> None:
    """A user removed a searched loss weight from the spec: the earlier trials, trained at other values of it,
    were told as if trained at the default this sweep trains with, and the header did not say so."""
    earlier = new_sweep_dir(tmp_path, "wa")
    old = create_study(earlier, spec_from_dict(EARLIER))
    for lr, width in ((0.01, 4), (0.02, 7), (0.03, 2)):  # the trainer's default width is 4
        old.add_trial(frozen({"lr": lr, "width": width}, {"lr": lr, "width": width, "seed": 0}))
    only_lr = spec_from_dict(toy_spec("n", budget__epochs=2, params={"lr": EARLIER["params"]["lr"]}))
    assert point_in_space(old.trials[1], only_lr) == "width set there, not here"
    warm = tell_earlier_trials(create_study(new_sweep_dir(tmp_path, "wb"), only_lr), earlier, only_lr)
    assert (warm.told, warm.skipped) == (1, {"width set there, not here": 2})
    assert fixed_mismatch_note(earlier, only_lr) == (
        "2 of its 3 trials left out: they ran with width set, where this sweep trains with 4; search or fix width "
        "in this spec to tell them"
    )


def test_a_trainer_default_changed_since_the_earlier_sweep_leaves_its_trials_out_with_a_note(tmp_path: Path) -> None:
    """A user changed a default in the trainer's code (its training set's size): the warm start told every
    earlier trial with no word, and the re-run of its best scored worse."""
    earlier = new_sweep_dir(tmp_path, "wa")
    spec = spec_from_dict(EARLIER)
    earlier.write_meta({"epochs": 2, "trainer_defaults": {**spec.trainer_defaults, "steps_per_epoch": 9}})
    old = create_study(earlier, spec)
    old.add_trial(frozen({"lr": 0.01, "width": 4}, {"lr": 0.01, "width": 4, "seed": 0}))
    assert point_in_space(old.trials[0], spec, {"steps_per_epoch": 9}) == "trainer default steps_per_epoch changed"
    assert fixed_mismatch_note(earlier, spec) == (
        "1 of its 1 trials left out: the trainer's default steps_per_epoch was 9 when it ran, 5 now; if "
        "steps_per_epoch does not change training, add --set steps_per_epoch=9 to warm-start from them"
    )
    pinned = spec_from_dict({**EARLIER, "fixed": {"steps_per_epoch": 9}})  # the note's way: the old value, fixed
    assert tell_earlier_trials(create_study(new_sweep_dir(tmp_path, "wb"), pinned), earlier, pinned).told == 1


def test_a_warm_start_from_a_warm_started_sweep_names_where_its_trials_ran_and_their_epochs(tmp_path: Path) -> None:
    """A chain of warm starts passed a 3-epoch sweep's trials into a 4-epoch one, credited to the sweep between."""
    first = new_sweep_dir(tmp_path, "w1")
    first.write_meta({"epochs": 3})
    spec = spec_from_dict({**EARLIER, "budget": {**EARLIER["budget"], "epochs": 4}})
    create_study(first, spec).add_trial(frozen({"lr": 0.01, "width": 4}, {"lr": 0.01, "width": 4}))
    second = new_sweep_dir(tmp_path, "w2")
    second.write_meta({"epochs": 4})
    middle = create_study(second, spec)
    assert tell_earlier_trials(middle, first, spec).told == 1
    middle.add_trial(frozen({"lr": 0.02, "width": 4}, {"lr": 0.02, "width": 4}))  # its own trial
    warm = tell_earlier_trials(create_study(new_sweep_dir(tmp_path, "w3"), spec), second, spec)
    assert warm.told == 2 and warm.relayed == {"w1": 1}
    assert "told 2 trials (of them, run in the sweep it warm-started from: 1 in w1)" in warm.line()
    assert warm_start_note(second, spec) == (
        "of its trials (with those a warm start told it), 1 trained 3, 1 trained 4 epochs; this sweep's train 4: "
        "their values are told as they were reached, and its best configs are trained again at this sweep's epochs"
    )


def test_the_importances_are_the_sweeps_own_trials_and_measure_a_parameter_new_to_it() -> None:
    """A user's new parameter was missing from "What mattered": a told trial from before it existed lacked it."""
    study = optuna.create_study()
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    scale = optuna.distributions.FloatDistribution(0.0, 1.0)
    study.add_trial(
        optuna.trial.create_trial(value=0.9, params={"lr": 0.5}, distributions={"lr": lr}, user_attrs={WARM_ATTR: "s1"})
    )
    for i in range(6):
        params = {"lr": 10 ** -(1 + i / 2), "scale": i / 6}
        study.add_trial(
            optuna.trial.create_trial(value=params["scale"], params=params, distributions={"lr": lr, "scale": scale})
        )
    assert set(importances(study)) == {"lr", "scale"}


@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
def test_warm_start_tells_the_earlier_trials_runs_its_best_first_and_exports_only_its_own(workdir: Path) -> None:
    earlier = sweep(workdir, EARLIER)
    old = load_study(earlier.sweep)
    in_space = [t for t in old.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)) if t.params["lr"] >= 1e-3]
    completed = sorted((t for t in in_space if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert completed, "the earlier sweep needs a completed trial with lr >= 1e-3 (seed 0 gives some)"

    stream = io.StringIO()
    result = sweep(workdir, NARROWER, warm_start="wa", stream=stream)
    study = load_study(result.sweep)
    told = [t for t in study.trials if WARM_ATTR in t.user_attrs]
    assert len(told) == len(in_space) and {t.user_attrs[WARM_ATTR] for t in told} == {"wa"}
    assert [t.state for t in told] == [t.state for t in in_space]
    assert [t.value for t in told] == [t.value for t in in_space]
    assert f"warm start from wa: told {len(in_space)} trials" in stream.getvalue()

    # The new sweep ran its own 4 trials, the earlier best config (in the new space) first.
    own = sorted((t for t in study.trials if WARM_ATTR not in t.user_attrs), key=lambda t: t.number)
    assert len(own) == 4 and len(result.state.trials) == 4
    assert own[0].params == completed[0].params
    assert own[0].user_attrs[QUEUED_ATTR] == f"wa t{completed[0].number:03d}"
    assert min(t.number for t in own) == len(told)  # numbered after the told trials

    # Only its own trials are exported, and the record says where the warm start came from.
    exported = best_config(result.sweep)
    assert exported["source"]["trial"] in {t.number for t in own}
    assert result.sweep.read_meta()["warm_start"]["told"] == len(told)
    client = mlflow.MlflowClient(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["sweep.warm_start"] == "wa"
    assert math.isfinite(exported["metric"]["value"])
    # the links a user found missing: the earlier sweep's parent run, and which earlier trial a re-run repeats
    assert parent.data.tags["sweep.warm_start.parent_run_id"] == earlier.parent_run_id
    rerun = client.get_run(own[0].user_attrs["mlflow_run_id"])
    assert rerun.data.tags["sweep.warm_start.trial"] == f"wa t{completed[0].number:03d}"
    assert "sweep.warm_start.trial" not in client.get_run(own[-1].user_attrs["mlflow_run_id"]).data.tags


def test_a_warm_start_from_a_missing_sweep_or_another_metric_is_refused_before_anything(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = spec_from_dict(NARROWER)
    with pytest.raises(SweepStoreError, match="no sweep 'nope'"):
        check_warm_start(workdir / "runs", "nope", spec)
    path = write_spec(workdir, NARROWER, "wb.yaml")
    assert main(["run", str(path), "--storage", str(workdir / "runs"), "--warm-start", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sweep 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (workdir / "runs").exists() or not any((workdir / "runs").iterdir())

    maximised = spec_from_dict(toy_spec("other", metric={"name": "val_loss", "mode": "max"}))
    other = new_sweep_dir(workdir / "runs", "other")
    other.write_meta({"name": "other"})
    create_study(other, maximised)
    with pytest.raises(SweepStoreError, match=r"optimised val_loss \(max\), this spec val_loss \(min\)"):
        check_warm_start(workdir / "runs", "other", spec)


def test_a_trial_run_as_o1_is_a_point_of_a_space_that_spells_it_fp16() -> None:
    """A user's warm start told 0 of 6 trials: 3 "ran with precision='O1', where this spec fixes 'fp16'"."""
    plain = {
        "name": "p",
        "trainer": "tests.function_trainers:amp_train",
        "metric": {"name": "val_loss", "mode": "min"},
        "params": {"lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True}},
    }
    o1 = frozen({"lr": 0.01}, {"lr": 0.01, "precision": "O1"})
    fixed = spec_from_dict({**plain, "fixed": {"precision": "fp16"}})
    assert point_in_space(o1, fixed)[0] == {"lr": 0.01}  # type: ignore[index]
    searched = spec_from_dict({**plain, "params": {**plain["params"], "precision": ["fp32", "fp16"]}})
    assert point_in_space(o1, searched)[0] == {"lr": 0.01, "precision": "fp16"}  # type: ignore[index]
    bf16 = spec_from_dict({**plain, "fixed": {"precision": "bf16"}})
    assert point_in_space(o1, bf16) == "fixed precision differs"


def test_export_trial_writes_any_trial_a_stopped_one_with_no_final_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user re-ran a stopped trial by hand-editing the best one's export: ``--trial`` writes that trial's own."""
    earlier, old, dists = earlier_study(tmp_path)
    earlier.write_meta({"trainer": "tests.toy_trainer:ToyTrainer", "epochs": 4, "metric": "val_loss", "mode": "min"})
    for lr, value, status in ((0.01, 0.5, "completed"), (0.9, 2.0, "diverged"), (0.02, 0.3, "completed")):
        config = {"lr": lr, "width": 4}
        old.add_trial(
            optuna.trial.create_trial(
                value=value,
                params=config,
                distributions=dists,
                user_attrs={"config": config, "status": status},
                constraints={"diverged": 1.0} if status == "diverged" else None,
            )
        )
    root = str(tmp_path)
    assert main(["export", "wa", "--storage", root, "--trial", "t001", "-o", str(tmp_path / "t1.yaml")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 't1.yaml'}: t001 of wa (diverged), no final val_loss\n"
    text = (tmp_path / "t1.yaml").read_text()
    assert text.startswith(
        "# Trial t001 of sweep wa (diverged, no final val_loss).\n# Train from it: sweeps train t1.yaml"
    )
    data = yaml.safe_load(text)
    assert data["config"]["lr"] == 0.9 and data["metric"]["value"] is None and data["source"]["rank"] is None
    assert main(["export", "wa", "--storage", root, "--trial", "0", "-o", str(tmp_path / "t0.yaml")]) == 0
    assert "(completed), val_loss=0.5" in capsys.readouterr().out
    assert "(rank 2: val_loss=0.5 (min))" in (tmp_path / "t0.yaml").read_text()
    assert main(["export", "wa", "--storage", root, "--trial", "t9", "-o", str(tmp_path / "x.yaml")]) == 2
    assert "has no trial t009 (its trials: t000 to t002)" in capsys.readouterr().err
    assert main(["export", "wa", "--storage", root, "--trial", "best"]) == 2
    assert main(["export", "wa", "--storage", root, "--trial", "1", "--top-k", "2"]) == 2
    assert not (tmp_path / "x.yaml").exists()
