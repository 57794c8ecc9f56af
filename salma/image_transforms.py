"""Image preprocessing for both branches: InternVL's dynamic 448-px tiling and SAM-2's square resize.

Both encoders were trained on ImageNet-normalised inputs (InternVL's ``IMAGENET_MEAN/STD``;
SAM-2's ``SAM2Transforms``), so one normalisation serves both.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tile_grid(width: int, height: int, *, tile_size: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """(columns, rows) of the tiling whose aspect ratio is closest to the image's.

    InternVL's rule: among all grids with ``min_tiles <= cols*rows <= max_tiles`` (ordered by tile
    count), take the closest aspect ratio; on a tie, prefer the larger grid when the image has more
    than half the pixels that grid would hold.
    """
    aspect = width / height
    grids = sorted(
        {
            (c, r)
            for n in range(min_tiles, max_tiles + 1)
            for c in range(1, n + 1)
            for r in range(1, n + 1)
            if min_tiles <= c * r <= max_tiles
        },
        key=lambda g: g[0] * g[1],
    )
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile_size * tile_size * cols * rows:
            best = (cols, rows)
    return best


def dynamic_tiles(
    image: np.ndarray, *, tile_size: int, min_tiles: int = 1, max_tiles: int = 12, use_thumbnail: bool = True
) -> list[np.ndarray]:
    """Split an (H, W, 3) uint8 image into ``tile_size`` squares (row-major), plus a thumbnail of
    the whole image when there is more than one tile."""
    height, width = image.shape[:2]
    cols, rows = tile_grid(width, height, tile_size=tile_size, min_tiles=min_tiles, max_tiles=max_tiles)
    pil = Image.fromarray(image)
    resized = np.asarray(pil.resize((tile_size * cols, tile_size * rows), Image.BICUBIC))
    tiles = [
        resized[r * tile_size : (r + 1) * tile_size, c * tile_size : (c + 1) * tile_size]
        for r in range(rows)
        for c in range(cols)
    ]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(np.asarray(pil.resize((tile_size, tile_size), Image.BICUBIC)))
    return tiles


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (size, size, 3) without keeping the aspect ratio (as SAM-2 does)."""
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def to_normalized_tensor(images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, 3, H, W) float32, ImageNet-normalised."""
    array = np.stack(list(images)) if isinstance(images, list) else images
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float().div_(255.0)  # (N, 3, H, W)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def resize_masks(masks: np.ndarray, size: int) -> np.ndarray:
    """(N, H, W) bool → (N, size, size) bool, nearest neighbour (keeps masks binary)."""
    if masks.shape[0] == 0:
        return np.zeros((0, size, size), dtype=bool)
    t = torch.from_numpy(masks.astype(np.uint8))[:, None].float()
    return F.interpolate(t, size=(size, size), mode="nearest")[:, 0].bool().numpy()
