"""Errors a trial or a Ray worker raises survive pickling (Ray pickles them) with what they carry."""

from __future__ import annotations

import pickle

from sweeps.divergence import Divergence
from sweeps.spec.sweep_spec import SpecError
from sweeps.trial.stops import DivergedError
from trainables.config import ConfigError


def test_a_config_error_keeps_its_problems_and_message() -> None:
    error = ConfigError([("lr", "must be a number, got 'fast'"), ("width", "unknown")])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ConfigError and copy.problems == error.problems and str(copy) == str(error)


def test_a_spec_error_keeps_its_source_and_problems() -> None:
    error = SpecError("sweep.yaml", [("budget.trials", "must be >= 1, got 0")])
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.problems, str(copy)) == (error.source, error.problems, str(error))


def test_a_diverged_error_keeps_its_divergence_and_epoch() -> None:
    error = DivergedError(Divergence("loss_explosion", "loss 1e6 above 20 x its first value", 12, 7), epoch=2)
    copy = pickle.loads(pickle.dumps(error))
    assert copy.divergence == error.divergence and copy.epoch == 2 and str(copy) == str(error)
