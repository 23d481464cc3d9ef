"""The search-quality benchmark's trainers: the project's VAE and SR-GAN, each validation traced.

Every system in ``benchmarks/search_quality.py`` trains these same classes (Ray Tune's function
trainables and ours through the engine, Optuna, Syne Tune and SMAC in their own processes), so only
the search and the scheduling differ. Each trainer appends one JSON line per validation to its own
file under ``trace_dir``: ``{"t": wall clock, "epoch": n, "value": metric or null}`` (the first line
also ``"config"``: the trial's config, to see which region a system found); the benchmark
turns those lines into its anytime curves. Torch runs one thread per trial in every system.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from trainables.sr_gan import SRGANConfig, SRGANTrainer
from trainables.vae import VAEConfig, VAETrainer


class _Trace:
    """One trial's trace file: a line per validation, the first also with the trial's config (a dataclass or dict)."""

    def __init__(self, config: Any, metric: str) -> None:
        self.metric = metric
        values = dict(config) if isinstance(config, dict) else asdict(config)
        trace_dir = values.pop("trace_dir", "")
        self.path = Path(trace_dir) / f"{uuid.uuid4().hex}.jsonl" if trace_dir else None
        self.config: dict[str, Any] | None = values

    def write(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.path is None:
            return
        value = float(metrics.get(self.metric, math.nan))
        row: dict[str, Any] = {"t": time.time(), "epoch": epoch, "value": value if math.isfinite(value) else None}
        if self.config is not None:
            row["config"], self.config = self.config, None
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")


@dataclass
class TracedVAEConfig(VAEConfig):
    """The VAE's config plus where the trace goes."""

    trace_dir: str = ""


class TracedVAE(VAETrainer):
    """:class:`VAETrainer` whose every validation is traced (``val_mse``)."""

    Config: ClassVar[type] = TracedVAEConfig

    def __init__(self, config: TracedVAEConfig) -> None:
        torch.set_num_threads(1)
        super().__init__(config)
        self.trace = _Trace(config, "val_mse")

    def validate(self) -> dict[str, float]:
        """Validate and trace the result."""
        metrics = super().validate()
        self.trace.write(self.epoch, metrics)
        return metrics


@dataclass
class TracedSRGANConfig(SRGANConfig):
    """The SR-GAN's config plus where the trace goes."""

    trace_dir: str = ""


class TracedSRGAN(SRGANTrainer):
    """:class:`SRGANTrainer` whose every validation is traced (``val_psnr``)."""

    Config: ClassVar[type] = TracedSRGANConfig

    def __init__(self, config: TracedSRGANConfig) -> None:
        torch.set_num_threads(1)
        super().__init__(config)
        self.trace = _Trace(config, "val_psnr")

    def validate(self) -> dict[str, float]:
        """Validate and trace the result."""
        metrics = super().validate()
        self.trace.write(self.epoch, metrics)
        return metrics


def traced_sr_onecycle(config: dict[str, Any], run: Any) -> None:
    """``benchmarks/loops/sr_onecycle.py`` (a loop written by someone else) as a function trainer, each epoch traced.

    The held-out task of ``search_quality`` (``sr_onecycle``): ours only, as it runs a user's own loop.
    """
    from benchmarks.loops.as_trainer import run_loop

    run_loop("sr_onecycle", config, run, _Trace(config, "val_psnr").write)


traced_sr_onecycle.metrics = ("val_psnr",)  # type: ignore[attr-defined]
traced_sr_onecycle.precisions = ("fp32", "bf16", "fp16")  # type: ignore[attr-defined]


def trainer_class(task: str) -> Any:
    """The traced trainer class named by ``task``'s ``trainer_path``, for the systems that build it themselves."""
    import importlib

    from benchmarks.search_quality import TASKS

    module, name = TASKS[task].trainer_path.split(":")
    return getattr(importlib.import_module(module), name)


def make_trainer(task: str, config: dict[str, Any]) -> Any:
    """The traced trainer of ``task`` built from ``config`` (fixed values, sampled values, trace_dir)."""
    from trainables import build_config

    cls = trainer_class(task)
    return cls(build_config(cls.Config, config))
