"""What the GAN trainers share: adversarial losses, a discriminator, quality metrics, the training loop.

The training loop is that of a paired GAN (an input image to a target image); the discriminator
is VGG-style, and PSNR and SSIM score the outputs.

Adversarial losses (``adv_loss``): ``ragan`` (relativistic average, as in ESRGAN), ``vanilla``
(binary cross-entropy on logits), ``hinge`` and ``wgan-gp`` (Wasserstein with a gradient penalty
of weight ``gp_weight``). The discriminator's targets can be smoothed (real target
``1 - label_smoothing``) and flipped at random (each sample with probability ``noisy_labels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from trainables.diagnostics import EpochAverages, StepHook, network_metrics, output_metrics
from trainables.images import dataset, make_grid
from trainables.precision import AmpNetwork, StepStats
from trainables.runtime import pick_device, restore_rng, rng_state
from trainables.settings import RunSettings

AdvLoss = Literal["ragan", "vanilla", "hinge", "wgan-gp"]
ADV_LOSSES = ("ragan", "vanilla", "hinge", "wgan-gp")
BETAS = (0.9, 0.99)


# Adversarial losses ---------------------------------------------------------------------------


def _targets(logits: torch.Tensor, real: bool, smoothing: float, noisy: float) -> torch.Tensor:
    """Per-sample targets in [0, 1]: ``1 - smoothing`` for real, 0 for fake, some flipped."""
    targets = torch.full_like(logits, 1.0 - smoothing if real else 0.0)
    if noisy > 0:
        flip = torch.rand(len(logits), device=logits.device) < noisy
        flip = flip.view(-1, *[1] * (logits.dim() - 1))
        targets = torch.where(flip, (1.0 - smoothing) - targets, targets)
    return targets


def discriminator_loss(
    kind: str, real: torch.Tensor, fake: torch.Tensor, smoothing: float = 0.0, noisy: float = 0.0
) -> torch.Tensor:
    """The discriminator's loss from its logits on real and on generated samples.

    For ``hinge`` and ``wgan-gp`` a target ``t`` acts as the sign ``2t - 1``, so smoothing
    shrinks the real side's weight and a flipped label swaps sides. The gradient penalty is
    not included (see :func:`gradient_penalty`).

    Args:
        kind: one of :data:`ADV_LOSSES`.
        real: logits on real samples, float32, first dimension the batch.
        fake: logits on generated samples, same shape.
        smoothing: label smoothing; the real target is ``1 - smoothing``.
        noisy: probability of flipping each sample's label.

    Returns:
        The scalar loss.
    """
    t_real, t_fake = _targets(real, True, smoothing, noisy), _targets(fake, False, smoothing, noisy)
    if kind == "ragan":
        real, fake = real - fake.mean(0, keepdim=True), fake - real.mean(0, keepdim=True)
    if kind in ("ragan", "vanilla"):
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real, t_real) + F.binary_cross_entropy_with_logits(fake, t_fake)
        )
    s_real, s_fake = 2 * t_real - 1, 2 * t_fake - 1
    if kind == "hinge":
        return F.relu(1 - s_real * real).mean() + F.relu(1 - s_fake * fake).mean()
    if kind == "wgan-gp":
        return -(s_real * real).mean() - (s_fake * fake).mean()
    raise ValueError(f"unknown adversarial loss {kind!r} (known: {', '.join(ADV_LOSSES)})")


def generator_loss(kind: str, fake: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
    """The generator's adversarial loss from the discriminator's logits.

    Args:
        kind: one of :data:`ADV_LOSSES`.
        fake: logits on generated samples (gradients flow through them to the generator).
        real: logits on real samples, needed by ``ragan`` only (treated as constants).

    Returns:
        The scalar loss.
    """
    if kind == "ragan":
        if real is None:
            raise ValueError("ragan needs the logits on real samples")
        real = real.detach()
        real_rel, fake_rel = real - fake.mean(0, keepdim=True), fake - real.mean(0, keepdim=True)
        return 0.5 * (
            F.binary_cross_entropy_with_logits(real_rel, torch.zeros_like(real_rel))
            + F.binary_cross_entropy_with_logits(fake_rel, torch.ones_like(fake_rel))
        )
    if kind == "vanilla":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"unknown adversarial loss {kind!r} (known: {', '.join(ADV_LOSSES)})")


def gradient_penalty(net: AmpNetwork, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``(|grad D(x)| - 1)^2`` at random mixes of real and fake samples.

    Computed outside autocast with float32 inputs (and, under fp16-o2 where the weights are
    float16, with the gradient norm taken in float32), so it stays finite in every precision.
    """
    eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
    mixed = (eps * real.detach().float() + (1 - eps) * fake.detach().float()).requires_grad_(True)
    with torch.autocast(net.device.type, enabled=False):
        out = net.model(mixed.to(net.input_dtype)).float()
        (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    return ((grad.float().flatten(1).norm(dim=1) - 1) ** 2).mean()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off gradients for ``model``'s parameters inside the block (inputs still get them)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


# Discriminator ------------------------------------------------------------------------------


def d_levels(image_size: int) -> int:
    """Stride-2 levels of the discriminator: halve while the side stays >= 4 (at most 4 times)."""
    levels, side = 0, image_size
    while levels < 4 and side % 2 == 0 and side // 2 >= 4:
        levels, side = levels + 1, side // 2
    return levels


class Discriminator(nn.Module):
    """VGG-style discriminator: a 3x3 conv, then per level a stride-2 3x3 conv and a widening 3x3 conv.

    Every conv is followed by LeakyReLU(0.2); there are no norm layers (the gradient penalty
    needs per-sample gradients). Widths double per level from ``width`` (capped at
    ``8 * width``); :func:`d_levels` says how many levels. The head is either
    ``linear`` (flatten, Linear to 100, LeakyReLU, Linear to one logit per image, as in ESRGAN)
    or ``patch`` (a 3x3 conv to one logit per location, as in pix2pix's PatchGAN).

    Args:
        in_channels: image channels (6 for a conditional discriminator on input and output).
        width: channels of the first level.
        image_size: side of the square inputs.
        head: ``linear`` or ``patch``.
    """

    def __init__(self, in_channels: int, width: int, image_size: int, head: Literal["linear", "patch"]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.LeakyReLU(0.2)]
        channels, side = width, image_size
        for level in range(d_levels(image_size)):
            out = width * 2 ** min(level + 1, 3)
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.LeakyReLU(0.2)]
            channels, side = out, side // 2
        self.features = nn.Sequential(*layers)
        if head == "linear":
            self.head: nn.Module = nn.Sequential(
                nn.Flatten(), nn.Linear(channels * side * side, 100), nn.LeakyReLU(0.2), nn.Linear(100, 1)
            )
        else:
            self.head = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (N, 1) for the linear head, (N, 1, h, w) for the patch head."""
        return self.head(self.features(x))


# Image quality --------------------------------------------------------------------------------


def psnr(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image (values in [0, 1]); shape (N,)."""
    mse = (output.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(output: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image with a Gaussian window (values in [0, 1]); shape (N,).

    The window shrinks to the image side (kept odd) for small images; no padding is used.
    """
    x, y = output.float(), target.float()
    size = min(window, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    coords = torch.arange(size, dtype=torch.float32, device=x.device) - size // 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.flatten(1).mean(dim=1)


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


def validation_images(config: GANConfig, train_count: int) -> torch.Tensor:
    """Validation images: procedural with another seed, or the folder's images after the training ones."""
    if not config.data_dir:
        return dataset("", config.val_images, config.image_size, config.seed + 10_000)
    everything = dataset(config.data_dir, config.train_images + config.val_images, config.image_size, config.seed)
    return everything[train_count:] if len(everything) > train_count else everything[-config.val_images :]


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
        order = torch.randperm(config.train_images, generator=self.shuffle)
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
        sums: dict[str, float] = {}
        for start in range(0, len(self.val_targets), self.config.batch_size):
            x = self.val_inputs[start : start + self.config.batch_size].to(self.device)
            y = self.val_targets[start : start + self.config.batch_size].to(self.device)
            with self.g.autocast():
                output = self._generate(x)
            for name, values in self._quality(output.float().clamp(0, 1), y).items():
                sums[name] = sums.get(name, 0.0) + float(values.sum())
        return {name: total / len(self.val_targets) for name, total in sums.items()}

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
