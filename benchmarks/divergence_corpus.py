"""Ground truth for the divergence detector: per-step traces of trials run to their last epoch.

Every trial runs every epoch with the detector *observing only* (nothing is stopped), so each
one's end is known: its per-step diagnostics (the dict the detector sees), its validation metric
after every epoch, its final metric and a label:

- ``diverged``: the final metric is not finite, or no better than the *untrained* model's metric
  (the same config's model validated before any step; for the function loops of
  ``benchmarks/loops`` it is the metric after one epoch at learning rate 0);
- ``healthy``: anything else.

``rank`` is the trial's place among its loop's trials by final metric (1 = best; non-finite last):
the group of a trial is its loop. The replay harness (``benchmarks/divergence_replay.py``) reads
these files and judges detector settings without training anything.

Loops (one Parquet file per loop under ``benchmarks/corpus/``, regenerated alone with ``--loops``):

- ``vae``, ``sr_gan``, ``translation_gan``: the built-in trainers (``trainables``), sizes shrunk
  from the ``search_spaces/*_demo.yaml`` so that fp16 (slow on a CPU) stays a few seconds a trial;
- ``denoiser``: ``examples/denoiser.py:DenoiserTrainer`` as written (fp32, its own 8-step epochs,
  16 of them), with per-step tracing added by :class:`TracedDenoiser`;
- ``sr_onecycle``, ``gan_own``, ``ae_warm_restarts``: loops written the way users write them
  (``benchmarks/loops``: own GradScaler, one-cycle / warm-restart schedules, gradient clipping).

Learning rates are log-uniform over ranges that span healthy, spiky-but-recovering and truly
diverging regions; precision is drawn from fp32, bf16 and fp16 (the denoiser is fp32 only).

Run: ``python -m benchmarks.divergence_corpus [--loops vae,sr_gan] [--trials 24] [--seed 0]
[--force]``; a loop whose file exists is skipped unless ``--force``. ``--scan LOOP --lrs 1e-3,0.1``
prints one line per learning rate instead (for choosing the ranges).

Columns of each file (one row per trial): ``loop``, ``trial``, ``config`` (JSON), ``lr``,
``precision``, ``epochs``, ``steps_per_epoch``, ``metric``, ``mode``, ``steps`` (step numbers),
``trace`` (struct of per-step lists, one per diagnostic name; absent values are null),
``val`` (the metric after each epoch), ``final``, ``untrained``, ``label``, ``rank``, ``n``,
``error`` (an exception's line, if training raised), ``wall_s`` and ``cpu_s`` (the trial's wall and
process CPU seconds, its untrained-model validation included).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "corpus"

StepFn = Callable[[int, dict[str, float]], None]
EpochFn = Callable[[int, dict[str, float]], None]


@dataclass
class Loop:
    """One training loop: how to train a config, what its metric is, how to draw a config."""

    name: str
    metric: str
    mode: str
    train: Callable[[dict[str, Any], StepFn, EpochFn], None]
    untrained: Callable[[dict[str, Any]], float]
    sample: Callable[[random.Random, int], dict[str, Any]]
    epochs: int


# Built-in trainers -------------------------------------------------------------------------------

SIZES = {
    # the demo spaces' shapes at 16 px (fp16 convolutions on a CPU are ~10x slower than fp32), batch 8:
    # 32 steps an epoch, 128 a trial
    "vae": {"image_size": 16, "train_images": 256, "val_images": 128, "batch_size": 8, "width": 8, "latent_dim": 8},
    "sr_gan": {
        "image_size": 16,
        "scale": 2,
        "train_images": 256,
        "val_images": 32,
        "batch_size": 8,
        "width": 8,
        "blocks": 1,
        "d_width": 8,
    },
    "translation_gan": {
        "image_size": 16,
        "depth": 2,
        "train_images": 256,
        "val_images": 32,
        "batch_size": 8,
        "width": 8,
        "d_width": 8,
    },
}
PRECISIONS = ("fp32", "bf16", "fp16")


def _class_loop(
    name: str,
    metric: str,
    mode: str,
    epochs: int,
    make: Callable[[dict[str, Any]], Any],
    sample: Callable[..., dict[str, Any]],
) -> Loop:
    """A loop over a trainer class's epochs; ``make(config)`` builds the trainer."""

    def train(config: dict[str, Any], on_step: StepFn, on_epoch: EpochFn) -> None:
        trainer = make(config)
        trainer.on_step = on_step
        for epoch in range(1, epochs + 1):
            trainer.train_epoch()
            on_epoch(epoch, trainer.validate())

    def untrained(config: dict[str, Any]) -> float:
        return float(make(config).validate()[metric])

    return Loop(name, metric, mode, train, untrained, sample, epochs)


