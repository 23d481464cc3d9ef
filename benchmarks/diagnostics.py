"""Step time with per-step diagnostics on vs off, per trainer, side by side in one run.

Diagnostics are the per-layer gradient norms, last-layer weight norms and output statistics
each trainer hands to the engine every step (``diagnostics: true``, the default). The engine's
step hook is set in both cases, as in a sweep. Each configuration trains the same epochs,
interleaved on/off, and the median epoch time per step is compared.

Run: .venv/bin/python -m benchmarks.diagnostics [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from trainables import build_config, load_trainer

SIZES: dict[str, dict[str, Any]] = {
    "vae": {"image_size": 32, "train_images": 256, "val_images": 32, "width": 16, "batch_size": 32},
    "sr_gan": {"image_size": 32, "train_images": 128, "val_images": 16, "width": 16, "blocks": 2, "batch_size": 16},
    "translation_gan": {"image_size": 32, "train_images": 128, "val_images": 16, "width": 16, "batch_size": 16},
}


def epoch_step_time(name: str, diagnostics: bool, precision: str, device: str) -> float:
    """Seconds per optimizer step over one epoch (after a warm-up epoch)."""
    cls = load_trainer(name)
    config = {**SIZES[name], "diagnostics": diagnostics, "precision": precision, "device": device}
    trainer = cls(build_config(cls.Config, config))
    steps: list[int] = []
    trainer.on_step = lambda step, metrics: steps.append(step)
    trainer.train_epoch()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    first = len(steps)
    start = time.perf_counter()
    trainer.train_epoch()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / max(1, len(steps) - first)


def main() -> None:
    """Print one row per trainer and precision: ms per step with diagnostics off and on."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precisions", default="fp32", help="comma-separated, e.g. fp32,bf16,fp16,fp16-o2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device {args.device}, {args.threads} thread(s), median of {args.repeats} epochs each, interleaved")
    print(f"{'trainer':<16} {'precision':<9} {'off ms/step':>12} {'on ms/step':>11} {'on vs off':>10}")
    for name in SIZES:
        for precision in args.precisions.split(","):
            off, on = [], []
            for _ in range(args.repeats):
                off.append(epoch_step_time(name, False, precision, args.device))
                on.append(epoch_step_time(name, True, precision, args.device))
            a, b = statistics.median(off), statistics.median(on)
            print(f"{name:<16} {precision:<9} {a * 1000:>12.2f} {b * 1000:>11.2f} {(b - a) / a:>+10.1%}", flush=True)


if __name__ == "__main__":
    main()
