"""The PyTorch engines' own end-to-end stages (letterbox, batched NMS) against the host pipeline."""

import io

import numpy as np
import pytest
from PIL import Image

from yoloforge.detections import decode
from yoloforge.images import _bundled_photo, generated_scene, resize_to_input

torch = pytest.importorskip("torch")
from yoloforge.backends.torch_pipeline import (  # noqa: E402
    CONVERGENCE_PASSES,
    BatchedNms,
    all_suppression_sizes,
    decode_images,
    resize_batch,
    suppression_matrix,
    suppression_sizes,
)


def _clustered_detections(rng: np.random.Generator, boxes: int, classes: int) -> np.ndarray:
    """Rows [boxes, 5 + classes] in clusters of overlapping boxes, as a detector outputs them."""
    centres = rng.uniform(0.1, 0.9, (boxes // 8 + 1, 2))
    rows = np.zeros((boxes, 5 + classes), dtype=np.float32)
    rows[:, :2] = centres[rng.integers(0, len(centres), boxes)] + rng.normal(0, 0.02, (boxes, 2))
    rows[:, 2:4] = rng.uniform(0.05, 0.3, (boxes, 2))
    rows[:, 4] = rng.uniform(0, 1, boxes)
    rows[:, 5:] = rng.uniform(0, 1, (boxes, classes)) ** 4  # most class scores small
    return rows


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("max_boxes", "dtype"), [(300, np.float32), (5, np.float32), (300, np.float16)])
def test_batched_nms_keeps_exactly_what_the_host_decode_keeps(max_boxes, dtype, device):
    rng = np.random.default_rng(3)
    batch = np.stack([_clustered_detections(rng, 400, 6) for _ in range(3)]).astype(dtype)
    # A fourth image with nothing over the threshold.
    batch = np.concatenate([batch, np.zeros_like(batch[:1])])
    if dtype == np.float16:
        # Half-precision outputs saturate (objectness and class scores of exactly 1) and so give
        # equal scores, which greedy NMS must take in the host's order.
        batch[..., 4:] = np.minimum(1, np.round(batch[..., 4:] * 1.5 * 16) / 16)
        scores = batch[..., 4:5].astype(np.float32) * batch[..., 5:].astype(np.float32)
        passing = scores[scores > 0.25]
        assert np.unique(passing).size < passing.size
    device_boxes = BatchedNms(max_boxes=max_boxes)(torch.from_numpy(batch).to(device))
    batch = batch.astype(np.float32)
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


def test_batched_nms_follows_a_suppression_chain_longer_than_one_round_of_passes():
    # Boxes in a row, each overlapping its neighbours (IoU 0.54) but not the next ones (0.25), in
    # descending score: greedy NMS keeps every other box, and each pass settles only about one
    # more, so many more than CONVERGENCE_PASSES passes are needed.
    length = 6 * CONVERGENCE_PASSES
    rows = np.zeros((1, length + 30, 6), dtype=np.float32)
    rows[0, :length, 0] = 0.1 + 0.03 * np.arange(length)
    rows[0, :length, 1:4] = [0.5, 0.1, 0.1]
    rows[0, :length, 4] = 1
    rows[0, :length, 5] = np.linspace(0.9, 0.5, length)
    found = BatchedNms()(torch.from_numpy(rows))[0]
    expected = decode(rows[0])
    assert len(expected) == length // 2
    np.testing.assert_array_equal(found.classes, expected.classes)
    np.testing.assert_allclose(found.xyxy, expected.xyxy, atol=1e-6)


@CUDA
def test_batched_nms_in_cuda_graphs_keeps_what_it_keeps_without_them():
    rng = np.random.default_rng(5)
    batches = [np.stack([_clustered_detections(rng, 2000, 20) for _ in range(4)]) for _ in range(3)]
    graphs, eager = BatchedNms(cuda_graphs=True), BatchedNms()
    # The last batch is the first again: it replays the graph that one captured.
    for batch in [*batches, batches[0]]:
        rows = torch.from_numpy(batch).cuda().half()
        for found, expected in zip(graphs(rows), eager(rows), strict=True):
            np.testing.assert_array_equal(found.classes, expected.classes)
            np.testing.assert_array_equal(found.xyxy, expected.xyxy)
    assert graphs._graphs


@pytest.mark.parametrize(
    ("box_limit", "candidate_limit", "classes"), [(1024, 1024, 80), (240, 1024, 1), (100, 64, 3)]
)
def test_every_suppression_size_a_batch_can_need_is_captured_up_front(box_limit, candidate_limit, classes):
    def counts(limit: int) -> list[int]:
        """Every count where the rounding can change: each power of two, its neighbours, the limit."""
        edges = {value for power in range(12) for value in (2**power - 1, 2**power, 2**power + 1)}
        return sorted(value for value in edges | {limit} if 1 <= value <= limit)

    everything = all_suppression_sizes(box_limit, candidate_limit, classes)
    needed = {
        suppression_sizes(boxes, candidates, box_limit, candidate_limit, classes)
        for boxes in counts(box_limit)
        for candidates in counts(min(candidate_limit, boxes * classes))
    }
    assert needed == set(everything) and everything == sorted(everything)


@CUDA
def test_a_batch_with_more_detections_than_any_before_captures_nothing_new():
    rng = np.random.default_rng(6)
    many = np.stack([_clustered_detections(rng, 2000, 20) for _ in range(2)])
    few = many.copy()
    few[..., 4] *= 0.3  # the same boxes, a few of them passing
    nms, eager = BatchedNms(cuda_graphs=True), BatchedNms()
    nms(torch.from_numpy(few).cuda())
    captured = len(nms._graphs)
    rows = torch.from_numpy(many).cuda()
    for found, expected in zip(nms(rows), eager(rows), strict=True):
        np.testing.assert_array_equal(found.xyxy, expected.xyxy)
    assert len(nms._graphs) == captured


@CUDA
def test_fused_suppression_matrix_is_the_tensor_one_bit_for_bit():
    pytest.importorskip("triton")
    from yoloforge.backends.torch_triton import suppression_matrix as fused

    rng = np.random.default_rng(11)
    rows = np.stack([_clustered_detections(rng, 600, 4) for _ in range(3)])
    rows[0, :20, 2:4] = 0  # boxes of no area: 0/0 IoUs
    rows[1, 1] = rows[1, 0]  # a box twice
    xy, wh = torch.from_numpy(rows[..., :2]).cuda(), torch.from_numpy(rows[..., 2:4]).cuda()
    box_xyxy = torch.cat([xy - wh / 2, xy + wh / 2], dim=2)
    # Candidates not a multiple of the kernel's block, many boxes for several classes each.
    boxes = torch.from_numpy(rng.integers(0, 600, (3, 700))).cuda()
    classes = torch.from_numpy(rng.integers(0, 4, (3, 700))).cuda()
    for threshold in (0.45, 0.5, 0.0):
        expected = suppression_matrix(box_xyxy, boxes, classes, threshold)
        found = fused(box_xyxy.gather(1, boxes[..., None].expand(-1, -1, 4)), classes, threshold)
        assert 0 < int(expected.sum()) < expected.numel()
        assert torch.equal(found, expected)


@pytest.mark.parametrize("letterbox", [True, False], ids=["letterbox", "stretch"])
def test_device_resize_matches_the_host_resize(letterbox):
    # Two images share a size (one resize call for both), between images of other sizes.
    images = [
        generated_scene(7, 300, 500),
        _bundled_photo("astronaut"),
        generated_scene(8, 300, 500),
        _bundled_photo("coffee"),
    ]
    for width, height in ((416, 416), (320, 256)):
        expected = np.stack([resize_to_input(image, width, height, letterbox) for image in images])
        found = resize_batch(images, width, height, letterbox, torch.device("cpu"), torch.float32).numpy()
        assert found.shape == expected.shape
        # Pillow and torch antialias alike, up to rounding: a pixel may differ by a level or two.
        assert np.abs(found - expected).max() <= 2 / 255 + 1e-6
        assert np.abs(found - expected).mean() < 0.2 / 255
        # Images decoded on the device come as [3, H, W] tensors; they resize the same.
        tensors = [torch.from_numpy(image).permute(2, 0, 1) for image in images]
        np.testing.assert_array_equal(
            resize_batch(tensors, width, height, letterbox, torch.device("cpu"), torch.float32).numpy(), found
        )


def test_batched_nms_of_a_batch_with_nothing_over_the_threshold_keeps_nothing():
    rows = torch.full((2, 50, 9), 0.1)
    assert [len(boxes) for boxes in BatchedNms()(rows)] == [0, 0]


def test_device_resize_makes_the_requested_precision_and_layout():
    found = resize_batch(
        [_bundled_photo("chelsea")], 64, 64, True, torch.device("cpu"), torch.bfloat16, channels_last=True
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
