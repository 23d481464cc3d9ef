"""Image quality scores: PSNR and SSIM (Gaussian window) on images in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
