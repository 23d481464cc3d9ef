"""Every shipped spec loads, and one sampled point builds a trainer config."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeps.spec.params import sample
from sweeps.spec.sweep_spec import load_spec
from sweeps.trial.function_run import trial_config
from tests.helpers import ROOT
from trainables import build_config, load_trainer
from trainables.protocol import is_function_trainer

SPECS = sorted((ROOT / "search_spaces").glob("*.yaml"))


def test_there_are_shipped_specs() -> None:
    assert SPECS


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_loads_and_a_sampled_point_builds_a_config(path: Path) -> None:
    spec = load_spec(path)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = spec.resolve(sample(trial, spec.params, spec.fixed))
    cls = load_trainer(spec.trainer)
    config = trial_config(params) if is_function_trainer(cls) else build_config(cls.Config, params)
    assert all(getattr(config, key) is not None for key in params)