def _trainer_loop(name: str, metric: str, mode: str, epochs: int, sample: Callable[..., dict[str, Any]]) -> Loop:
    def make(config: dict[str, Any]) -> Any:
        import torch

        from trainables.config import build_config
        from trainables.registry import load_trainer

        torch.set_num_threads(1)
        cls = load_trainer(name)
        return cls(build_config(cls.Config, {**SIZES[name], **config}))

    return _class_loop(name, metric, mode, epochs, make, sample)


def _log_uniform(rng: random.Random, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _precision(rng: random.Random, i: int) -> str:
    return PRECISIONS[i % len(PRECISIONS)]


def _sample_vae(rng: random.Random, i: int) -> dict[str, Any]:
    precision = _precision(rng, i)
    config = {
        "lr": _log_uniform(rng, *LR["vae"]),
        "kernel_size": rng.choice([3, 5]),
        "kl_weight": _log_uniform(rng, 1e-5, 1e-1),
        "output_activation": rng.choice(["sigmoid", "none"]),
        "precision": precision,
        "seed": i,
    }
    if precision == "fp16":
        config["init_scale"] = _log_uniform(rng, 1024, 65536)
    return config


def _sample_sr_gan(rng: random.Random, i: int) -> dict[str, Any]:
    lr = _log_uniform(rng, *LR["sr_gan"])
    return {
        "lr_g": lr,
        "lr_d": lr * _log_uniform(rng, 0.3, 3.0),
        "kernel_size": 3,
        "upsampler": rng.choice(["nearest_conv", "pixel_shuffle"]),
        "feature_weight": _log_uniform(rng, 1e-2, 1.0),
        "adv_weight": _log_uniform(rng, 1e-3, 5e-2),
        "adv_loss": rng.choice(["ragan", "vanilla", "hinge"]),
        "precision": _precision(rng, i),
        "seed": i,
    }


def _sample_translation_gan(rng: random.Random, i: int) -> dict[str, Any]:
    lr = _log_uniform(rng, *LR["translation_gan"])
    return {
        "lr_g": lr,
        "lr_d": lr * _log_uniform(rng, 0.3, 3.0),
        "kernel_size": 3,
        "norm": rng.choice(["instance", "batch", "demod"]),
        "recon_weight": _log_uniform(rng, 10.0, 200.0),
        "identity_weight": rng.choice([0.0, 10.0, 50.0]),
        "adv_weight": _log_uniform(rng, 0.1, 2.0),
        "adv_loss": rng.choice(["vanilla", "hinge", "ragan"]),
        "precision": _precision(rng, i),
        "seed": i,
    }


# The denoiser example, traced per step ----------------------------------------------------------


def _denoiser_class() -> type:
    import torch
    import torch.nn.functional as F

    from examples.denoiser import DenoiserTrainer

    class TracedDenoiser(DenoiserTrainer):
        """The example's epoch loop, unchanged, with a per-step hook as a user would add it."""

        on_step: StepFn | None = None

        def train_epoch(self) -> dict[str, float]:
            total = 0.0
            last = self.model[-1]
            for start in range(0, len(self.train), 32):
                x = self.train[start : start + 32]
                out = self.model(x + self.config.noise * torch.randn_like(x))
                loss = F.mse_loss(out, x)
                self.optimizer.zero_grad()
                loss.backward()
                grads = [p.grad.norm() for p in self.model.parameters() if p.grad is not None]
                grad_norm = float(torch.stack(grads).norm())
                self.optimizer.step()
                total += loss.item()
                self.step = getattr(self, "step", 0) + 1
                if self.on_step is not None:
                    o = out.detach()
                    self.on_step(
                        self.step,
                        {
                            "loss": loss.item(),
                            "model/lr": self.optimizer.param_groups[0]["lr"],
                            "model/grad_norm": grad_norm,
                            "model/weight_norm_last": float(last.weight.detach().norm()),
                            "output_std": float(o.std()),
                            "output_mean": float(o.mean()),
                        },
                    )
            return {"train_loss": total / (len(self.train) // 32)}

    return TracedDenoiser


def _denoiser_loop(epochs: int) -> Loop:
    def make(config: dict[str, Any]) -> Any:
        import torch

        from trainables.config import build_config

        torch.set_num_threads(1)
        cls = _denoiser_class()
        return cls(build_config(cls.Config, config))

    def sample(rng: random.Random, i: int) -> dict[str, Any]:
        return {
            "lr": _log_uniform(rng, *LR["denoiser"]),
            "width": rng.choice([8, 16, 32]),
            "noise": rng.choice([0.05, 0.1, 0.2]),
            "seed": i,
        }

    return _class_loop("denoiser", "val_loss", "min", epochs, make, sample)


# Loops written the way users write them (benchmarks/loops) ---------------------------------------

LOOP_LRS = ("lr", "lr_g", "lr_d")
"""Learning-rate keys a loop may have: all set to 0 for its untrained metric."""


def _function_loop(name: str) -> Loop:
    module = importlib.import_module(f"benchmarks.loops.{name}")
    defaults: dict[str, Any] = dict(module.DEFAULTS)
    lr_keys = [k for k in LOOP_LRS if k in defaults]

    def train(config: dict[str, Any], on_step: StepFn, on_epoch: EpochFn) -> None:
        import torch

        torch.set_num_threads(1)
        module.train(config, on_step, on_epoch)

    def untrained(config: dict[str, Any]) -> float:
        """The metric after one epoch at learning rate 0: the model as initialised."""
        seen: list[float] = []
        zero = {**config, **dict.fromkeys(lr_keys, 0.0), "epochs": 1}
        train(zero, lambda step, metrics: None, lambda epoch, metrics: seen.append(float(metrics[module.METRIC])))
        return seen[-1]

    low, high = LR[name] if name in LR else module.SWEEP_LR

    def sample(rng: random.Random, i: int) -> dict[str, Any]:
        return {
            "lr": _log_uniform(rng, low, high),
            "precision": _precision(rng, i),
            "grad_clip": rng.choice([None, 1.0]),
            "seed": i,
        }

    return Loop(name, module.METRIC, module.MODE, train, untrained, sample, int(defaults.get("epochs", 4)))


# Learning-rate ranges (log-uniform), chosen with --scan to span healthy .. diverging ---------------

LR: dict[str, tuple[float, float]] = {
    "vae": (1e-3, 0.2),  # fp32 scan: calm up to ~0.015, spikes that recover 0.015-0.03, NaN or 1e20 above
    "sr_gan": (3e-4, 0.1),  # calm up to ~0.01, exploded (loss 1e7+, PSNR below the untrained model's) from 0.03
    "translation_gan": (1e-3, 0.3),  # calm up to ~0.03, exploded from 0.1
    "denoiser": (1e-3, 0.5),  # calm up to 0.02, one big spike that recovers 0.03-0.05, stuck or exploded from 0.1
    # benchmarks/loops/README.md (clip 1.0): sr_onecycle calm 1e-3..1.5e-2, spiky 2e-2..3e-2, diverges
    # from 5e-2; gan_own calm 1e-3..5e-3, spiky 1e-2..3e-2, diverges from 3.5e-2; ae_warm_restarts
    # calm 1e-2..0.1, spiky 0.2..0.5, collapses from 1.0 (without clipping: NaN from 0.5)
    "sr_onecycle": (1e-3, 0.3),
    "gan_own": (1e-3, 0.1),
    "ae_warm_restarts": (1e-2, 3.0),
}

ORDER = ("vae", "sr_gan", "translation_gan", "denoiser", "sr_onecycle", "gan_own", "ae_warm_restarts")
FRESH = ("wgan_gp", "unet_ema")
"""Loops written after the detector's defaults were fixed, by someone who never read the detector
(``benchmarks/loops``; each module's ``SWEEP_LR`` is its author's lr range)."""
FRESH_2 = ("ddpm_tiny", "colorize_plateau")
"""Loops written on 2026-12-03, after the detector was last changed (``b46ed25``), by helpers who
never read it; replayed once, at the defaults, after their traces were generated."""
FRESH_3 = ("sr_o2_manual", "beta_vae_cyclic")
"""Loops written on 2026-12-05 by helpers who read only ``benchmarks/loops/README.md``, one loop's
contract and a lab notebook (a hand-written apex-O2 loss scaler; cyclical KL annealing), after
the detector's thresholds were last changed; replayed once, at the defaults."""


def make_loop(name: str) -> Loop:
    """The loop called ``name``."""
    if name == "vae":
        return _trainer_loop("vae", "val_mse", "min", 4, _sample_vae)
    if name == "sr_gan":
        return _trainer_loop("sr_gan", "val_psnr", "max", 4, _sample_sr_gan)
    if name == "translation_gan":
        return _trainer_loop("translation_gan", "val_l1", "min", 4, _sample_translation_gan)
    if name == "denoiser":
        return _denoiser_loop(16)
    return _function_loop(name)


# Running and labelling ----------------------------------------------------------------------------


def run_trial(loop: Loop, config: dict[str, Any]) -> dict[str, Any]:
    """Train ``config`` to its last epoch, recording every step and every validation."""
    steps: list[int] = []
    rows: list[dict[str, float]] = []
    val: list[float] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        steps.append(int(step))
        rows.append({k: float(v) for k, v in metrics.items()})

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        val.append(float(metrics[loop.metric]))

    start, cpu = time.perf_counter(), time.process_time()
    error = ""
    try:
        loop.train(config, on_step, on_epoch)
    except Exception as exc:  # a loop that raises on NaN: it ended, diverged
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    untrained = loop.untrained(config)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    final = val[-1] if len(val) == loop.epochs and not error else math.nan
    keys = sorted({k for row in rows for k in row})
    return {
        "loop": loop.name,
        "config": json.dumps(config, sort_keys=True),
        "lr": float(config.get("lr", config.get("lr_g", math.nan))),
        "precision": str(config.get("precision", "fp32")),
        "epochs": loop.epochs,
        "steps_per_epoch": len(steps) // max(len(val), 1),
        "metric": loop.metric,
        "mode": loop.mode,
        "steps": steps,
        "trace": {k: [row.get(k) for row in rows] for k in keys},
        "val": val,
        "final": final,
        "untrained": untrained,
        "label": label(final, untrained, loop.mode),
        "error": error,
        "wall_s": wall,
        "cpu_s": cpu,
    }


def label(final: float, untrained: float, mode: str) -> str:
    """``diverged`` when the final metric is not finite or no better than the untrained model's."""
    if not math.isfinite(final):
        return "diverged"
    better = final < untrained if mode == "min" else final > untrained
    return "healthy" if better else "diverged"


def rank(trials: list[dict[str, Any]]) -> None:
    """Set each trial's ``rank`` (1 = best final metric; non-finite last) and the group size ``n``."""
    sign = 1.0 if trials and trials[0]["mode"] == "min" else -1.0
    order = sorted(
        range(len(trials)), key=lambda i: sign * trials[i]["final"] if math.isfinite(trials[i]["final"]) else math.inf
    )
    for place, i in enumerate(order, start=1):
        trials[i]["rank"] = place
        trials[i]["n"] = len(trials)


def generate(name: str, trials: int, seed: int) -> list[dict[str, Any]]:
    """Run ``trials`` drawn configs of one loop; print one line per trial."""
    loop = make_loop(name)
    rng = random.Random(f"{seed}-{name}")
    results = []
    for i in range(trials):
        config = loop.sample(rng, i)
        result = {**run_trial(loop, config), "trial": i}
        results.append(result)
        print(_line(result), flush=True)
    rank(results)
    return results


def _line(r: dict[str, Any]) -> str:
    loss = [v for v in r["trace"].get("loss", []) if v is not None]
    peak = max((v for v in loss if math.isfinite(v)), default=math.nan)
    high = sum(1 for v in loss if not math.isfinite(v) or v > 3 * loss[0]) if loss else 0
    return (
        f"{r['loop']:>16} lr {r['lr']:.3g} {r['precision']:>4} steps {len(r['steps']):4d} "
        f"final {r['final']:.4g} untrained {r['untrained']:.4g} {r['label']:8} "
        f"loss first {loss[0] if loss else math.nan:.3g} peak {peak:.3g} >3x {high} "
        f"last {loss[-1] if loss else math.nan:.3g} "
        f"val {' '.join(f'{v:.3g}' for v in r['val'])} {r['wall_s']:.1f}s {r['error']}"
    )


def write(results: list[dict[str, Any]], path: Path) -> None:
    """One Parquet file for one loop's trials (zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = ["loop", "trial", "config", "lr", "precision", "epochs", "steps_per_epoch", "metric", "mode"]
    columns += ["steps", "trace", "val", "final", "untrained", "label", "rank", "n", "error", "wall_s", "cpu_s"]
    table = pa.Table.from_pylist([{c: r[c] for c in columns} for r in results])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def read(path: Path) -> list[dict[str, Any]]:
    """One loop's trials as written by :func:`write`."""
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def main() -> None:
    """Generate the corpus (or scan learning rates of one loop)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--loops", default=",".join(ORDER))
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=CORPUS)
    parser.add_argument("--force", action="store_true", help="regenerate loops whose file exists")
    parser.add_argument("--scan", help="a loop: train one config per --lrs value (fp32 unless --precision)")
    parser.add_argument("--lrs", default="1e-3,1e-2,0.1,1")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    if args.scan:
        loop = make_loop(args.scan)
        base = loop.sample(random.Random(args.seed), 0)
        for lr in (float(v) for v in args.lrs.split(",")):
            config = {**base, "precision": args.precision} if "precision" in base else dict(base)
            for key in ("lr", "lr_g"):
                if key in config:
                    config[key] = lr
            if "lr_d" in config:
                config["lr_d"] = lr
            print(_line({**run_trial(loop, config)}), flush=True)
        return
    for name in args.loops.split(","):
        path = args.out / f"{name}.parquet"
        if path.exists() and not args.force:
            print(f"{name}: {path} exists (--force to regenerate)")
            continue
        start = time.perf_counter()
        results = generate(name, args.trials, args.seed)
        write(results, path)
        took = time.perf_counter() - start
        diverged = sum(r["label"] == "diverged" for r in results)
        cpu = sum(r["cpu_s"] for r in results)
        print(
            f"{name}: {len(results)} trials, {diverged} diverged, {took:.0f} s wall, {cpu:.0f} s CPU -> {path}",
            flush=True,
        )


if __name__ == "__main__":
    main()
