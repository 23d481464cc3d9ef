"""Syne Tune's training script for the search-quality benchmark: one trial, reported every epoch.

Syne Tune's LocalBackend runs ``python sq_synetune_entry.py --task vae --trace_dir D --lr 0.01 ...``;
the values are parsed by the task's space (numbers and choices) and the traced trainer runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, its folder comes first on sys.path, and benchmarks/logging.py would shadow the
# standard library's logging: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402

from benchmarks.search_quality import TASKS  # noqa: E402
from benchmarks.sq_trainer import make_trainer  # noqa: E402


def main() -> None:
    """Parse the trial's config, train, and report each epoch's metric to Syne Tune."""
    from syne_tune import Reporter

    parser = argparse.ArgumentParser()
    parser.add_argument("--task", required=True)
    parser.add_argument("--trace_dir", required=True)
    known, rest = parser.parse_known_args()
    task = TASKS[known.task]
    for name, p in task.params.items():
        kind = type(p["choices"][0]) if "choices" in p else float
        parser.add_argument(f"--{name}", type=kind, required=True)
    args, _ = parser.parse_known_args()
    config = {**task.fixed, **{name: getattr(args, name) for name in task.params}, "trace_dir": args.trace_dir}
    trainer = make_trainer(task.name, config)
    report = Reporter()
    for _ in range(task.epochs):
        trainer.train_epoch()
        value = trainer.validate()[task.metric]
        report(epoch=trainer.epoch, **{task.metric: value})


if __name__ == "__main__":
    main()
