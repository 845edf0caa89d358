"""Image sources for offline use, image loading, and the preprocessing every engine shares."""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from yoloforge.errors import YoloforgeError

# scikit-image's bundled photos with everyday objects, by loader name.
BUNDLED_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "camera")
LETTERBOX_FILL = 0.5  # Darknet pads letterboxed images with mid-gray
LETTER_BOX_KEY = "letter_box"  # the ONNX metadata's record of Darknet's [net] letter_box


def _bundled_photo(name: str) -> np.ndarray:
    from skimage import data

    image = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return image[..., :3].astype(np.uint8)


@functools.lru_cache(maxsize=len(BUNDLED_PHOTOS))
def _bundled_tile(name: str, width: int, height: int) -> Image.Image:
    return Image.fromarray(_bundled_photo(name)).resize((width, height), Image.Resampling.BILINEAR)


def photo_mosaic(seed: int, width: int = 640, height: int = 480) -> np.ndarray:
    """Four of the bundled photos, each mirrored or not, in a 2x2 grid: real objects, several to
    an image and at other scales than in the photos alone, for a model with real weights to find
    (a generated scene holds none, so agreement figures on those rest on no boxes)."""
    rng = np.random.default_rng(seed)
    canvas = Image.new("RGB", (width, height))
    tile_width, tile_height = width // 2, height // 2
    for position, index in enumerate(rng.choice(len(BUNDLED_PHOTOS), 4)):
        tile = _bundled_tile(BUNDLED_PHOTOS[index], tile_width, tile_height)
        if rng.random() < 0.5:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        canvas.paste(tile, ((position % 2) * tile_width, (position // 2) * tile_height))
    return np.asarray(canvas)


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
        # Each shape is drawn within its bounding box only: a calibration set can be hundreds.
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


def letterboxes(metadata: Mapping[str, str], source: str | os.PathLike | None = None) -> bool:
    """Whether a model's images are letterboxed (Darknet's [net] letter_box=1) rather than
    stretched to the input size (letter_box=0), from the ONNX file's metadata; files converted
    before the converter recorded it letterbox."""
    value = metadata.get(LETTER_BOX_KEY, "1")
    if value not in ("0", "1"):
        raise YoloforgeError(f"{LETTER_BOX_KEY} is {value!r} in the model's metadata, not 0 or 1", source)
    return value == "1"


def input_placement(
    source_w: int, source_h: int, width: int, height: int, letterbox: bool
) -> tuple[int, int, int, int]:
    """Where `resize_to_input` puts a source_w x source_h image in the width x height input:
    (new_w, new_h, left, top). Letterboxed, it keeps its aspect ratio and is centred; stretched,
    it fills the input."""
    if not letterbox:
        return width, height, 0, 0
    scale = min(width / source_w, height / source_h)
    new_w, new_h = max(1, round(source_w * scale)), max(1, round(source_h * scale))
    return new_w, new_h, (width - new_w) // 2, (height - new_h) // 2


def resize_to_input(image: np.ndarray, width: int, height: int, letterbox: bool) -> np.ndarray:
    """RGB uint8 HxWx3 -> float32 3xHxW in [0, 1]: letterboxed (aspect kept, padded with
    mid-gray) or stretched, as `input_placement` places it."""
    source_h, source_w = image.shape[:2]
    new_w, new_h, left, top = input_placement(source_w, source_h, width, height, letterbox)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    canvas = np.full((height, width, 3), LETTERBOX_FILL, dtype=np.float32)
    canvas[top : top + new_h, left : left + new_w] = resized.astype(np.float32) / 255
    return np.ascontiguousarray(canvas.transpose(2, 0, 1))


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """resize_to_input, letterboxed: for images prepared without a model (calibrating synthetic
    weights, the tests' batches)."""
    return resize_to_input(image, width, height, letterbox=True)


def preprocessed_batches(
    paths: list[Path], width: int, height: int, batch: int, count: int, letterbox: bool
) -> list[np.ndarray]:
    """`count` distinct batches cycling through the images, so timing never reuses one buffer."""
    images = [resize_to_input(load_rgb(path), width, height, letterbox) for path in paths[: batch * count]]
    return [
        np.stack([images[(start * batch + i) % len(images)] for i in range(batch)]) for start in range(count)
    ]
