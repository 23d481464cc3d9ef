"""Which GPUs a trial's process may use: none, unless the trial reserved some.

Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it assigned to a task or actor that reserved one,
but Ray (2.60 here; ray-project/ray#54868) leaves the variable alone for one that reserved
none. On a machine with GPUs, every trial of a sweep with ``budget.gpus_per_trial: 0`` would then
see every GPU, and a trainer on ``device: auto`` would train on GPU 0, which nobody reserved:
as many trials on one GPU as the machine has CPUs, the other GPUs idle. A trial that reserved no
GPU hides them all instead, as Ray did before and as ``gpus_per_trial: 0`` says.
"""

from __future__ import annotations

import os
import sys

HIDE = ""
"""``CUDA_VISIBLE_DEVICES`` that shows no GPU."""


def hide_unreserved_gpus(gpus: float) -> bool:
    """Hide every GPU from this process when it reserved none (``gpus`` <= 0); True if they are hidden now.

    Must run before CUDA starts in the process (CUDA reads the variable once). A process where it
    has already started keeps its GPUs; a warning says so on stderr.
    """
    if gpus > 0:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES") == HIDE:
        return True
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        print("sweeps: CUDA started in this trial process before its GPUs could be hidden", file=sys.stderr)
        return False
    os.environ["CUDA_VISIBLE_DEVICES"] = HIDE
    return True
