"""Image data from a folder (PNG/JPEG through Pillow), and sample grids written as PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from trainables.data import procedural_images

EXTENSIONS = (".png", ".jpg", ".jpeg")


def folder_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as an image folder, or None (checked before training starts)."""
    folder = Path(path)
    if not folder.is_dir():
        return f"image folder {path!r} does not exist"
    if not any(p.suffix.lower() in EXTENSIONS for p in folder.iterdir()):
        return f"image folder {path!r} has no PNG or JPEG images"
    return None


def load_image_folder(path: str, size: int, limit: int | None = None) -> torch.Tensor:
    """Load the folder's images (sorted by name), center-cropped and resized to ``size``.

    Returns a float tensor (N, 3, size, size) in [0, 1]. Raises ValueError with one line
    naming the folder or the file that cannot be used.
    """
    problem = folder_problem(path)
    if problem:
        raise ValueError(problem)
    files = sorted(p for p in Path(path).iterdir() if p.suffix.lower() in EXTENSIONS)[:limit]
    images = np.empty((len(files), 3, size, size), dtype=np.float32)
    for i, file in enumerate(files):
        try:
            with Image.open(file) as image:
                rgb = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"cannot read image {str(file)!r}: {exc}") from None
        side = min(rgb.size)
        left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        images[i] = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy(images)


def dataset(data_dir: str, count: int, size: int, seed: int) -> torch.Tensor:
    """``count`` images: procedural ones when ``data_dir`` is empty, else from the folder."""
    if not data_dir:
        return procedural_images(count, size, seed)
    return load_image_folder(data_dir, size, limit=count)


def validation_images(config: Any, train_count: int) -> torch.Tensor:
    """Validation images: procedural with another seed, or the folder's images after ``train_count``.

    ``config`` has ``data_dir``, ``train_images``, ``val_images``, ``image_size`` and ``seed``.
    """
    if not config.data_dir:
        return dataset("", config.val_images, config.image_size, config.seed + 10_000)
    everything = dataset(config.data_dir, config.train_images + config.val_images, config.image_size, config.seed)
    return everything[train_count:] if len(everything) > train_count else everything[-config.val_images :]


def make_grid(rows: list[torch.Tensor], pad: int = 2) -> torch.Tensor:
    """Lay out rows of images (each (N, 3, H, W), same H and W) as one (3, H', W') image."""
    rows = [r.detach().float().clamp(0, 1).cpu() for r in rows]
    n = max(len(r) for r in rows)
    h, w = rows[0].shape[-2:]
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            image = torch.nn.functional.interpolate(image[None], size=(h, w), mode="nearest")[0]
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = image
    return grid


def as_image(image: Any) -> torch.Tensor:
    """A trainer's image as one ``(3, H, W)`` tensor.

    It takes ``(C, H, W)`` (1 or 3 channels), ``(H, W)``, or a batch ``(N, C, H, W)``, tiled in a row.
    """
    tensor = image.detach().float().cpu() if torch.is_tensor(image) else torch.as_tensor(image, dtype=torch.float32)
    if tensor.dim() == 4 and tensor.shape[1] in (1, 3):
        return make_grid([tensor])
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        shape = tuple(tensor.shape)
        raise ValueError(f"an image is (C, H, W) with 1 or 3 channels, (H, W) or (N, C, H, W); got shape {shape}")
    return tensor.expand(3, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def save_png(grid: torch.Tensor, path: str | Path) -> Path:
    """Write a (3, H, W) image in [0, 1] as PNG."""
    array = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    out = Path(path)
    Image.fromarray(array).save(out)
    return out
