"""The VGG-style discriminator the GAN trainers share (a linear or a patch head)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


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
