"""Divergence benchmark: plain Ray Tune (OptunaSearch + ASHA) and ours, side by side.

The same space (lr up to 3, fp32 or fp16, kernel 3 or 5), budget and seed, over several seeds,
with the same traced VAE trainer. Both are judged from the per-step traces:

- a step is *bad* when its loss is not finite, it overflowed (skipped), or its loss is over 20x the
  best loss so far (after 5 steps); a trial *diverged* when it ends in a run of >= 3 bad steps
  (>= 1 if it stopped in the middle of an epoch, which only a divergence detector does); its
  *onset* is the first step of that final run;
- steps after onset: all steps a diverged trial ran from its onset on, over all steps run;
- stop latency: steps from onset to the trial's last step;
- second-half share: diverged trials among the later half of each sweep (by start time);
- best metric: the best final val_mse of trials that ran every epoch.

Then 20 healthy configurations run through our detector alone: none may be stopped.

Run: .venv/bin/python -m benchmarks.divergence [--seeds 3] [--trials 24] [--systems plain,ours]
(``--first-seed`` to run other seeds, ``--keep DIR`` to keep traces and stores, ``--json FILE`` for
the rows, ``--no-healthy`` to skip the healthy check)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

FIXED = {"image_size": 16, "train_images": 128, "val_images": 32, "width": 4, "batch_size": 8, "latent_dim": 4}
EPOCHS = 4
LR = (1e-4, 3.0)


def plain_tune(seed: int, trials: int, trace_dir: Path, storage: Path) -> float:
    """Plain Ray Tune as a user sets it up: OptunaSearch + ASHA over the same space."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from benchmarks.plain_env import plain_tune_env
    from benchmarks.traced import TracedVAE
    from trainables import build_config

    def trainable(config: dict[str, Any]) -> None:
        trainer = TracedVAE(build_config(TracedVAE.Config, config))
        for _ in range(EPOCHS):
            metrics = {**trainer.train_epoch(), **trainer.validate()}
            tune.report(metrics)

    space = {
        **FIXED,
        "seed": seed,
        "trace_dir": str(trace_dir),
        "lr": tune.loguniform(*LR),
        "precision": tune.choice(["fp32", "fp16"]),
        "kernel_size": tune.choice([3, 5]),
    }
    tuner = tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(metric="val_mse", mode="min", seed=seed),
            scheduler=ASHAScheduler(metric="val_mse", mode="min", max_t=EPOCHS, grace_period=1, reduction_factor=2),
            num_samples=trials,
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name=f"plain-{seed}", verbose=0),
    )
    start = time.monotonic()
    with plain_tune_env():  # Tune's default loggers on, as in a user's plain Tune
        tuner.fit()
    return time.monotonic() - start


def ours(seed: int, trials: int, trace_dir: Path, storage: Path, diverged_as: str = "infeasible") -> tuple[float, int]:
    """Our engine on the same space; returns wall time and how many trials the detector stopped."""
    from sweeps.engine.runner import run_sweep
    from sweeps.spec.sweep_spec import validate_spec

    raw = {
        "name": f"ours-{seed}",
        "trainer": "benchmarks.traced:TracedVAE",
        "metric": {"name": "val_mse", "mode": "min"},
        "seed": seed,
        "budget": {"trials": trials, "epochs": EPOCHS, "concurrency": 2},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "search": {"n_startup_trials": 10, "diverged_as": diverged_as},  # 10: OptunaSearch's TPE default
        "fixed": {**FIXED, "trace_dir": str(trace_dir)},
        "params": {
            "lr": {"type": "float", "low": LR[0], "high": LR[1], "log": True},
            "precision": {"choices": ["fp32", "fp16"]},
            "kernel_size": {"choices": [3, 5]},
        },
    }
    spec = validate_spec(raw, "<benchmark>", [])
    start = time.monotonic()
    result = run_sweep(spec, root=storage, tracking_uri=f"sqlite:///{storage}/mlflow.db", stream=io.StringIO())
    return time.monotonic() - start, result.state.counts.get("diverged", 0)


