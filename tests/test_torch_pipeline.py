"""The PyTorch engines' own end-to-end stages (letterbox, batched NMS) against the host pipeline."""

import io

import numpy as np
import pytest
from PIL import Image

from yoloforge.detections import decode
from yoloforge.images import _bundled_photo, generated_scene, letterbox

torch = pytest.importorskip("torch")
from yoloforge.backends.torch_pipeline import decode_images, letterbox_batch, nms_batch  # noqa: E402


def _clustered_detections(rng: np.random.Generator, boxes: int, classes: int) -> np.ndarray:
    """Rows [boxes, 5 + classes] in clusters of overlapping boxes, as a detector outputs them."""
    centres = rng.uniform(0.1, 0.9, (boxes // 8 + 1, 2))
    rows = np.zeros((boxes, 5 + classes), dtype=np.float32)
    rows[:, :2] = centres[rng.integers(0, len(centres), boxes)] + rng.normal(0, 0.02, (boxes, 2))
    rows[:, 2:4] = rng.uniform(0.05, 0.3, (boxes, 2))
    rows[:, 4] = rng.uniform(0, 1, boxes)
    rows[:, 5:] = rng.uniform(0, 1, (boxes, classes)) ** 4  # most class scores small
    return rows


@pytest.mark.parametrize("max_boxes", [300, 5])
def test_batched_nms_keeps_exactly_what_the_host_decode_keeps(max_boxes):
    rng = np.random.default_rng(3)
    batch = np.stack([_clustered_detections(rng, 400, 6) for _ in range(3)])
    # A fourth image with nothing over the threshold.
    batch = np.concatenate([batch, np.zeros_like(batch[:1])])
    device_boxes = nms_batch(torch.from_numpy(batch), max_boxes=max_boxes)
    kept = 0
    for rows, found in zip(batch, device_boxes, strict=True):
        expected = decode(rows, max_boxes=max_boxes)
        assert len(found) == len(expected)
        np.testing.assert_array_equal(found.classes, expected.classes)
        np.testing.assert_allclose(found.scores, expected.scores, rtol=1e-6)
        np.testing.assert_allclose(found.xyxy, expected.xyxy, atol=1e-6)
        kept += len(found)
    # The case is not trivial: NMS removed candidates, and something was kept.
    candidates = int(((batch[..., 4:5] * batch[..., 5:]) > 0.25).sum())
    assert 0 < kept < candidates


def test_device_letterbox_matches_the_host_letterbox():
    images = [_bundled_photo("astronaut"), _bundled_photo("coffee"), generated_scene(7, 300, 500)]
    for width, height in ((416, 416), (320, 256)):
        expected = np.stack([letterbox(image, width, height) for image in images])
        found = letterbox_batch(images, width, height, torch.device("cpu"), torch.float32).numpy()
        assert found.shape == expected.shape
        # Pillow and torch antialias alike, up to rounding: a pixel may differ by a level or two.
        assert np.abs(found - expected).max() <= 2 / 255 + 1e-6
        assert np.abs(found - expected).mean() < 0.2 / 255


def test_device_letterbox_makes_the_requested_precision_and_layout():
    found = letterbox_batch(
        [_bundled_photo("chelsea")], 64, 64, torch.device("cpu"), torch.bfloat16, channels_last=True
    )
    assert found.dtype == torch.bfloat16
    assert found.is_contiguous(memory_format=torch.channels_last)


def test_host_decoding_fallback_reads_every_image(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    encoded = []
    for image_format in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(_bundled_photo("coffee")).save(buffer, format=image_format)
        encoded.append(buffer.getvalue())
    with ThreadPoolExecutor(2) as pool:
        images = decode_images(encoded, torch.device("cpu"), pool)
    assert [image.shape for image in images] == [_bundled_photo("coffee").shape] * 2
