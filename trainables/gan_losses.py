"""Adversarial losses for the GAN trainers, with label smoothing, noisy labels and a gradient penalty.

``ragan`` (relativistic average, as in ESRGAN), ``vanilla`` (binary cross-entropy on logits),
``hinge`` and ``wgan-gp`` (Wasserstein with a gradient penalty of weight ``gp_weight``). The
discriminator's targets can be smoothed (real target ``1 - label_smoothing``) and flipped at
random (each sample with probability ``noisy_labels``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainables.precision import AmpNetwork

AdvLoss = Literal["ragan", "vanilla", "hinge", "wgan-gp"]
ADV_LOSSES = ("ragan", "vanilla", "hinge", "wgan-gp")


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
