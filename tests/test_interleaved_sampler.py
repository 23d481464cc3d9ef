"""A share of TPE's trials drawn at random: which ones, what they draw, and the spec key that sets it."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest

from sweeps.spec.sweep_spec import SpecError, load_spec
from sweeps.store.interleaved_sampler import RandomInterleavedSampler
from sweeps.store.study import QUEUED_ATTR, drawn_by, make_sampler
from tests.helpers import spec_from_dict, write_spec

SPEC = {
    "name": "unit",
    "trainer": "vae",
    "metric": {"name": "val_mse", "mode": "min"},
    "seed": 3,
    "budget": {"trials": 4, "epochs": 1},
    "params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
}


def tpe(seed: int) -> optuna.samplers.TPESampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, multivariate=True, group=True)


def sweep_corner(sampler: optuna.samplers.BaseSampler, trials: int) -> optuna.Study:
    """A study whose best values sit in one corner (x near 1e-4, choice 'a'), which TPE then exploits."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 1e-4, 1.0, log=True)
        choice = trial.suggest_categorical("c", ["a", "b", "c", "d"])
        return x + (0.0 if choice == "a" else 1.0)

    study.optimize(objective, n_trials=trials)
    return study


def test_the_random_trials_are_a_fixed_share_chosen_by_seed_and_number() -> None:
    sampler = RandomInterleavedSampler(tpe(0), 0.2, seed=7)
    chosen = [n for n in range(2000) if sampler.is_random(n)]
    assert 0.17 < len(chosen) / 2000 < 0.23
    # The same trials again in a new sampler with the seed (a resumed sweep); others with another seed.
    assert chosen == [n for n in range(2000) if RandomInterleavedSampler(tpe(1), 0.2, seed=7).is_random(n)]
    assert chosen != [n for n in range(2000) if RandomInterleavedSampler(tpe(1), 0.2, seed=8).is_random(n)]
    assert not any(RandomInterleavedSampler(tpe(0), 0.0, seed=7).is_random(n) for n in range(2000))
    with pytest.raises(ValueError, match="fraction"):
        RandomInterleavedSampler(tpe(0), 1.0, seed=7)


def test_random_trials_keep_sampling_the_whole_space_while_tpe_settles_in_a_corner() -> None:
    study = sweep_corner(RandomInterleavedSampler(tpe(0), 0.3, seed=0), trials=80)
    sampler = study.sampler
    assert isinstance(sampler, RandomInterleavedSampler)
    late = [t for t in study.trials if t.number >= 20]
    random_ones = [t for t in late if sampler.is_random(t.number)]
    modelled = [t for t in late if not sampler.is_random(t.number)]
    assert len(random_ones) >= 10
    # TPE's own trials settled on choice 'a' and small x; the random ones did not follow them there.
    assert sum(t.params["c"] == "a" for t in modelled) / len(modelled) > 0.6
    assert sum(t.params["c"] == "a" for t in random_ones) / len(random_ones) < 0.5
    assert max(t.params["x"] for t in random_ones) > 0.1
    # The corner was still found: the random trials took nothing from TPE's modelling.
    assert study.best_value < 2e-3


def test_the_random_draws_are_not_the_start_up_draws_again() -> None:
    """TPE's start-up trials and the random trials use different random streams, though seeded alike."""
    study = sweep_corner(RandomInterleavedSampler(tpe(5), 0.5, seed=5), trials=30)
    xs = [t.params["x"] for t in study.trials]
    assert len(set(xs)) == len(xs)


def test_the_spec_sets_the_share_and_tpe_gets_wrapped(tmp_path: Path) -> None:
    default = make_sampler(spec_from_dict(SPEC, "<unit>"))
    assert isinstance(default, RandomInterleavedSampler) and default.fraction == 0.2
    assert isinstance(default.base, optuna.samplers.TPESampler)
    off = make_sampler(spec_from_dict({**SPEC, "search": {"random_fraction": 0}}, "<unit>"))
    assert isinstance(off, optuna.samplers.TPESampler)
    third = make_sampler(spec_from_dict({**SPEC, "search": {"random_fraction": "0.33"}}, "<unit>"))
    assert isinstance(third, RandomInterleavedSampler) and third.fraction == 0.33
    plain_random = make_sampler(spec_from_dict({**SPEC, "search": {"sampler": "random"}}, "<unit>"))
    assert isinstance(plain_random, optuna.samplers.RandomSampler)
    for bad in (1, -0.1, "lots"):
        with pytest.raises(SpecError, match="search.random_fraction"):
            load_spec(write_spec(tmp_path, {**SPEC, "search": {"random_fraction": bad}}))


