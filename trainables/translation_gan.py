"""Paired image-to-image translation (pix2pix-like): restore colour and fill holes.

The input is a grayscale copy of the target with one to three random rectangular holes set to
zero ("removeHoles"); the target is the clean colour image. A U-Net generator is trained with
an L1 reconstruction loss, an identity loss (the clean image maps to itself) and a conditional
PatchGAN discriminator that sees the input next to the real or generated output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainables.gan import Discriminator, GANConfig, PairedGANTrainer, psnr, validation_images
from trainables.images import dataset
from trainables.runtime import seed_everything

Norm = Literal["batch", "instance", "none", "demod"]
LUMA = (0.299, 0.587, 0.114)


@dataclass
class TranslationGANConfig(GANConfig):
    """Everything a translation GAN run depends on; field names are the sweep's parameter names.

    Adds the generator's fields to :class:`~trainables.gan.GANConfig`. ``depth`` is the number of
    U-Net levels (each halves the image); ``norm: demod`` replaces the norm layers by
    StyleGAN2 weight demodulation.
    """

    kernel_size: int = 3
    width: int = 32
    depth: int = 3
    norm: Norm = "instance"
    recon_weight: float = 100.0
    identity_weight: float = 50.0
    image_size: int = 32

    def problems(self) -> list[tuple[str, str]]:
        """Every value that cannot work, as ``(field, message)`` pairs."""
        found = super().problems()
        if self.depth < 1:
            found.append(("depth", f"must be >= 1, got {self.depth}"))
        elif self.image_size % 2**self.depth or self.image_size // 2**self.depth < 2:
            need = f"a multiple of {2**self.depth} and >= {2 ** (self.depth + 1)}"
            found.append(("image_size", f"must be {need} for depth {self.depth}, got {self.image_size}"))
        if self.image_size < 8:
            found.append(("image_size", f"must be >= 8, got {self.image_size}"))
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            found.append(("kernel_size", f"must be an odd number >= 1, got {self.kernel_size}"))
        elif self.kernel_size > self.image_size // 2:
            found.append(("kernel_size", f"{self.kernel_size} is larger than the feature map"))
        if self.width <= 0:
            found.append(("width", f"must be > 0, got {self.width}"))
        for name in ("recon_weight", "identity_weight"):
            if getattr(self, name) < 0:
                found.append((name, f"must be >= 0, got {getattr(self, name)}"))
        return found


class DemodConv2d(nn.Conv2d):
    """A convolution with StyleGAN2 weight demodulation (without the style modulation).

    Each output channel's weights are scaled to unit L2 norm before use, which keeps
    activations at unit scale without a norm layer.
    """

    eps = 1e-8

    def demodulated_weight(self) -> torch.Tensor:
        """The weight with every output channel's kernel scaled to unit norm (computed in float32)."""
        weight = self.weight.float()
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(1, 2, 3), keepdim=True) + self.eps)
        return weight.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve with the demodulated weight."""
        return F.conv2d(x, self.demodulated_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


def conv_block(c_in: int, c_out: int, kernel_size: int, norm: str, stride: int = 1) -> nn.Sequential:
    """Convolution, normalisation (by ``norm``) and LeakyReLU(0.2)."""
    pad = kernel_size // 2
    if norm == "demod":
        return nn.Sequential(DemodConv2d(c_in, c_out, kernel_size, stride, pad), nn.LeakyReLU(0.2))
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel_size, stride, pad)]
    if norm == "batch":
        layers.append(nn.BatchNorm2d(c_out))
    elif norm == "instance":
        layers.append(nn.InstanceNorm2d(c_out, affine=True))
    elif norm != "none":
        raise ValueError(f"unknown norm {norm!r}")
    return nn.Sequential(*layers, nn.LeakyReLU(0.2))


class UNet(nn.Module):
    """U-Net generator with ``depth`` levels and skip connections.

    Down, each level is a stride-2 block; up, each level is a nearest 2x upsampling and a block
    on the upsampled features concatenated with the skip. Widths double per level (capped at
    ``8 * width``); the output goes through a sigmoid.
    """

    def __init__(self, config: TranslationGANConfig) -> None:
        super().__init__()
        k, w, norm = config.kernel_size, config.width, config.norm
        widths = [w * 2 ** min(level, 3) for level in range(config.depth + 1)]
        self.head = nn.Sequential(nn.Conv2d(3, w, k, padding=k // 2), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(conv_block(widths[i], widths[i + 1], k, norm, stride=2) for i in range(config.depth))
        self.up = nn.ModuleList(conv_block(widths[i + 1] + widths[i], widths[i], k, norm) for i in range(config.depth))
        self.tail = nn.Conv2d(w, 3, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate (N, 3, H, W) images to (N, 3, H, W) images in (0, 1)."""
        h = self.head(x)
        skips = []
        for block in self.down:
            skips.append(h)
            h = block(h)
        for block, skip in zip(reversed(self.up), reversed(skips), strict=True):
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1))
        return torch.sigmoid(self.tail(h))


