"""The replay harness's figures, from hand-made traces (no corpus, no training)."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.divergence_replay import asha_ends, figures, gated_replay, judge, new_detector, onset_of


def trial(n: int, val: list[float], losses: list[float], label: str = "healthy", rank: int = 1) -> dict[str, Any]:
    """A trial of 4 epochs x 4 steps whose per-step loss and per-epoch metric (min) are given."""
    return {
        "loop": "toy",
        "trial": n,
        "lr": 0.1,
        "precision": "fp32",
        "label": label,
        "rank": rank,
        "n": 8,
        "final": val[-1],
        "epochs": 4,
        "steps_per_epoch": 4,
        "mode": "min",
        "steps": list(range(1, 17)),
        "trace": {"loss": losses},
        "val": val,
    }


def test_asha_cuts_the_worse_two_thirds_at_epoch_one_then_again_at_epoch_three() -> None:
    # Rungs at epochs 1 and 3 (grace 1, factor 3, 4 epochs); each trial's metric is the same every epoch.
    trials = [trial(i, [float(i)] * 4, [1.0] * 16) for i in range(6)]
    ends = asha_ends(trials)
    # Epoch 1: cutoff = 66.7th percentile of 0..5 (negated for min) = -1.67: trials 0 and 1 go on.
    assert ends[2:] == [3] * 4
    # Epoch 3: of 0 and 1, the cutoff is -0.33: trial 0 runs to its last step, trial 1 ends after epoch 3.
    assert ends[:2] == [15, 11]


def test_a_non_finite_metric_is_cut_at_the_first_rung() -> None:
    trials = [trial(0, [math.nan] * 4, [1.0] * 16), trial(1, [1.0] * 4, [1.0] * 16)]
    assert asha_ends(trials)[0] == 3


def test_a_false_stop_asha_would_have_cut_anyway_is_not_counted_as_kept() -> None:
    exploding = [1.0] + [1000.0] * 15
    good = trial(0, [0.2] * 4, [1.0] * 16, rank=2)
    spiky_winner = trial(1, [0.1] * 4, exploding, rank=1)  # the best at every rung, stopped: a costly false stop
    spiky_loser = trial(2, [5.0] * 4, exploding, rank=3)  # healthy too, but ASHA cuts it at epoch 1
    diverged = trial(3, [9.0] * 4, exploding, label="diverged", rank=4)
    row, records = judge([good, spiky_winner, spiky_loser, diverged], new_detector({}))
    assert [r["stop"] is not None for r in records] == [False, True, True, True]
    assert row["false"] == 2 and row["false_kept"] == 1
    assert onset_of(diverged) == 1
    # With ASHA the diverged trial ends at the earlier of the detector's stop (step 7) and epoch 1 (step 4).
    assert records[3]["ran_asha"] == 4 and records[3]["after_asha"] == 3
    assert figures(records)["after_asha"] == 3 / sum(r["ran_asha"] for r in records)


def test_gated_a_heuristic_stop_waits_for_an_epoch_no_better_than_untrained() -> None:
    """``--gate-on-validation``: the loss explodes at step 2; the stop waits for an epoch worse than untrained."""
    exploding = [1.0] + [1000.0] * 15
    recovered = {**trial(0, [0.5, 0.4, 0.3, 0.2], exploding), "untrained": 0.9}  # better than untrained each epoch
    late = {**trial(1, [0.5, 1.5, 0.3, 0.2], exploding), "untrained": 0.9}  # worse than untrained after epoch 2
    nan = {**trial(2, [math.nan] * 4, [1.0, math.nan] + [1.0] * 14), "untrained": 0.9}
    assert gated_replay(recovered, new_detector({})) == (None, None)
    stop, found = gated_replay(late, new_detector({}))
    assert stop == 7 and found.signal == "loss_explosion"
    stop, found = gated_replay(nan, new_detector({}))  # not a heuristic signal: at once
    assert stop == 1 and found.signal == "non_finite"