def test_the_spec_chooses_joint_or_independent_tpe(tmp_path: Path) -> None:
    joint = make_sampler(spec_from_dict({**SPEC, "search": {"random_fraction": 0}}, "<unit>"))
    independent = make_sampler(
        spec_from_dict({**SPEC, "search": {"random_fraction": 0, "multivariate": False}}, "<unit>")
    )
    assert isinstance(joint, optuna.samplers.TPESampler) and isinstance(independent, optuna.samplers.TPESampler)
    assert joint._multivariate and joint._group  # Optuna keeps the choices only as these attributes
    assert not independent._multivariate and not independent._group
    for bad in ("no", 0, "false"):
        with pytest.raises(SpecError, match="search.multivariate"):
            load_spec(write_spec(tmp_path, {**SPEC, "search": {"multivariate": bad}}))


def test_how_each_trial_was_drawn_agrees_with_what_the_sampler_did() -> None:
    """``drawn_by`` against Optuna's own record: a TPE draw has joint (relative) values, the rest none."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = spec_from_dict({**SPEC, "search": {"n_startup_trials": 4, "random_fraction": 0.3}})
    study = optuna.create_study(sampler=make_sampler(spec))
    study.enqueue_trial({"lr": 1e-3}, user_attrs={QUEUED_ATTR: "earlier t000"})
    drawn = []
    for _ in range(30):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-2, log=True)
        width = trial.suggest_int("width", 4, 32)
        how = drawn_by(study, trial, spec)
        drawn.append(how)
        if how == "tpe":
            assert set(trial.relative_params) == {"lr", "width"}, trial.number
        elif how != "warm_start":
            assert trial.relative_params == {}, (trial.number, how)
        study.tell(trial, lr * width)
    assert drawn[0] == "warm_start"
    sampler = study.sampler
    assert isinstance(sampler, RandomInterleavedSampler)
    assert [n for n, how in enumerate(drawn) if how == "random"] == [n for n in range(1, 30) if sampler.is_random(n)]
    # Each trial was told before the next: trial n saw n finished ones (queued and random ones count).
    assert [n for n, how in enumerate(drawn) if how == "startup"] == [n for n in range(1, 4) if drawn[n] != "random"]
    assert "startup" in drawn and set(drawn[4:]) == {"tpe", "random"}
    random_only = optuna.create_study(sampler=make_sampler(spec_from_dict({**SPEC, "search": {"sampler": "random"}})))
    assert drawn_by(random_only, random_only.ask(), spec) == "random"


@pytest.mark.parametrize("random_fraction", [0.2, 0.0])
def test_a_resumed_sweep_draws_new_configs_not_its_first_ones_again(tmp_path: Path, random_fraction: float) -> None:
    # A driver killed after its first trials: the resumed one reopens the journal in a new process,
    # where a sampler seeded as before would draw trial 0's values again (a user saw t000's config rerun).
    from sweeps.engine.resume import reopen_study
    from sweeps.store.study import create_study
    from sweeps.store.sweep_dir import new_sweep_dir

    spec = spec_from_dict({**SPEC, "search": {"random_fraction": random_fraction}})
    sweep = new_sweep_dir(tmp_path / "runs", "killed")
    study = create_study(sweep, spec)
    first = [study.ask() for _ in range(2)]
    firsts = [t.suggest_float("lr", 1e-4, 1e-2, log=True) for t in first]
    study.tell(first[0], 0.5)  # the second was running when the driver died
    resumed = reopen_study(sweep, spec)
    again = resumed.ask().suggest_float("lr", 1e-4, 1e-2, log=True)
    assert again not in firsts, (again, firsts)
    # and a sweep started anew with the same seed draws the same first values (reproducible)
    fresh = create_study(new_sweep_dir(tmp_path / "runs", "fresh"), spec)
    assert fresh.ask().suggest_float("lr", 1e-4, 1e-2, log=True) == firsts[0]
