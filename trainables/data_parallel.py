"""Data-parallel hooks in plain ``torch.distributed``: a no-op unless a process group is running.

Whoever starts the workers (the sweep engine through Ray Train, a test through
``torch.multiprocessing``) initializes the process group; trainers then call these helpers and
behave exactly as in a single process when there is none (or it has one rank).

- :func:`shard_order` splits each epoch's shuffled training order across ranks the way
  ``DistributedSampler`` does (padded to a multiple of the world size, rank ``r`` takes every
  ``world``-th index from ``r``), so batch ``i`` of all ranks together is batch ``i`` of a single
  process with ``world`` times the batch size.
- :func:`shard_range` gives each rank a contiguous part of the validation set (sizes may differ
  by one); :func:`sum_over_ranks` all-reduces metric sums and counts, so the mean is over the whole
  validation set, not a mean of rank means.
- :func:`average_gradients` all-reduces gradients (one flat buffer) before the optimizer step,
  as DDP does; :func:`broadcast_tensors` copies rank 0's parameters and buffers to every rank.
- :func:`mean_over_ranks` averages a dict of floats (per-step diagnostics, epoch training means).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def world_size() -> int:
    """Ranks in the running process group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """The rank of this process (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed() -> bool:
    """True when more than one rank trains together."""
    return world_size() > 1


def _device() -> torch.device:
    """Where collective buffers live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard_order(order: torch.Tensor) -> torch.Tensor:
    """The share of an epoch's index order this rank trains on (all of it without a process group)."""
    world = world_size()
    if world == 1:
        return order
    padding = (-len(order)) % world
    if padding:
        order = torch.cat([order, order[:padding]])
    return order[rank() :: world]


def shard_range(count: int) -> range:
    """The contiguous part of ``count`` items this rank scores (``range(count)`` without a process group)."""
    world, here = world_size(), rank()
    return range(here * count // world, (here + 1) * count // world)


def sum_over_ranks(sums: dict[str, float], count: float) -> tuple[dict[str, float], float]:
    """Sum metric totals and the item count over all ranks (in float64); unchanged in one process."""
    if not is_distributed():
        return sums, count
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=_device())
    dist.all_reduce(values)
    totals = values.tolist()
    return dict(zip(keys, totals[:-1], strict=True)), totals[-1]


def mean_over_ranks(metrics: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (NaN or inf on any rank stays in the result)."""
    if not is_distributed() or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=_device())
    dist.all_reduce(values)
    values /= world_size()
    return dict(zip(keys, values.tolist(), strict=True))


def agree(decision: bool) -> bool:
    """Rank 0's decision on every rank (unchanged in one process)."""
    if not is_distributed():
        return decision
    flag = torch.tensor([1.0 if decision else 0.0], device=_device())
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the ranks (one all-reduce per dtype)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    world = world_size()
    for dtype in sorted({g.dtype for g in grads}, key=str):
        group = [g for g in grads if g.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        flat /= world  # divide first: summed fp16 gradients under a loss scale would overflow sooner
        dist.all_reduce(flat)
        for grad, averaged in zip(group, _unflatten_dense_tensors(flat, group), strict=True):
            grad.copy_(averaged)


def broadcast_tensors(tensors: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's values into these tensors on every rank (parameters, buffers)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)
