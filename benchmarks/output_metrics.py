"""What the per-step output statistics cost on a CPU: ``torch.std`` as before, and ``output_metrics`` now.

Every step of a built-in trainer, and of a function trainer that passes ``output=`` to
``run.step``, sends ``output_mean``, ``output_std`` and ``output_spread`` (the collapse signals).
Until 2026-12-06 they were ``float(x.mean())``, ``float(x.std())`` and ``float(x.std(dim=0).mean())``;
on a CPU ``torch.std(dim=0)`` is slow for image batches. Compared side by side in one run,
interleaved repeat by repeat on the same tensors, one torch thread (as a sweep's trials run):

- ``before``: the three ``torch`` reductions and three conversions, as they were;
- ``now``: :func:`trainables.diagnostics.output_metrics`.

Printed per batch shape and dtype: the median microseconds per call of each, their ratio, and the
largest relative difference between their values (the two compute the same unbiased deviations; a
constant output gives exactly 0 in both, which the test suite checks).

Run: .venv/bin/python -m benchmarks.output_metrics [--repeats 9] [--calls 50]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from trainables.diagnostics import output_metrics

SHAPES = ((16, 1, 16, 16), (16, 3, 32, 32), (32, 3, 64, 64), (8, 3, 128, 128))
DTYPES = (torch.float32, torch.bfloat16)


def before(output: torch.Tensor) -> dict[str, float]:
    """The statistics as ``output_metrics`` computed them before 2026-12-06."""
    detached = output.detach().float()
    found = {"output_mean": float(detached.mean()), "output_std": float(detached.std())}
    if detached.dim() >= 4 and detached.shape[0] >= 2:
        found["output_spread"] = float(detached.std(dim=0).mean())
    return found


def per_call_us(fn: Callable[[torch.Tensor], dict[str, float]], x: torch.Tensor, calls: int) -> float:
    """Microseconds per call of ``fn(x)``, over ``calls`` calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn(x)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, 1 thread, median of {args.repeats} repeats of {args.calls} calls")
    print(f"{'shape':>18} {'dtype':>9} {'before us':>10} {'now us':>8} {'now/before':>10} {'max rel diff':>12}")
    for shape in SHAPES:
        for dtype in DTYPES:
            x = (torch.rand(shape, generator=generator) * 2 - 0.5).to(dtype).requires_grad_()
            times: dict[str, list[float]] = {"before": [], "now": []}
            before(x), output_metrics(x)  # warm
            for _ in range(args.repeats):
                times["before"].append(per_call_us(before, x, args.calls))
                times["now"].append(per_call_us(output_metrics, x, args.calls))
            old, new = statistics.median(times["before"]), statistics.median(times["now"])
            a, b = before(x), output_metrics(x)
            diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)
            name = "x".join(map(str, shape))
            print(f"{name:>18} {str(dtype)[6:]:>9} {old:>10.0f} {new:>8.0f} {new / old:>10.2f} {diff:>12.1e}")


if __name__ == "__main__":
    main()