def read_traces(trace_dir: Path) -> list[dict[str, Any]]:
    """One dict per trial: start time, step rows, epoch validations."""
    trials = []
    for path in trace_dir.glob("*.jsonl"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        head, rows = lines[0], lines[1:]
        trials.append(
            {
                **head,
                "steps": [r for r in rows if "step" in r],
                "epochs": [r for r in rows if "epoch" in r],
            }
        )
    return sorted(trials, key=lambda t: t["start"])


def onset_of(steps: list[dict[str, Any]]) -> int | None:
    """Index of the first step of the final run of bad steps, or None.

    The run must be >= 3 steps long, except for a trial that stopped in the middle of an epoch
    (only a divergence detector stops a trial there; ASHA stops at epoch ends): 1 step is enough.
    """
    best = math.inf
    bad = []
    for i, row in enumerate(steps):
        loss = row["loss"]
        exploded = loss is not None and i >= 5 and best > 0 and loss > 20 * best
        bad.append(loss is None or bool(row["skipped"]) or exploded)
        if loss is not None and not exploded:
            best = min(best, loss)
    run = 0
    for flag in reversed(bad):
        if not flag:
            break
        run += 1
    mid_epoch = len(steps) % (FIXED["train_images"] // FIXED["batch_size"]) != 0
    return len(steps) - run if run >= (1 if mid_epoch else 3) else None


def judge(trials: list[dict[str, Any]], stopped_by_detector: int = 0) -> dict[str, float]:
    """The benchmark's figures for one sweep's traces."""
    total = sum(len(t["steps"]) for t in trials)
    after, latencies, diverged_flags = 0, [], []
    for trial in trials:
        onset = onset_of(trial["steps"])
        stopped_early = len(trial["steps"]) < EPOCHS * FIXED["train_images"] // FIXED["batch_size"]
        diverged = onset is not None
        diverged_flags.append(diverged)
        if diverged:
            assert onset is not None
            after += len(trial["steps"]) - onset
            latencies.append(len(trial["steps"]) - 1 - onset)
        trial["stopped_early"] = stopped_early
    full = [t for t in trials if len(t["epochs"]) == EPOCHS and t["epochs"][-1]["val_mse"] is not None]
    half = len(trials) // 2
    return {
        "trials": len(trials),
        "steps": total,
        "after_onset": after / max(total, 1),
        "median_stop": statistics.median(latencies) if latencies else math.nan,
        "diverged": sum(diverged_flags),
        "diverged_2nd_half": sum(diverged_flags[half:]) / max(len(trials) - half, 1),
        "best": min((t["epochs"][-1]["val_mse"] for t in full), default=math.nan),
    }


def healthy_check(count: int = 20, seed: int = 0) -> int:
    """Run ``count`` healthy configurations through the detector; return how many it stopped."""
    from sweeps.divergence import DivergenceDetector
    from trainables import build_config
    from trainables.vae import VAETrainer

    rng = random.Random(seed)
    stopped = 0
    for i in range(count):
        precision = ["fp32", "bf16", "fp16", "fp16-o2"][i % 4]
        config = {
            **FIXED,
            "lr": 10 ** rng.uniform(-4, -2.5),
            "kernel_size": rng.choice([3, 5]),
            "precision": precision,
            "init_scale": 2.0 ** rng.choice([16, 24, 30]),  # 2^24 and 2^30 force GradScaler calibration
            "growth_interval": rng.choice([5, 2000]),
            "seed": i,
        }
        trainer = VAETrainer(build_config(VAETrainer.Config, config))
        detector = DivergenceDetector()
        fired: list[Any] = []

        def hook(step: int, metrics: dict[str, float], d: DivergenceDetector = detector, f: list[Any] = fired) -> None:
            found = d.observe(step, metrics)
            if found is not None:
                f.append(found)

        trainer.on_step = hook
        for _ in range(EPOCHS):
            trainer.train_epoch()
        stopped += bool(fired)
        if fired:
            print(f"  healthy config {config} stopped: {fired[0]}")
    return stopped


def main() -> None:
    """Run both systems over the seeds and print the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run are first-seed .. first-seed+seeds-1")
    parser.add_argument("--systems", default="plain,ours", help="plain, ours, ours-fail (diverged told FAIL)")
    parser.add_argument("--keep", type=Path, help="keep every sweep's traces and stores under this folder")
    parser.add_argument("--json", type=Path, help="also write the rows, one JSON object a line, to this file")
    parser.add_argument("--no-healthy", action="store_true", help="skip the 20-configuration healthy check")
    args = parser.parse_args()
    systems = args.systems.split(",")

    import ray

    from sweeps.engine.cluster import start_ray

    # Ray reuses a trial's actor only if the last trial's thread ends within this many seconds
    # (default 2); on a loaded machine ours' thread (curve plot, last MLflow sends) can take
    # longer, the reuse fails, and the sweep was seen to stall. Set before Ray starts its workers.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    start_ray(num_cpus=2, address="local")  # never attach to a cluster another process started here
    root = Path(tempfile.mkdtemp(prefix="divergence-bench-", dir=args.keep))
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for system in systems:
            traces = root / f"{system}-{seed}" / "traces"
            traces.mkdir(parents=True)
            storage = root / f"{system}-{seed}" / "store"
            storage.mkdir()
            if system == "plain":
                wall, detector_stops = plain_tune(seed, args.trials, traces, storage), 0
            else:
                diverged_as = "fail" if system == "ours-fail" else "infeasible"
                wall, detector_stops = ours(seed, args.trials, traces, storage, diverged_as)
            figures = judge(read_traces(traces), detector_stops)
            rows.append(
                {"system": system, "seed": seed, "wall_s": wall, "stopped_by_detector": detector_stops, **figures}
            )
            print(_row(rows[-1]), flush=True)
            if args.json is not None:
                with args.json.open("a") as out:
                    out.write(json.dumps(rows[-1]) + "\n")
            if not rows[:-1]:
                print(_header(), flush=True)
    print()
    print(_header())
    for row in rows:
        print(_row(row))
    for system in systems:
        mine = [r for r in rows if r["system"] == system]
        print(_row(_mean(system, mine)))
    if not args.no_healthy:
        print()
        stopped = healthy_check()
        print(f"healthy configurations stopped by the detector: {stopped} of 20")
    ray.shutdown()
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"traces and stores kept in {root}")


COLUMNS = [
    ("system", 9, "{}"),
    ("seed", 4, "{}"),
    ("trials", 6, "{:.0f}"),
    ("steps", 6, "{:.0f}"),
    ("after_onset", 11, "{:.1%}"),
    ("median_stop", 11, "{:.1f}"),
    ("diverged", 8, "{:.1f}"),
    ("diverged_2nd_half", 17, "{:.1%}"),
    ("best", 8, "{:.4f}"),
    ("wall_s", 7, "{:.1f}"),
]


def _header() -> str:
    return " ".join(name.rjust(width) for name, width, _ in COLUMNS)


def _row(row: dict[str, Any]) -> str:
    return " ".join(fmt.format(row[name]).rjust(width) for name, width, fmt in COLUMNS)


def _mean(system: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [name for name, _, _ in COLUMNS if name not in ("system", "seed")]
    values = {k: [r[k] for r in rows if not (isinstance(r[k], float) and math.isnan(r[k]))] for k in keys}
    return {"system": system, "seed": "mean", **{k: statistics.fmean(v) if v else math.nan for k, v in values.items()}}


if __name__ == "__main__":
    main()
