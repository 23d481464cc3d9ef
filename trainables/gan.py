"""What the GAN trainers share: their config and the training loop of a paired GAN.

A paired GAN maps an input image to a target image; the losses are in ``gan_losses``, the
discriminator in ``discriminator`` and the quality scores in ``quality`` (re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from trainables.data_parallel import shard_order, shard_range, sum_over_ranks
from trainables.diagnostics import EpochAverages, StepHook, network_metrics, output_metrics
from trainables.discriminator import Discriminator, d_levels
from trainables.gan_losses import (
    ADV_LOSSES,
    AdvLoss,
    discriminator_loss,
    frozen,
    generator_loss,
    gradient_penalty,
)
from trainables.images import make_grid, validation_images
from trainables.precision import PRECISIONS, AmpNetwork, StepStats
from trainables.quality import psnr, ssim
from trainables.runtime import pick_device, restore_rng, rng_state
from trainables.settings import RunSettings

__all__ = [
    "ADV_LOSSES",
    "AdvLoss",
    "Discriminator",
    "GANConfig",
    "PairedGANTrainer",
    "d_levels",
    "discriminator_loss",
    "generator_loss",
    "gradient_penalty",
    "psnr",
    "ssim",
    "validation_images",
]

BETAS = (0.9, 0.99)


# Config ---------------------------------------------------------------------------------------


@dataclass
class GANConfig(RunSettings):
    """The fields every GAN trainer has; a trainer's config adds its generator's fields.

    Field names are the sweep's parameter names. ``gp_weight`` applies to ``wgan-gp`` only;
    ``d_updates`` is the number of discriminator steps per generator step.
    """

    lr_g: float = 2e-4
    lr_d: float = 2e-4
    adv_weight: float = 1.0
    adv_loss: AdvLoss = "vanilla"
    gp_weight: float = 10.0
    label_smoothing: float = 0.0
    noisy_labels: float = 0.0
    d_updates: int = 1
    d_width: int = 32
    batch_size: int = 16
    image_size: int = 64
    train_images: int = 512
    val_images: int = 64

    def problems(self) -> list[tuple[str, str]]:
        """Every shared value that cannot work, as ``(field, message)`` pairs."""
        found: list[tuple[str, str]] = []
        if self.adv_loss not in ADV_LOSSES:
            found.append(("adv_loss", f"{self.adv_loss!r} is not one of {', '.join(ADV_LOSSES)}"))
        for name in ("lr_g", "lr_d", "d_width", "batch_size", "train_images", "val_images"):
            if getattr(self, name) <= 0:
                found.append((name, f"must be > 0, got {getattr(self, name)}"))
        for name in ("adv_weight", "gp_weight"):
            if getattr(self, name) < 0:
                found.append((name, f"must be >= 0, got {getattr(self, name)}"))
        for name in ("label_smoothing", "noisy_labels"):
            if not 0 <= getattr(self, name) < 0.5:
                found.append((name, f"must be in [0, 0.5), got {getattr(self, name)}"))
        if self.d_updates < 1:
            found.append(("d_updates", f"must be >= 1, got {self.d_updates}"))
        return found + self.run_problems()


# The paired GAN training loop -----------------------------------------------------------------


class DiscriminatorSteps(NamedTuple):
    """The discriminator's steps for one generator step."""

    loss: float
    """Mean loss over the steps."""
    stats: StepStats
    """The last step's stats."""
    skipped: int
    """Steps skipped on an overflow."""
    real_mean: float
    """Mean logit on real samples (last step)."""
    fake_mean: float
    """Mean logit on generated samples (last step)."""


