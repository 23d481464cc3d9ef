"""TPE by expected improvement per predicted second: the cost model, the choice, the cooling, the spec key."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweeps.core.records import SweepState
from sweeps.engine.searcher import OptunaSearcher
from sweeps.spec.sweep_spec import SpecError, load_spec
from sweeps.store.cost_aware_sampler import COST_ATTR, MIN_TRIALS, CostAwareTPESampler, EpochCostModel
from sweeps.store.interleaved_sampler import RandomInterleavedSampler
from sweeps.store.study import create_study, make_sampler
from sweeps.store.sweep_dir import new_sweep_dir
from sweeps.tracking.sweep_tracker import SweepTracker
from tests.helpers import spec_from_dict, toy_spec, write_spec

SPEC = toy_spec("unit")
SPACE = {
    "precision": CategoricalDistribution(["fp32", "fp16"]),
    "width": IntDistribution(8, 64, log=True),
    "lr": FloatDistribution(1e-4, 1.0, log=True),
}


def finished(params: dict[str, object], seconds: float | None) -> optuna.trial.FrozenTrial:
    """A completed trial of ``SPACE`` with ``params`` and, unless None, its measured epoch seconds."""
    return optuna.trial.create_trial(
        params=params,
        distributions={name: SPACE[name] for name in params},
        value=1.0,
        user_attrs={} if seconds is None else {COST_ATTR: seconds},
    )


def internal(rows: list[dict[str, object]]) -> dict[str, np.ndarray]:
    """Candidates as TPE hands them over: each parameter's internal representation, one array per name."""
    return {name: np.asarray([dist.to_internal_repr(row[name]) for row in rows]) for name, dist in SPACE.items()}


def test_the_model_learns_which_choices_and_numbers_cost_more() -> None:
    """fp16 ten times an fp32 epoch, seconds growing with width, none with lr: the predictions order them so."""
    rng = np.random.default_rng(0)
    trials = []
    for _ in range(24):
        precision, width, lr = (
            str(rng.choice(["fp32", "fp16"])),
            int(rng.integers(8, 65)),
            float(10 ** rng.uniform(-4, 0)),
        )
        seconds = 0.1 * (10 if precision == "fp16" else 1) * width / 8 * math.exp(rng.normal(0, 0.05))
        trials.append(finished({"precision": precision, "width": width, "lr": lr}, seconds))
    trials.append(finished({"precision": "fp32", "width": 8, "lr": 1e-3}, None))  # no cost measured: left out
    model = EpochCostModel(SPACE, trials)
    assert model.fitted
    fp32, fp16, wide, other_lr = model.log_seconds(
        internal(
            [
                {"precision": "fp32", "width": 16, "lr": 1e-3},
                {"precision": "fp16", "width": 16, "lr": 1e-3},
                {"precision": "fp32", "width": 64, "lr": 1e-3},
                {"precision": "fp32", "width": 16, "lr": 0.5},
            ]
        )
    )
    assert 1.5 < fp16 - fp32 < math.log(10) + 0.3  # about log 10, shrunk a little by the ridge
    assert wide - fp32 > 0.5
    assert abs(other_lr - fp32) < 0.3


def test_too_few_measured_trials_leave_tpe_unchanged() -> None:
    trials = [finished({"precision": "fp16", "width": 8, "lr": 1e-3}, 2.0)] * (MIN_TRIALS - 1)
    model = EpochCostModel(SPACE, trials)
    assert not model.fitted
    assert list(model.log_seconds(internal([{"precision": "fp32", "width": 8, "lr": 1e-2}] * 3))) == [0.0] * 3


def sampler(seed: int) -> CostAwareTPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return CostAwareTPESampler(seed=seed, n_startup_trials=5, multivariate=True, group=True, constant_liar=True)


def plain(seed: int) -> optuna.samplers.TPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=5, multivariate=True, group=True, constant_liar=True
        )


