"""Procedurally generated images: shaded spheres with highlights, flat shapes and gradients.

Deterministic by seed and of any size, so sweeps and tests need no downloads.
"""

from __future__ import annotations

import numpy as np
import torch


def _coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(axis, axis, indexing="xy")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    xx, yy = _coords(size)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    low, high = rng.uniform(0.0, 0.4, size=3), rng.uniform(0.3, 0.7, size=3)
    return low[:, None, None] + (high - low)[:, None, None] * ramp[None]


def _sphere(rng: np.random.Generator, image: np.ndarray) -> None:
    size = image.shape[-1]
    xx, yy = _coords(size)
    cx, cy = rng.uniform(0.25, 0.75, size=2)
    radius = rng.uniform(0.12, 0.3)
    dx, dy = (xx - cx) / radius, (yy - cy) / radius
    inside = dx**2 + dy**2 <= 1.0
    dz = np.sqrt(np.clip(1.0 - dx**2 - dy**2, 0.0, 1.0))
    light = np.array([-0.5, -0.6, 0.62], dtype=np.float32)
    light /= np.linalg.norm(light)
    diffuse = np.clip(dx * light[0] + dy * light[1] + dz * light[2], 0.0, 1.0)
    highlight = diffuse ** rng.uniform(20, 60)
    color = rng.uniform(0.2, 1.0, size=3)
    shaded = color[:, None, None] * (0.15 + 0.85 * diffuse)[None] + 0.8 * highlight[None]
    image[:, inside] = np.clip(shaded[:, inside], 0.0, 1.0)


def _shape(rng: np.random.Generator, image: np.ndarray) -> None:
    size = image.shape[-1]
    xx, yy = _coords(size)
    cx, cy = rng.uniform(0.2, 0.8, size=2)
    half = rng.uniform(0.08, 0.22)
    if rng.random() < 0.5:
        mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    else:
        mask = (yy - cy >= -half) & (np.abs(xx - cx) <= (yy - cy + half) / 2)
        mask &= yy - cy <= half
    image[:, mask] = rng.uniform(0.0, 1.0, size=3)[:, None]


def procedural_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Return ``count`` RGB images of ``size`` x ``size`` in [0, 1], shape (N, 3, H, W).

    Each image is a gradient background with one to three spheres or shapes on it.
    The same ``(count, size, seed)`` always gives the same tensor.
    """
    if count <= 0 or size <= 0:
        raise ValueError(f"count and size must be positive, got {count} and {size}")
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        image = _background(rng, size)
        for _ in range(int(rng.integers(1, 4))):
            (_sphere if rng.random() < 0.6 else _shape)(rng, image)
        images[i] = image
    return torch.from_numpy(images)
