"""Tiny trainers for engine tests: deterministic metrics that depend on the config, no real model.

``ToyTrainer`` declares no metrics, so a spec naming a metric it lacks fails on the first report.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch


@dataclass
class ToyConfig:
    lr: float = 0.01
    width: int = 4
    mode: str = "a"
    seed: int = 0
    fail_at_epoch: int = 0
    behavior: str = "ok"  # ok, diverge (NaN loss at epoch 2), zeros (loss 0 at epoch 2), raise, oom (epoch 2),
    # nan_val / inf_val (validate gives NaN / inf at epoch 2, the training loss fine),
    # sys_exit (sys.exit(1) at epoch 2), os_exit (the process ends, os._exit(3), at epoch 2), hang (epoch 2 never ends),
    # diverge_die (NaN loss at epoch 2, then the process ends at epoch 3),
    # zeros_nan (loss 0 at epoch 2, a collapse's look, then validate gives NaN from epoch 3),
    # zeros_stay (loss 0 from epoch 2 to the end, its validation still finite),
    # bare_val (validate returns the bare metric value, not a dict),
    # tensor_step (on_step gets the step as a NumPy int or a tensor, the loss as a tensor and the grad norm as
    # a NumPy float32; validate gives NumPy's float32 and a tensor),
    # str_step (on_step gets the loss as a string)
    steps_per_epoch: int = 5
    epoch_seconds: float = 0.0  # sleep per epoch: trials long enough to stop a sweep or kill a node under
    cwd_file: str = ""  # if set, each trainer appends the folder it starts in, then moves to / (as a user's loop may)
    sleep_last: bool = False  # sleep after the epoch's steps, not before (its steps are logged while it sleeps)
    trace_dir: str = ""  # if set, each epoch appends "epoch node_id pid time" to <trace_dir>/<lr>.txt
    stagger: bool = False  # epoch_seconds times (0.5 + width / 8): trials running side by side end apart


def _trace(folder: str, lr: float, epoch: int) -> None:
    import os

    import ray

    line = f"{epoch} {ray.get_runtime_context().get_node_id()} {os.getpid()} {time.time():.3f}\n"
    with open(os.path.join(folder, f"{lr!r}.txt"), "a") as handle:
        handle.write(line)


class ToyTrainer:
    Config: ClassVar[type] = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        self.config = config
        if config.cwd_file:
            import os

            with open(config.cwd_file, "a") as handle:
                handle.write(os.getcwd() + "\n")
            os.chdir("/")
        self.epoch = 0
        self.step = 0
        self.on_step: Any = None

    def train_epoch(self) -> dict[str, float]:
        self.epoch += 1
        if self.config.trace_dir:
            _trace(self.config.trace_dir, self.config.lr, self.epoch)
        if self.config.fail_at_epoch and self.epoch >= self.config.fail_at_epoch:
            raise ValueError(f"toy failure at epoch {self.epoch}")
        if self.epoch == 2 and self.config.behavior == "raise":
            raise RuntimeError("toy trainer raised")
        if self.epoch == 2 and self.config.behavior == "sys_exit":
            import sys

            sys.exit(1)
        if (
            self.epoch == 2
            and self.config.behavior == "os_exit"
            or self.epoch == 3
            and self.config.behavior == "diverge_die"
        ):
            import os

            time.sleep(2.0)  # some training first, as a real epoch has: what epoch 1 logged is sent meanwhile
            os._exit(3)
        if self.epoch == 2 and self.config.behavior == "hang":
            time.sleep(3600)  # a deadlocked DataLoader, a read that never returns
        if self.epoch == 2 and self.config.behavior == "oom":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")
        if not self.config.sleep_last:
            time.sleep(self._epoch_seconds())
        for _ in range(self.config.steps_per_epoch):
            self.step += 1
            loss = math.nan if self.epoch == 2 and self.config.behavior in ("diverge", "diverge_die") else self._loss()
            if self.epoch == 2 and self.config.behavior in ("zeros", "zeros_nan"):  # looks like a collapse
                loss = 0.0
            if self.epoch >= 2 and self.config.behavior == "zeros_stay":  # a collapse that lasts to the end
                loss = 0.0
            if self.on_step is not None:
                sent: dict[str, Any] = {"loss": loss, "grad_norm": 1.0}
                step: Any = self.step
                if self.config.behavior == "tensor_step":
                    sent = {"loss": torch.tensor(loss), "grad_norm": np.float32(1.0)}
                    step = np.int64(step) if step % 2 else torch.tensor(step)
                elif self.config.behavior == "str_step":
                    sent["loss"] = str(loss)
                self.on_step(step, sent)
        if self.config.sleep_last:
            time.sleep(self._epoch_seconds())
        return {"train_loss": self._loss()}

    def _epoch_seconds(self) -> float:
        scale = 0.5 + self.config.width / 8 if self.config.stagger else 1.0
        return self.config.epoch_seconds * scale

    def _loss(self) -> float:
        distance = abs(math.log10(self.config.lr) + 2.0)
        return distance + 1.0 / self.epoch + 0.01 * self.config.width

    def validate(self) -> dict[str, float]:
        if self.config.behavior == "bare_val":  # a user's slip: the value without its name
            return self._loss()  # type: ignore[return-value]
        if self.epoch == 2 and self.config.behavior in ("nan_val", "inf_val"):
            return {"val_loss": math.nan if self.config.behavior == "nan_val" else math.inf}
        if self.epoch >= 3 and self.config.behavior == "zeros_nan":
            return {"val_loss": math.nan}
        if self.config.behavior == "tensor_step":
            return {"val_loss": np.float32(self._loss()), "val_acc": torch.tensor(0.5)}  # type: ignore[dict-item]
        return {"val_loss": self._loss()}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.step = state["epoch"], state["step"]


class ImageToyTrainer(ToyTrainer):
    """The toy trainer with a sample grid: four procedural images, noisier the higher the loss.

    Its images are logged each epoch as ``images/epoch_NNN.png``, so the report can show them.
    """

    def sample_grid(self) -> torch.Tensor:
        from trainables.data import procedural_images

        images = procedural_images(4, 24, seed=self.config.seed)
        generator = torch.Generator().manual_seed(self.epoch)
        noise = torch.rand(images.shape, generator=generator)
        amount = min(1.0, self._loss() / 4.0)
        images = (1 - amount) * images + amount * noise
        row = torch.cat(list(images), dim=2)  # (3, 24, 96): the four side by side
        return row.clamp(0, 1)


class BatchImageToyTrainer(ToyTrainer):
    """``sample_grid`` returns a batch ``(N, C, H, W)``, as a generator's output is."""

    def sample_grid(self) -> torch.Tensor:
        return torch.rand(4, 3, 8, 8)


class BadImageToyTrainer(ToyTrainer):
    """``sample_grid`` returns something no image is made of (8 channels)."""

    def sample_grid(self) -> torch.Tensor:
        return torch.rand(2, 8, 8, 8)[0]


@dataclass
class EpochsToyConfig(ToyConfig):
    epochs: int = 99  # a schedule's length, as a user's class sizes OneCycleLR: the engine fills it


class EpochsToyTrainer(ToyTrainer):
    """The toy trainer with an ``epochs`` field; it reports the epochs it was told (``planned_epochs``)."""

    Config: ClassVar[type] = EpochsToyConfig

    def validate(self) -> dict[str, float]:
        return {**super().validate(), "planned_epochs": float(self.config.epochs)}


class RandomGridToyTrainer(ToyTrainer):
    """Its validation draws from torch's global generator, and so does its ``sample_grid`` (a VAE's random latents)."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        torch.manual_seed(config.seed)  # as a user's trainer seeds itself

    def validate(self) -> dict[str, float]:
        return {"val_loss": self._loss() + float(torch.rand(()))}

    def sample_grid(self) -> torch.Tensor:
        return torch.rand(4, 3, 8, 8)