def slow_choices(chosen: optuna.samplers.BaseSampler, trials: int = 40) -> tuple[int, list[dict[str, object]]]:
    """A real study where 'slow' and 'fast' are equally good and 'slow' costs 10x: how often 'slow' was drawn."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=chosen)
    for _ in range(trials):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        speed = trial.suggest_categorical("speed", ["fast", "slow"])
        trial.set_user_attr(COST_ATTR, 1.0 if speed == "fast" else 10.0)
        study.tell(trial, (math.log10(lr) + 2.0) ** 2)
    return sum(t.params["speed"] == "slow" for t in study.trials[5:]), [t.params for t in study.trials]


def test_with_the_budget_ahead_it_draws_the_slow_region_less_than_tpe_and_as_tpe_at_its_end() -> None:
    slow_cost_aware = slow_tpe = 0
    for seed in range(4):
        slow_cost_aware += slow_choices(sampler(seed))[0]
        slow_tpe += slow_choices(plain(seed))[0]
    assert slow_cost_aware < slow_tpe / 2, (slow_cost_aware, slow_tpe)
    # with the budget spent the cost weighs nothing: the very draws of TPE with the seed
    spent = sampler(1)
    spent.budget_used = lambda: 1.0
    assert slow_choices(spent)[1] == slow_choices(plain(1))[1]


def test_the_spec_turns_it_on(tmp_path: Path) -> None:
    on = make_sampler(spec_from_dict({**SPEC, "search": {"cost_aware": True}}, "<unit>"))
    assert isinstance(on, RandomInterleavedSampler) and isinstance(on.base, CostAwareTPESampler)
    default = make_sampler(spec_from_dict(SPEC, "<unit>"))
    assert isinstance(default, RandomInterleavedSampler) and type(default.base) is optuna.samplers.TPESampler  # off
    off = make_sampler(spec_from_dict({**SPEC, "search": {"cost_aware": False, "random_fraction": 0}}, "<unit>"))
    assert type(off) is optuna.samplers.TPESampler
    for bad in ("yes", 1):
        with pytest.raises(SpecError, match="search.cost_aware"):
            load_spec(write_spec(tmp_path, {**SPEC, "search": {"cost_aware": bad}}))


def test_the_searcher_tells_the_sampler_how_much_of_the_budget_is_spent(tmp_path: Path) -> None:
    """The larger of the share of budget.trials asked and of budget.time gone."""
    raw = toy_spec("cost", budget__trials=8, budget__epochs=1)
    raw["search"] = {**raw["search"], "cost_aware": True, "random_fraction": 0}
    raw["budget"]["time"] = 100
    spec = load_spec(write_spec(tmp_path, raw))
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.start("cost", "s", "", {})
    study = create_study(new_sweep_dir(tmp_path / "runs", "s"), spec)
    state = SweepState("val_loss", "min")
    searcher = OptunaSearcher(spec, study, state, tracker, "s")
    assert isinstance(study.sampler, CostAwareTPESampler)
    assert study.sampler.budget_used() == 0.0  # no deadline yet, nothing asked
    for ray_id in "ab":
        assert searcher.suggest(ray_id) is not None
    assert study.sampler.budget_used() == pytest.approx(2 / 8)
    state.deadline = time.time() + 40  # 60 of the 100 s gone
    assert study.sampler.budget_used() == pytest.approx(0.6, abs=0.02)
    state.deadline = time.time() - 5
    assert study.sampler.budget_used() == 1.0
    state.deadline = time.time() + 100
    # a resume swaps the study's sampler after the searcher is made: the next ask hooks the new one
    study.sampler = make_sampler(spec, resumed_after=2)
    assert searcher.suggest("c") is not None
    assert isinstance(study.sampler, CostAwareTPESampler)
    assert study.sampler.budget_used() == pytest.approx(3 / 8, abs=0.01)
    # without budget.time the trials are the budget, whatever they cost: no cost is weighed
    del raw["budget"]["time"]
    untimed = OptunaSearcher(load_spec(write_spec(tmp_path, raw)), study, SweepState("val_loss", "min"), tracker, "s")
    assert untimed.budget_used() == 1.0
