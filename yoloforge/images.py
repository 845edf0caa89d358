"""Image sources for offline use, image loading, and the preprocessing every engine shares."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from yoloforge.errors import YoloforgeError

# scikit-image's bundled photos with everyday objects, by loader name.
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera")
LETTERBOX_FILL = 0.5  # Darknet pads letterboxed images with mid-gray


def _bundled_photo(name: str) -> np.ndarray:
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


def generated_scene(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """A deterministic image with a gradient background and solid rectangles and ellipses."""
    rng = np.random.default_rng(seed)
    xs = np.arange(width, dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)
    start, end = rng.uniform(0, 255, (2, 3))
    image = np.repeat((start + (end - start) * (xs / width)[..., None])[None], height, axis=0)
    for _ in range(rng.integers(3, 8)):
        x0, y0 = rng.uniform(0, 0.8) * width, rng.uniform(0, 0.8) * height
        w, h = rng.uniform(0.1, 0.4) * width, rng.uniform(0.1, 0.4) * height
        # Each shape is drawn within its bounding box only: the default set is 500 of these.
        rows = slice(max(0, int(np.floor(y0))), min(height, int(np.ceil(y0 + h)) + 1))
        cols = slice(max(0, int(np.floor(x0))), min(width, int(np.ceil(x0 + w)) + 1))
        x, y = xs[None, cols], ys[rows, None]
        if rng.random() < 0.5:
            mask = (x >= x0) & (x < x0 + w) & (y >= y0) & (y < y0 + h)
        else:
            mask = ((x - x0 - w / 2) / (w / 2)) ** 2 + ((y - y0 - h / 2) / (h / 2)) ** 2 <= 1
        image[rows, cols][mask] = rng.uniform(0, 255, 3)
    noise = rng.normal(0, 4, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def image_paths(directory: str | os.PathLike) -> list[Path]:
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not paths:
        raise YoloforgeError("no .png or .jpg images found", directory)
    return paths


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise YoloforgeError(f"not a readable image ({error.__class__.__name__})", path) from None


def decode_rgb(data: bytes, name: str = "image bytes") -> np.ndarray:
    """An encoded image (JPEG, PNG, anything Pillow reads) held in memory -> RGB uint8 [H, W, 3]."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise YoloforgeError(f"not a readable image ({error.__class__.__name__})", name) from None


def letterbox_geometry(source_w: int, source_h: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Where `letterbox` puts a source_w x source_h image in the input: (new_w, new_h, left, top)."""
    scale = min(width / source_w, height / source_h)
    new_w, new_h = max(1, round(source_w * scale)), max(1, round(source_h * scale))
    return new_w, new_h, (width - new_w) // 2, (height - new_h) // 2


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW in [0, 1], aspect kept, padded with mid-gray."""
    source_h, source_w = image.shape[:2]
    new_w, new_h, left, top = letterbox_geometry(source_w, source_h, width, height)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = resized.astype(np.float32) / 255
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))


def preprocessed_batches(
    paths: list[Path], width: int, height: int, batch: int, count: int
) -> list[np.ndarray]:
    """`count` distinct batches cycling through the images, so timing never reuses one buffer."""
    images = [letterbox(load_rgb(path), width, height) for path in paths[: batch * count]]
    return [
        np.stack([images[(start * batch + i) % len(images)] for i in range(batch)]) for start in range(count)
    ]
