"""ESRGAN-like super-resolution: an RRDB generator trained with pixel, feature and adversarial losses.

High-resolution images come from :func:`trainables.images.dataset`; the low-resolution inputs
are their area-downscaled copies, optionally with Gaussian noise. Knobs from the notebooks:
learning rates, kernel size, blocks, upsampler, loss weights, adversarial loss and precision.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainables.gan import AdvLoss, Discriminator, GANConfig, PairedGANTrainer, psnr, ssim, validation_images
from trainables.images import dataset
from trainables.runtime import seed_everything

FEATURE_SEED = 20_240_601
"""Seed of the random feature extractor: every trial and every run compares the same features."""


@dataclass
class SRGANConfig(GANConfig):
    """Everything an SR-GAN run depends on; field names are the sweep's parameter names.

    Adds the generator's fields to :class:`~trainables.gan.GANConfig`. ``image_size`` is the
    high-resolution side; inputs are ``image_size // scale``. ``feature_weights_path`` empty
    means a fixed, seeded, randomly initialised feature extractor; otherwise a state dict with
    VGG19-style keys (``features.0.weight`` ... ``features.7.bias``) is loaded from that file.
    """

    kernel_size: int = 3
    blocks: int = 2
    width: int = 32
    upsampler: Literal["nearest_conv", "pixel_shuffle", "transposed"] = "nearest_conv"
    scale: int = 4
    pixel_loss: Literal["l1", "l2"] = "l1"
    pixel_weight: float = 1.0
    feature_weight: float = 0.1
    adv_weight: float = 5e-3
    adv_loss: AdvLoss = "ragan"
    feature_weights_path: str = ""
    input_noise: float = 0.0

    def problems(self) -> list[tuple[str, str]]:
        """Every value that cannot work, as ``(field, message)`` pairs."""
        found = super().problems()
        if self.scale not in (2, 4):
            found.append(("scale", f"must be 2 or 4, got {self.scale}"))
        multiple = 4 * self.scale if self.scale in (2, 4) else 16
        if self.image_size < multiple or self.image_size % multiple:
            found.append(("image_size", f"must be a multiple of {multiple} (4 x scale), got {self.image_size}"))
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            found.append(("kernel_size", f"must be an odd number >= 1, got {self.kernel_size}"))
        elif self.scale in (2, 4) and self.kernel_size > self.image_size // self.scale:
            found.append(
                ("kernel_size", f"{self.kernel_size} is larger than the input ({self.image_size // self.scale})")
            )
        for name in ("blocks", "width"):
            if getattr(self, name) <= 0:
                found.append((name, f"must be > 0, got {getattr(self, name)}"))
        for name in ("pixel_weight", "feature_weight", "input_noise"):
            if getattr(self, name) < 0:
                found.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.feature_weights_path and not Path(self.feature_weights_path).is_file():
            found.append(("feature_weights_path", f"file {self.feature_weights_path!r} does not exist"))
        return found


class DenseBlock(nn.Module):
    """Five convolutions, each seeing the block input and every earlier output; residual scaled by 0.2."""

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        growth, pad = max(width // 2, 1), kernel_size // 2
        self.convs = nn.ModuleList(
            nn.Conv2d(width + i * growth, growth if i < 4 else width, kernel_size, padding=pad) for i in range(5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + 0.2 * block(x)``."""
        features = [x]
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(features, dim=1))
            features.append(F.leaky_relu(out, 0.2) if i < 4 else out)
        return x + 0.2 * features[-1]


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, width: int, kernel_size: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*(DenseBlock(width, kernel_size) for _ in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + 0.2 * blocks(x)``."""
        return x + 0.2 * self.blocks(x)


def upsample_stage(kind: str, width: int, kernel_size: int) -> nn.Sequential:
    """One 2x upsampling stage followed by LeakyReLU(0.2)."""
    pad = kernel_size // 2
    if kind == "nearest_conv":
        layers: list[nn.Module] = [
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, kernel_size, padding=pad),
        ]
    elif kind == "pixel_shuffle":
        layers = [nn.Conv2d(width, 4 * width, kernel_size, padding=pad), nn.PixelShuffle(2)]
    elif kind == "transposed":
        layers = [nn.ConvTranspose2d(width, width, kernel_size, stride=2, padding=pad, output_padding=1)]
    else:
        raise ValueError(f"unknown upsampler {kind!r}")
    return nn.Sequential(*layers, nn.LeakyReLU(0.2))


class SRGenerator(nn.Module):
    """RRDBNet: a conv, ``blocks`` RRDBs with a long skip, ``log2(scale)`` 2x upsamplings, two convs.

    The output is added to the bilinearly upsampled input, so the network learns the residual.
    """

    def __init__(self, config: SRGANConfig) -> None:
        super().__init__()
        k, w, pad = config.kernel_size, config.width, config.kernel_size // 2
        self.scale = config.scale
        self.head = nn.Conv2d(3, w, k, padding=pad)
        self.body = nn.Sequential(*(RRDB(w, k) for _ in range(config.blocks)))
        self.body_conv = nn.Conv2d(w, w, k, padding=pad)
        self.upsample = nn.Sequential(*(upsample_stage(config.upsampler, w, k) for _ in range(config.scale // 2)))
        self.tail = nn.Sequential(nn.Conv2d(w, w, k, padding=pad), nn.LeakyReLU(0.2), nn.Conv2d(w, 3, k, padding=pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Super-resolve (N, 3, h, w) to (N, 3, scale * h, scale * w)."""
        features = self.head(x)
        features = features + self.body_conv(self.body(features))
        out = self.tail(self.upsample(features))
        return out + F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)


