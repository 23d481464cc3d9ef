"""When the searcher stops a sweep before its budget: the same failure every trial would meet (no Ray).

A real Optuna study and MLflow store in a temp dir; results are fed to the searcher as Tune would.
The sweeps that stop this way under Ray are in ``test_run_sweep``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ray.tune.search import Searcher

from sweeps.core.keys import ENGINE_KEY, FAILED_KEY, FIRST_EPOCH_SECONDS_KEY, REASON_KEY
from sweeps.core.records import SweepState
from sweeps.engine.searcher import OptunaSearcher
from sweeps.results.summary import time_ran_out
from sweeps.spec.sweep_spec import load_spec
from sweeps.store.study import create_study
from sweeps.store.sweep_dir import new_sweep_dir
from sweeps.tracking.sweep_tracker import SweepTracker
from tests.helpers import toy_spec, write_spec


def searcher(tmp_path: Path) -> OptunaSearcher:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = load_spec(write_spec(tmp_path, toy_spec("stop", budget__trials=8, budget__epochs=2)))
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start("stop", "s", "", {})
    study = create_study(new_sweep_dir(tmp_path / "runs", "s"), spec)
    found = OptunaSearcher(spec, study, SweepState("val_loss", "min"), tracker, "s")
    for ray_id in "abcdef":
        assert found.suggest(ray_id) is not None
    return found


def fail(searcher: OptunaSearcher, ray_id: str, reason: str) -> None:
    searcher.on_trial_complete(ray_id, {"epoch": 0, "val_loss": float("nan"), FAILED_KEY: 1.0, REASON_KEY: reason})


def test_a_contract_failure_stops_the_sweep_at_once_and_no_other_failure_does(tmp_path: Path) -> None:
    contract = searcher(tmp_path / "contract")
    fail(contract, "a", "ReturnedEarlyError: trainer 'm:f' returned after epoch 1 of 2: ...")  # maybe its own guard
    assert not contract.state.halted
    fail(contract, "b", "MetricMissingError: metric 'val_psnr' not produced by trainer 'm:f' (it reports: val_loss)")
    assert contract.state.halted == (
        "t001 failed: MetricMissingError: metric 'val_psnr' not produced by trainer 'm:f' (it reports: val_loss)"
    )

    mixed = searcher(tmp_path / "mixed")
    fail(mixed, "a", "ValueError: toy failure at epoch 2")
    mixed.on_trial_complete("b", {"epoch": 2, "val_loss": 0.5})  # completed
    for ray_id in "cdef":
        fail(mixed, ray_id, "ValueError: toy failure at epoch 2")
    assert not mixed.state.halted and mixed.suggest("g") is not Searcher.FINISHED

    same = searcher(tmp_path / "same")  # the same failure in every trial so far: maybe a region of the space
    for ray_id in "abcdef":
        fail(same, ray_id, "ValueError: toy failure at epoch 2")
    assert not same.state.halted


def test_each_trials_plan_carries_its_name_and_the_sweeps_deadline(tmp_path: Path) -> None:
    found = searcher(tmp_path)
    found.state.deadline = 4e9
    config = found.suggest("g")
    assert config is not None
    assert config[ENGINE_KEY]["label"] == "t006" and config[ENGINE_KEY]["deadline"] == 4e9


def test_no_trial_is_asked_for_that_could_not_end_a_first_epoch_before_budget_time_runs_out(tmp_path: Path) -> None:
    """A trial asked for then trained past the deadline, for its first epoch at most (a whole long epoch, or until
    the grace ended it unrecorded): judged by the fastest first epoch so far, it is not asked for at all."""
    found = searcher(tmp_path)
    state = found.state
    state.deadline = time.time() + 30
    config = found.suggest("g")  # no trial has ended an epoch: nothing to judge by
    assert config is not None and config[ENGINE_KEY]["start_by"] == state.deadline
    found.on_trial_result("a", {"epoch": 1, "val_loss": 0.5, FIRST_EPOCH_SECONDS_KEY: 12.0})
    found.on_trial_result("b", {"epoch": 1, "val_loss": 0.6, FIRST_EPOCH_SECONDS_KEY: 40.0})  # slower: not the bar
    assert state.fastest_first_epoch_s == 12.0
    config = found.suggest("h")  # 30 s left: one fits; begun by Tune later than 12 s before the deadline, it ends
    assert config is not None and state.stopped_asking_left_s is None
    assert config[ENGINE_KEY]["start_by"] == state.deadline - 12.0
    assert time_ran_out(state, 8) == ""
    state.deadline = time.time() + 10
    assert found.suggest("i") is Searcher.FINISHED
    left = state.stopped_asking_left_s
    assert left is not None and 9 <= left <= 10
    state.deadline = time.time() + 60  # once it stopped asking, it stays stopped (Tune was told it is finished)
    assert found.suggest("j") is Searcher.FINISHED and state.stopped_asking_left_s == left
    # the record says why the sweep ended short of budget.trials, though the time had not run out yet
    assert time_ran_out(state, 8) == (
        f"budget.time ran out after 0 of 8 trials; none started in its last {math.floor(left * 10) / 10:.1f} s, "
        "less than the fastest trial needed to end its first epoch (12 s)"
    )
