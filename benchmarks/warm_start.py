"""Warm start against a cold start: the same new sweep with and without an earlier sweep's trials told.

The scenario: yesterday a quick look (the search-quality benchmark's vae task at 3 epochs, 16
trials, its own seed); today the sweep for real (6 epochs, 12 trials). Cold: today's sweep alone.
Warm: today's sweep with ``warm_start=`` yesterday's. Both of today's sweeps have the same seed, so
the warm start is the only difference. Per seed: the best val_mse among today's trials that ran
every epoch, after its first 3, 6 and 12 trials (in the order they were asked), and wall seconds.
The epochs differ on purpose: yesterday's values, at 3 epochs, are not today's (a warm start told
values of another budget, as a user's would be).

Run: .venv/bin/python -m benchmarks.warm_start [--seeds 3] [--first-seed 0] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.search_quality import TASKS

EARLIER_EPOCHS, EARLIER_TRIALS = 3, 16
TODAY_EPOCHS, TODAY_TRIALS = 6, 12
CHECKPOINTS = (3, 6, 12)


def spec_file(folder: Path, name: str, seed: int, epochs: int, trials: int) -> Path:
    """A spec of the vae task (2 trials at once) in ``folder``."""
    raw = TASKS["vae"].spec(name, seed, {"trials": trials, "epochs": epochs, "concurrency": 2})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(folder: Path, name: str, seed: int, epochs: int, trials: int, warm_start: str | None = None) -> dict[str, Any]:
    """Run one sweep; return its best-so-far after each checkpoint and its wall seconds."""
    import sweeps

    spec = sweeps.load_spec(str(spec_file(folder, name, seed, epochs, trials)))
    started = time.perf_counter()
    result = sweeps.run_sweep(
        spec,
        root=folder / "runs",
        name=name,
        tracking_uri=f"sqlite:///{folder}/mlflow.db",
        stream=io.StringIO(),
        cpus=2,
        address="local",
        warm_start=warm_start,
    )
    wall = time.perf_counter() - started
    records = sorted(result.state.trials.values(), key=lambda r: r.number)
    records = [r for r in records if r.rescue_of is None]
    best: dict[int, float] = {}
    for k in CHECKPOINTS:
        done = [r.value for r in records[:k] if r.status == "completed" and r.value is not None]
        best[k] = min(done) if done else math.nan
    first = records[0].value if records and records[0].value is not None else math.nan
    return {"best": best, "wall_s": wall, "first": first, "trials": len(records)}


def main() -> None:
    """Run yesterday's sweep, then today's cold and warm, per seed; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also append one JSON row per seed to this file")
    args = parser.parse_args()
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
            folder = Path(tmp)
            earlier = run(folder, f"yesterday-{seed}", 1000 + seed, EARLIER_EPOCHS, EARLIER_TRIALS)
            cold = run(folder, f"cold-{seed}", seed, TODAY_EPOCHS, TODAY_TRIALS)
            warm = run(folder, f"warm-{seed}", seed, TODAY_EPOCHS, TODAY_TRIALS, warm_start=f"yesterday-{seed}")
        row = {"seed": seed, "earlier_best": earlier["best"][max(CHECKPOINTS)], "cold": cold, "warm": warm}
        rows.append(row)
        print(
            f"seed {seed}: yesterday best {row['earlier_best']:.4f} ({EARLIER_EPOCHS} epochs); today "
            + "  ".join(f"@{k} cold {cold['best'][k]:.4f} warm {warm['best'][k]:.4f}" for k in CHECKPOINTS)
            + f"  wall cold {cold['wall_s']:.0f} s warm {warm['wall_s']:.0f} s",
            flush=True,
        )
        if args.json is not None:
            with args.json.open("a") as out:
                out.write(json.dumps(row, default=float) + "\n")
    print()
    print(f"best val_mse of today's sweep ({TODAY_EPOCHS} epochs), median over {len(rows)} seeds, after k trials:")
    print(f"{'k':>4} {'cold':>8} {'warm':>8} {'warm better':>12}")
    for k in CHECKPOINTS:
        cold_k = [r["cold"]["best"][k] for r in rows]
        warm_k = [r["warm"]["best"][k] for r in rows]
        wins = sum(1 for c, w in zip(cold_k, warm_k, strict=True) if w < c or (math.isnan(c) and not math.isnan(w)))
        print(f"{k:>4} {_median(cold_k):>8.4f} {_median(warm_k):>8.4f} {wins:>6} of {len(rows)}")
    walls = [(r["cold"]["wall_s"], r["warm"]["wall_s"]) for r in rows]
    print(f"wall s, median: cold {_median([c for c, _ in walls]):.0f}, warm {_median([w for _, w in walls]):.0f}")


def _median(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.median(finite) if finite else math.nan


if __name__ == "__main__":
    main()