class FeatureExtractor(nn.Module):
    """A frozen VGG19 prefix up to conv2_2 (before its ReLU), on ImageNet-normalised inputs.

    The trainer runs it in float32 in every precision mode: it has nothing to train, and the
    feature loss compares small differences between features.

    Its keys match torchvision's ``vgg19().state_dict()`` (``features.0`` ... ``features.7``), so
    those weights can be loaded; without a file the weights are random with a fixed seed.

    Args:
        weights_path: a file holding a state dict ("" for the seeded random weights). Keys the
            extractor does not have are ignored.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, weights_path: str = "") -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FEATURE_SEED)
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Conv2d(64, 128, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(128, 128, 3, padding=1),
            )
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        if weights_path:
            self.load_weights(weights_path)
        self.requires_grad_(False)
        self.eval()

    def load_weights(self, path: str) -> None:
        """Load the extractor's weights from a state dict file; raise ValueError naming what is wrong."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ValueError(f"cannot read feature weights {path!r}: {exc}") from None
        if not isinstance(state, dict):
            raise ValueError(f"feature weights {path!r} hold a {type(state).__name__}, not a state dict")
        missing = [key for key in self.state_dict() if key not in state]
        if missing:
            raise ValueError(f"feature weights {path!r} lack {', '.join(missing)}")
        self.load_state_dict({key: state[key] for key in self.state_dict()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features of images in [0, 1]."""
        return self.features((x - self.mean) / self.std)


def downscale(images: torch.Tensor, scale: int) -> torch.Tensor:
    """Area (box filter) downscaling by ``scale``."""
    return F.interpolate(images, scale_factor=1 / scale, mode="area")


class SRGANTrainer(PairedGANTrainer):
    """Trains :class:`SRGenerator` against a VGG-style :class:`Discriminator` with a linear head.

    ``validate`` reports ``val_psnr``, ``val_ssim`` and ``val_l1`` on the validation images.
    """

    Config: ClassVar[type] = SRGANConfig
    metrics: ClassVar[tuple[str, ...]] = ("val_psnr", "val_ssim", "val_l1", "train_loss")
    loss_terms: ClassVar[tuple[str, ...]] = ("pixel", "feature")
    config: SRGANConfig

    def __init__(self, config: SRGANConfig) -> None:
        self.config = config
        seed_everything(config.seed)
        self.train_targets = dataset(config.data_dir, config.train_images, config.image_size, config.seed)
        self.train_inputs = downscale(self.train_targets, config.scale)
        self.val_targets = validation_images(config, len(self.train_targets))
        self.val_inputs = downscale(self.val_targets, config.scale)
        if config.input_noise > 0:
            noise = torch.Generator().manual_seed(config.seed + 20_000)
            self.val_inputs = self.val_inputs + config.input_noise * torch.randn(self.val_inputs.shape, generator=noise)
        self._setup(SRGenerator(config), Discriminator(3, config.d_width, config.image_size, "linear"))
        self.features = FeatureExtractor(config.feature_weights_path).to(self.device) if config.feature_weight else None

    @property
    def model(self) -> SRGenerator:
        """The generator being trained."""
        return self.g.model  # type: ignore[return-value]

    def _train_batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.train_inputs[indices], self.train_targets[indices]
        if self.config.input_noise > 0:
            x = x + self.config.input_noise * torch.randn_like(x)
        return x.to(self.device), y.to(self.device)

    def _generator_terms(
        self, x: torch.Tensor, y: torch.Tensor, output: torch.Tensor
    ) -> dict[str, tuple[float, torch.Tensor]]:
        sr = output.float()
        pixel = F.l1_loss(sr, y) if self.config.pixel_loss == "l1" else F.mse_loss(sr, y)
        feature = torch.zeros((), device=y.device)
        if self.features is not None:
            with torch.autocast(self.device.type, enabled=False):
                with torch.no_grad():
                    target_features = self.features(y)
                feature = F.l1_loss(self.features(sr), target_features)
        return {"pixel": (self.config.pixel_weight, pixel), "feature": (self.config.feature_weight, feature)}

    def _quality(self, output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "val_psnr": psnr(output, target),
            "val_ssim": ssim(output, target),
            "val_l1": (output - target).abs().flatten(1).mean(dim=1),
        }

    def _shown_input(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=self.config.scale, mode="nearest")
