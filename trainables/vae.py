"""A convolutional VAE on procedurally generated images: the first trainer our users tune.

Knobs from the notebooks: learning rate, kernel size, latent size, KL loss weight,
reconstruction loss, output activation and precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainables.data_parallel import shard_order, shard_range, sum_over_ranks
from trainables.diagnostics import EpochAverages, StepHook, network_metrics, output_metrics
from trainables.images import dataset, make_grid, validation_images
from trainables.precision import PRECISIONS, AmpNetwork
from trainables.runtime import pick_device, restore_rng, rng_state, seed_everything
from trainables.settings import RunSettings


@dataclass
class VAEConfig(RunSettings):
    """Everything a VAE run depends on; field names are the sweep's parameter names."""

    lr: float = 1e-3
    kernel_size: int = 3
    latent_dim: int = 16
    width: int = 16
    kl_weight: float = 1e-3
    recon_loss: Literal["mse", "l1", "smooth_l1"] = "mse"
    output_activation: Literal["none", "sigmoid", "tanh"] = "sigmoid"
    batch_size: int = 32
    image_size: int = 32
    train_images: int = 512
    val_images: int = 128

    def problems(self) -> list[tuple[str, str]]:
        """Every value that cannot work, as ``(field, message)`` pairs."""
        found: list[tuple[str, str]] = []
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            found.append(("kernel_size", f"must be an odd number >= 1, got {self.kernel_size}"))
        elif self.kernel_size > self.image_size // 2:
            found.append(("kernel_size", f"{self.kernel_size} is larger than the feature map"))
        if self.image_size < 8 or self.image_size % 4:
            found.append(("image_size", f"must be a multiple of 4 and >= 8, got {self.image_size}"))
        for name in ("lr", "latent_dim", "width", "batch_size", "train_images", "val_images"):
            if getattr(self, name) <= 0:
                found.append((name, f"must be > 0, got {getattr(self, name)}"))
        if self.kl_weight < 0:
            found.append(("kl_weight", f"must be >= 0, got {self.kl_weight}"))
        return found + self.run_problems()


class ConvVAE(nn.Module):
    """Two strided convolutions down, a Gaussian latent, two upsample+conv blocks up."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        k, w, pad = config.kernel_size, config.width, config.kernel_size // 2
        self.side = config.image_size // 4
        flat = 2 * w * self.side * self.side
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, k, stride=2, padding=pad),
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, k, stride=2, padding=pad),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
        )
        self.to_latent = nn.Linear(flat, 2 * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * w, w, k, padding=pad),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(w, 3, k, padding=pad),
        )
        self.activation = config.output_activation
        self.width = w

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the latent mean and log-variance."""
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map latents back to images."""
        h = self.from_latent(z).view(-1, 2 * self.width, self.side, self.side)
        out = self.decoder(F.leaky_relu(h, 0.2))
        if self.activation == "sigmoid":
            return torch.sigmoid(out)
        if self.activation == "tanh":
            return torch.tanh(out)
        return out


_RECON = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


class VAETrainer:
    """Trains :class:`ConvVAE`; ``validate`` reports ``val_loss``, ``val_mse`` and ``val_kl``."""

    Config: ClassVar[type] = VAEConfig
    metrics: ClassVar[tuple[str, ...]] = ("val_loss", "val_mse", "val_kl", "train_loss")
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS

    def __init__(self, config: VAEConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        seed_everything(config.seed)
        self.train_images = dataset(config.data_dir, config.train_images, config.image_size, config.seed)
        self.val_images = validation_images(config, len(self.train_images))
        self.net = AmpNetwork(
            ConvVAE(config),
            lambda params: torch.optim.Adam(params, lr=config.lr),
            config.precision,
            self.device,
            config.scaler,
        )
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.step = 0
        self.on_step: StepHook | None = None

    @property
    def model(self) -> ConvVAE:
        """The VAE being trained."""
        return self.net.model  # type: ignore[return-value]

    def _losses(self, x: torch.Tensor, sample: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x_in = x.to(self.net.input_dtype)
        mu, logvar = self.model.encode(x_in)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        recon = self.model.decode(z)
        recon_loss = _RECON[self.config.recon_loss](recon.float(), x)
        mu32, logvar32 = mu.float(), logvar.float()
        kl = -0.5 * torch.mean(torch.sum(1 + logvar32 - mu32.pow(2) - logvar32.exp(), dim=1))
        return recon_loss + self.config.kl_weight * kl, recon_loss, kl, recon

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training images in a seeded random order (this rank's share of it)."""
        self.model.train()
        order = shard_order(torch.randperm(len(self.train_images), generator=self.shuffle))
        averages = EpochAverages()
        skipped, scale = 0, self.net.loss_scale
        for start in range(0, len(order), self.config.batch_size):
            x = self.train_images[order[start : start + self.config.batch_size]].to(self.device)
            self.net.zero_grad()
            with self.net.autocast():
                loss, recon_loss, kl, recon = self._losses(x, sample=True)
            self.net.backward(loss)
            stats = self.net.step(self.config.diagnostics)
            self.step += 1
            skipped += int(stats.skipped)
            scale = stats.loss_scale
            metrics = {
                "loss": float(loss.detach()),
                "loss/recon": float(recon_loss.detach()),
                "loss/kl": float(kl.detach()),
            }
            averages.add({**metrics, "grad_norm": stats.grad_norm})
            if self.on_step is not None:
                metrics.update(network_metrics("vae", self.net, stats, self.config.diagnostics))
                if self.config.diagnostics:
                    metrics.update(output_metrics(recon))
                self.on_step(self.step, metrics)
        self.epoch += 1
        means = averages.means()
        return {
            "train_loss": means["train_loss"],
            "train_recon": means["train_loss_recon"],
            "train_kl": means["train_loss_kl"],
            "grad_norm": means["train_grad_norm"],
            "loss_scale": scale,
            "skipped_steps": float(skipped),
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Deterministic validation: the latent mean is decoded, no sampling.

        Under a process group each rank scores its part of the validation images; the sums and
        counts are added over the ranks, so the means are over the whole set.
        """
        self.model.eval()
        sums = {"val_loss": 0.0, "val_mse": 0.0, "val_kl": 0.0}
        part = shard_range(len(self.val_images))
        for start in range(part.start, part.stop, self.config.batch_size):
            x = self.val_images[start : min(start + self.config.batch_size, part.stop)].to(self.device)
            with self.net.autocast():
                loss, _, kl, recon = self._losses(x, sample=False)
            n = len(x)
            sums["val_loss"] += float(loss) * n
            sums["val_mse"] += float(F.mse_loss(recon.float(), x)) * n
            sums["val_kl"] += float(kl) * n
        totals, count = sum_over_ranks(sums, float(len(part)))
        return {key: value / count for key, value in totals.items()}

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Validation inputs (top) and their reconstructions (bottom) as one image."""
        self.model.eval()
        x = self.val_images[:8].to(self.device)
        with self.net.autocast():
            _, _, _, recon = self._losses(x, sample=False)
        return make_grid([x, recon])

    def state_dict(self) -> dict[str, Any]:
        """Network (model, optimizer, scaler), RNG states and counters."""
        return {
            "net": self.net.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` so the next epoch is the one that would have run."""
        self.net.load_state_dict(state["net"])
        self.shuffle.set_state(state["shuffle"])
        restore_rng(state["rng"])
        self.epoch = state["epoch"]
        self.step = state["step"]