def degrade(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Grayscale copies (three equal channels) with one to three random rectangular holes set to zero.

    Each hole's sides are between 1/8 and 1/4 of the image side.
    """
    n, _, h, w = images.shape
    luma = torch.tensor(LUMA, dtype=images.dtype).view(1, 3, 1, 1)
    gray = (images * luma).sum(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    low, high = max(h // 8, 1), max(h // 4, 1) + 1
    count = torch.randint(1, 4, (n, 1), generator=generator)
    sizes = torch.randint(low, high, (n, 3, 2), generator=generator)
    corners = (torch.rand(n, 3, 2, generator=generator) * (torch.tensor([h, w]) - sizes + 1)).long()
    ys, xs = torch.arange(h).view(1, 1, h, 1), torch.arange(w).view(1, 1, 1, w)
    top, left = corners[..., 0, None, None], corners[..., 1, None, None]
    inside = (
        (ys >= top) & (ys < top + sizes[..., 0, None, None]) & (xs >= left) & (xs < left + sizes[..., 1, None, None])
    )
    inside &= (torch.arange(3).view(1, 3) < count)[..., None, None]
    return gray * (~inside.any(dim=1, keepdim=True)).to(images.dtype)


class TranslationGANTrainer(PairedGANTrainer):
    """Trains :class:`UNet` against a conditional PatchGAN :class:`Discriminator`.

    ``validate`` reports ``val_l1`` and ``val_psnr`` on fixed degraded validation images.
    """

    Config: ClassVar[type] = TranslationGANConfig
    metrics: ClassVar[tuple[str, ...]] = ("val_l1", "val_psnr", "train_loss")
    loss_terms: ClassVar[tuple[str, ...]] = ("recon", "identity")
    config: TranslationGANConfig

    def __init__(self, config: TranslationGANConfig) -> None:
        self.config = config
        seed_everything(config.seed)
        self.train_targets = dataset(config.data_dir, config.train_images, config.image_size, config.seed)
        self.val_targets = validation_images(config, len(self.train_targets))
        self.val_inputs = degrade(self.val_targets, torch.Generator().manual_seed(config.seed + 20_000))
        self._setup(UNet(config), Discriminator(6, config.d_width, config.image_size, "patch"))

    @property
    def model(self) -> UNet:
        """The generator being trained."""
        return self.g.model  # type: ignore[return-value]

    def _train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.train_targets[indices]
        return degrade(y).to(self.device), y.to(self.device)

    def _d_inputs(self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([x, y], dim=1), torch.cat([x.to(output.dtype), output], dim=1)

    def _generator_terms(
        self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor
    ) -> dict[str, tuple[float, torch.Tensor]]:
        recon = F.l1_loss(output.float(), y)
        identity = torch.zeros((), device=y.device)
        if self.config.identity_weight > 0:
            identity = F.l1_loss(self._generate(y).float(), y)
        return {"recon": (self.config.recon_weight, recon), "identity": (self.config.identity_weight, identity)}

    def _quality(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"val_l1": (output - target).abs().flatten(1).mean(dim=1), "val_psnr": psnr(output, target)}