class PairedGANTrainer:
    """Training loop of a GAN that maps an input image to a target image.

    A subclass prepares ``val_inputs``/``val_targets`` and calls :meth:`_setup` with its
    generator and discriminator, then says how a training batch is made (:meth:`_train_batch`),
    what the discriminator sees (:meth:`_d_inputs`), the generator's non-adversarial loss terms
    (:meth:`_generator_terms`) and the validation metrics (:meth:`_quality`).

    Each step trains the discriminator ``d_updates`` times on the batch's detached output, then
    the generator once on ``sum(weight * term)`` plus ``adv_weight`` times the adversarial loss.
    """

    Config: ClassVar[type]
    metrics: ClassVar[tuple[str, ...]]
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    loss_terms: ClassVar[tuple[str, ...]]
    """Names of the terms :meth:`_generator_terms` returns (``adv`` is added)."""
    config: GANConfig
    val_inputs: torch.Tensor
    val_targets: torch.Tensor

    def _setup(self, generator: nn.Module, discriminator: nn.Module) -> None:
        """Both networks with their Adam optimizers and loss scalers, the shuffle RNG, the counters."""
        config = self.config
        self.device = pick_device(config.device)
        scaler = config.scaler
        self.g = AmpNetwork(
            generator,
            lambda params: torch.optim.Adam(params, lr=config.lr_g, betas=BETAS),
            config.precision,
            self.device,
            scaler,
        )
        self.d = AmpNetwork(
            discriminator,
            lambda params: torch.optim.Adam(params, lr=config.lr_d, betas=BETAS),
            config.precision,
            self.device,
            scaler,
        )
        self.shuffle = torch.Generator().manual_seed(config.seed)
        self.epoch = 0
        self.step = 0
        self.on_step: StepHook | None = None

    def _train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training (input, target) pair for these image indices, on the device."""
        raise NotImplementedError

    def _d_inputs(self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the discriminator judges as real and as fake."""
        return y, output

    def _generator_terms(
        self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor
    ) -> dict[str, tuple[float, torch.Tensor]]:
        """The generator's non-adversarial loss terms as ``name: (weight, value)``."""
        raise NotImplementedError

    def _quality(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Validation metrics per image, output clamped to [0, 1]."""
        raise NotImplementedError

    def _shown_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input as drawn in the sample grid."""
        return x

    def _generate(self, x: torch.Tensor) -> torch.Tensor:
        return self.g.model(x.to(self.g.input_dtype))

    def _train_discriminator(self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor) -> DiscriminatorSteps:
        """``d_updates`` discriminator steps on the batch and the generator's detached output."""
        config = self.config
        real, fake = (t.detach() for t in self._d_inputs(x, y, output.detach()))
        losses, skipped = [], 0
        for _ in range(config.d_updates):
            self.d.zero_grad()
            with self.d.autocast():
                logits = self.d.model(torch.cat([real, fake]).to(self.d.input_dtype)).float()
                real_logits, fake_logits = logits.chunk(2)
                loss = discriminator_loss(
                    config.adv_loss, real_logits, fake_logits, config.label_smoothing, config.noisy_labels
                )
            if config.adv_loss == "wgan-gp" and config.gp_weight > 0:
                loss = loss + config.gp_weight * gradient_penalty(self.d, real, fake)
            self.d.backward(loss)
            stats = self.d.step(config.diagnostics)
            losses.append(float(loss.detach()))
            skipped += int(stats.skipped)
        return DiscriminatorSteps(
            sum(losses) / len(losses),
            stats,
            skipped,
            float(real_logits.detach().mean()),
            float(fake_logits.detach().mean()),
        )

    def _adversarial_loss(self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        real, fake = self._d_inputs(x, y, output)
        with frozen(self.d.model), self.d.autocast():
            fake_logits = self.d.model(fake.to(self.d.input_dtype)).float()
            real_logits = None
            if self.config.adv_loss == "ragan":
                with torch.no_grad():
                    real_logits = self.d.model(real.to(self.d.input_dtype)).float()
        return generator_loss(self.config.adv_loss, fake_logits, real_logits)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training images in a seeded random order.

        ``grad_norm`` and ``d_grad_norm`` are means over the steps that were applied (0.0 when
        every step was skipped on an fp16 overflow; ``skipped_steps`` counts those).
        """
        config = self.config
        self.g.model.train()
        self.d.model.train()
        order = shard_order(torch.randperm(config.train_images, generator=self.shuffle))
        averages = EpochAverages()
        applied: dict[str, list[float]] = {"grad_norm": [], "d_grad_norm": []}
        skipped = d_skipped = 0
        for start in range(0, len(order), config.batch_size):
            x, y = self._train_batch(order[start : start + config.batch_size])
            with self.g.autocast():
                output = self._generate(x)
            d_step = self._train_discriminator(x, y, output)
            self.g.zero_grad()
            with self.g.autocast():
                terms = self._generator_terms(x, y, output)
                terms["adv"] = (config.adv_weight, self._adversarial_loss(x, y, output))
                loss = sum((weight * value for weight, value in terms.values()), torch.zeros((), device=x.device))
            self.g.backward(loss)
            stats = self.g.step(config.diagnostics)
            self.step += 1
            skipped += int(stats.skipped)
            d_skipped += d_step.skipped
            for name, step_stats in (("grad_norm", stats), ("d_grad_norm", d_step.stats)):
                if not step_stats.skipped:
                    applied[name].append(step_stats.grad_norm)
            metrics = {
                "loss": float(loss.detach()),
                **{f"loss/{name}": float(value.detach()) for name, (_, value) in terms.items()},
                "loss/d": d_step.loss,
                "d/real_mean": d_step.real_mean,
                "d/fake_mean": d_step.fake_mean,
            }
            averages.add(metrics)
            if self.on_step is not None:
                metrics.update(network_metrics("g", self.g, stats, config.diagnostics))
                metrics.update(network_metrics("d", self.d, d_step.stats, config.diagnostics))
                if config.diagnostics:
                    metrics.update(output_metrics(output))
                self.on_step(self.step, metrics)
        self.epoch += 1
        means = averages.means()
        return {
            "train_loss": means["train_loss"],
            **{f"train_{name}": means[f"train_loss_{name}"] for name in (*self.loss_terms, "adv")},
            "train_d_loss": means["train_loss_d"],
            "d_real_mean": means["train_d_real_mean"],
            "d_fake_mean": means["train_d_fake_mean"],
            **{name: sum(norms) / len(norms) if norms else 0.0 for name, norms in applied.items()},
            "loss_scale": self.g.loss_scale,
            "d_loss_scale": self.d.loss_scale,
            "skipped_steps": float(skipped),
            "d_skipped_steps": float(d_skipped),
        }

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The generator's outputs on the fixed validation inputs, scored by :meth:`_quality`."""
        self.g.model.eval()
        sums = {name: 0.0 for name in self.metrics if name.startswith("val_")}  # the same keys on every rank
        part = shard_range(len(self.val_targets))
        for start in range(part.start, part.stop, self.config.batch_size):
            stop = min(start + self.config.batch_size, part.stop)
            x = self.val_inputs[start:stop].to(self.device)
            y = self.val_targets[start:stop].to(self.device)
            with self.g.autocast():
                output = self._generate(x)
            for name, values in self._quality(output.float().clamp(0, 1), y).items():
                sums[name] = sums.get(name, 0.0) + float(values.sum())
        totals, count = sum_over_ranks(sums, float(len(part)))
        return {name: total / count for name, total in totals.items()}

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Validation inputs, the generator's outputs and the targets, one row each."""
        self.g.model.eval()
        x, y = self.val_inputs[:8].to(self.device), self.val_targets[:8].to(self.device)
        with self.g.autocast():
            output = self._generate(x)
        return make_grid([self._shown_input(x), output, y])

    def state_dict(self) -> dict[str, Any]:
        """Both networks (model, optimizer, scaler), RNG states and counters."""
        return {
            "g": self.g.state_dict(),
            "d": self.d.state_dict(),
            "shuffle": self.shuffle.get_state(),
            "rng": rng_state(),
            "epoch": self.epoch,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` so the next epoch is the one that would have run."""
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.shuffle.set_state(state["shuffle"])
        restore_rng(state["rng"])
        self.epoch = state["epoch"]
        self.step = state["step"]
