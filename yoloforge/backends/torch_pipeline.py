"""End-to-end stages of the PyTorch engines, run where the engine runs.

On a GPU the encoded images go in and only the kept boxes come back: JPEG decoding by nvJPEG
(where torchvision is installed), letterbox or stretch, normalization and layout on the device, and
batched class-aware NMS on the device, with one small copy of the results to the host. The same
code runs on the CPU, where the tests compare it with the host pipeline (images.resize_to_input,
detections.decode).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from yoloforge.detections import Boxes
from yoloforge.images import LETTERBOX_FILL, decode_rgb, input_placement

if TYPE_CHECKING:
    import torch

# Candidates per image that the device NMS considers, the highest-scoring: its suppression
# matrix is this squared per image. The host decode takes up to 10,000; both keep at most 300 boxes.
DEVICE_NMS_CANDIDATES = 1024
# Box and candidate counts are rounded up to a power of two from this, so that only a few sizes
# occur: on a GPU each size is a CUDA graph, captured on first use.
SMALLEST_NMS_SIZE = 64
# Suppression passes between two reads of whether `keep` has settled (see BatchedNms).
CONVERGENCE_PASSES = 4
JPEG_MAGIC = b"\xff\xd8\xff"


def decode_images(encoded: Sequence[bytes], device: torch.device, pool: Executor) -> list[Any]:
    """Encoded images -> RGB images: [3, H, W] uint8 tensors on the GPU when every image is a
    JPEG and torchvision's nvJPEG decoder is available, else [H, W, 3] uint8 arrays decoded on
    the host by `pool`'s threads."""
    if device.type == "cuda" and all(data.startswith(JPEG_MAGIC) for data in encoded):
        try:
            import torch
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError:
            pass
        else:
            data = [torch.frombuffer(bytearray(image), dtype=torch.uint8) for image in encoded]
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    return list(pool.map(decode_rgb, encoded))


def resize_batch(
    images: Sequence[Any],
    width: int,
    height: int,
    letterbox: bool,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool = False,
) -> torch.Tensor:
    """RGB uint8 images ([H, W, 3] arrays or [3, H, W] tensors) -> the engine's input batch
    [N, 3, height, width] in [0, 1], as images.resize_to_input makes it: letterboxed (aspect
    kept, mid-gray padding) or stretched, antialiased bilinear resize rounded to uint8 (as
    Pillow's)."""
    import torch
    import torch.nn.functional as F

    batch = torch.full((len(images), 3, height, width), LETTERBOX_FILL, device=device, dtype=torch.float32)
    # Images of one size share one resize call: kernel launches, not arithmetic, are what a
    # batch of small resizes costs on a GPU.
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(images):
        size = image.shape[:2] if isinstance(image, np.ndarray) else tuple(image.shape[1:])
        by_size.setdefault(size, []).append(index)
    for (source_h, source_w), indices in by_size.items():
        if isinstance(images[indices[0]], np.ndarray):
            group = torch.from_numpy(np.stack([images[index] for index in indices]))
            if device.type == "cuda":
                group = group.pin_memory()
            group = group.to(device, non_blocking=True).permute(0, 3, 1, 2)
        else:
            group = torch.stack([images[index] for index in indices])
        new_w, new_h, left, top = input_placement(source_w, source_h, width, height, letterbox)
        resized = F.interpolate(
            group.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        resized = resized.round_().clamp_(0, 255).div_(255)
        # One copy per image, not an index tensor: making one from host memory waits on the
        # device, and behind a batch's convolutions that wait is what stretched a GPU pipeline.
        for position, index in enumerate(indices):
            batch[index, :, top : top + new_h, left : left + new_w] = resized[position]
    batch = batch.to(dtype)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


class BatchedNms:
    """Class-aware NMS of a whole batch on the rows' device: rows [N, boxes, 5 + classes] ->
    per image the boxes that detections.decode finds.

    Greedy NMS keeps candidate j (in descending score) unless a kept, higher-scoring candidate
    of its class overlaps it. Instead of one candidate at a time, every image's whole
    suppression matrix is built at once and `keep` is iterated to its fixed point: each pass
    settles at least the next candidate in order, and a pass past the fixed point changes
    nothing, so the result is exactly greedy NMS.

    Two stages: the best boxes and the counts that size the candidate set (_top_boxes), then
    the suppression (_suppress). The host waits on the device after each: for the counts, then
    for the results (and whether CONVERGENCE_PASSES passes settled `keep`, as they usually do).
    With `cuda_graphs`, each stage is a CUDA graph per size, a few launches instead of a couple of
    hundred. On a GPU with Triton the suppression matrix is one kernel (torch_triton), and the
    counts are taken over the best boxes only, not every (box, class) pair.
    """

    def __init__(
        self,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_boxes: int = 300,
        candidates: int = DEVICE_NMS_CANDIDATES,
        cuda_graphs: bool = False,
    ) -> None:
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.max_boxes = max_boxes
        self.candidates = candidates
        self.cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[Any, ...], tuple[Any, torch.Tensor | None, Any]] = {}

    def __call__(self, detections: torch.Tensor) -> list[Boxes]:
        shape = (tuple(detections.shape), detections.dtype)
        first_of_shape = self.cuda_graphs and shape not in self._graphs
        top = self._staged(shape, self._top_boxes, detections)
        classes_count = detections.shape[2] - 5
        if first_of_shape:
            # Every suppression size this shape can need, captured now: a size first met later
            # (an image with more detections than any before) would otherwise pay its capture, and
            # the first its kernel compilation, inside that image's latency.
            for sizes in all_suppression_sizes(top.indices.shape[1], self.candidates, classes_count):
                self._staged((*shape, *sizes), lambda _, sizes=sizes: self._suppress(top, *sizes))
        boxes_passing, candidates_passing = top.counts.tolist()
        if not candidates_passing:
            empty = np.zeros((0, 4), dtype=np.float32)
            return [Boxes(empty, empty[:, 0], np.zeros(0, dtype=np.int64)) for _ in range(len(detections))]
        sizes = suppression_sizes(
            boxes_passing, candidates_passing, top.indices.shape[1], self.candidates, classes_count
        )
        state = self._staged((*shape, *sizes), lambda _: self._suppress(top, *sizes))
        packed = state.packed.cpu().numpy()
        if not state.settled.item():
            keep = _settle(state.suppresses, state.valid, state.keep)
            packed = _pack(state.xyxy, state.scores, state.classes, keep, self.max_boxes).cpu().numpy()
        results = []
        for image in packed:
            kept = image[image[:, 6] > 0]
            results.append(Boxes(kept[:, :4].copy(), kept[:, 4].copy(), kept[:, 5].astype(np.int64)))
        return results

    def _staged(self, key: tuple[Any, ...], stage: Callable[[Any], Any], source: Any = None) -> Any:
        """stage(source), or with cuda_graphs a CUDA graph of it for this key, captured on first
        use and replayed on the current stream. The graph reads its own copy of `source`; a
        stage without one reads the previous stage's graph outputs, which stay in place."""
        import torch

        if not self.cuda_graphs:
            return stage(source)
        if key not in self._graphs:
            static = None if source is None else source.clone()
            # Lazy initialization (cuBLAS handles, sort workspaces) must not happen in the capture.
            stage(static)
            graph = torch.cuda.CUDAGraph()
            # thread_local: the pipeline's other threads keep launching work during the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                output = stage(static)
            self._graphs[key] = (graph, static, output)
        graph, static, output = self._graphs[key]
        if static is not None:
            static.copy_(source)
        graph.replay()
        return output

    def _top_boxes(self, detections: torch.Tensor) -> _TopBoxes:
        """Each image's `candidates` best boxes, and the counts that size the suppression.

        A box's best score is its objectness times its highest class probability, exactly the
        largest of its float32 candidate scores, as the host decode computes them (rounding is
        monotone and the factors are not negative). So the boxes with a passing candidate are
        the best-scoring ones, and while no more of them pass than `candidates`, the best boxes
        hold every passing candidate: they are counted on those rows only, not on all ~10^6
        (box, class) pairs. (Where more pass, both counts reach `candidates` anyway.)
        """
        import torch

        channels = detections.shape[2]
        box_scores = detections[..., 4].float() * detections[..., 5:].amax(dim=2).float()
        indices = box_scores.topk(min(self.candidates, detections.shape[1]), dim=1).indices
        rows = detections.gather(1, indices[..., None].expand(-1, -1, channels)).float()
        passing = (rows[..., 4:5] * rows[..., 5:]) > self.score_threshold
        counts = torch.stack(
            [(box_scores > self.score_threshold).sum(dim=1).max(), passing.sum(dim=(1, 2)).max()]
        )
        return _TopBoxes(indices=indices, rows=rows, counts=counts)

    def _suppress(self, top: _TopBoxes, box_count: int, candidate_count: int) -> _Suppression:
        """NMS of `candidate_count` candidates of the `box_count` best boxes per image, with no
        host sync. A top candidate's box ranks at least as high among boxes, so `candidate_count`
        boxes hold the `candidate_count` best candidates. Sizes above the passing counts only
        add candidates that fail the threshold.
        """
        import torch

        count, _, channels = top.rows.shape
        classes_count = channels - 5
        # In ascending box order, as the host enumerates candidates (box, then class).
        order = top.indices[:, :box_count].sort(dim=1).indices
        rows = top.rows.gather(1, order[..., None].expand(-1, -1, channels))
        box_xyxy = torch.cat([rows[..., :2] - rows[..., 2:4] / 2, rows[..., :2] + rows[..., 2:4] / 2], dim=2)
        scores = (rows[..., 4:5] * rows[..., 5:]).reshape(count, -1)

        top_index = scores.topk(candidate_count, dim=1).indices
        # topk orders equal scores arbitrarily, and fp16 outputs tie often; the host takes them
        # in candidate order: sort by candidate, then stably by score.
        top_index = top_index.sort(dim=1).values
        top_scores, by_score = scores.gather(1, top_index).sort(dim=1, descending=True, stable=True)
        top_index = top_index.gather(1, by_score)
        classes = top_index % classes_count
        boxes = torch.div(top_index, classes_count, rounding_mode="floor")
        valid = top_scores > self.score_threshold
        xyxy = box_xyxy.gather(1, boxes[..., None].expand(-1, -1, 4))
        fused = _fused_matrix() if rows.is_cuda else None
        if fused is not None:
            suppresses = fused(xyxy, classes, self.iou_threshold)
        else:
            suppresses = suppression_matrix(box_xyxy, boxes, classes, self.iou_threshold)
        previous, keep = _passes(suppresses, valid, valid, CONVERGENCE_PASSES)
        return _Suppression(
            suppresses=suppresses,
            valid=valid,
            keep=keep,
            settled=(previous == keep).all(),
            xyxy=xyxy,
            scores=top_scores,
            classes=classes,
            packed=_pack(xyxy, top_scores, classes, keep, self.max_boxes),
        )


@dataclass
class _TopBoxes:
    """BatchedNms's first stage: box indices in descending box score [N, K], their rows as
    float32 [N, K, channels], and the most boxes with a passing class and the most passing
    candidates in any image [2]."""

    indices: torch.Tensor
    rows: torch.Tensor
    counts: torch.Tensor


@dataclass
class _Suppression:
    """Where BatchedNms._suppress leaves its work: the matrix and flags to go on from, if `keep`
    has not settled, and the results packed for one copy to the host ([N, k, 7]: xyxy, score,
    class, kept)."""

    suppresses: torch.Tensor
    valid: torch.Tensor
    keep: torch.Tensor
    settled: torch.Tensor
    xyxy: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor
    packed: torch.Tensor


def suppression_matrix(
    box_xyxy: torch.Tensor, boxes: torch.Tensor, classes: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Boxes [N, b, 4], and each candidate's box index [N, k] and class [N, k] -> [N, k, k]:
    1 where candidate i, if kept, removes the lower-scoring candidate j of its class (whether i
    is valid need not be asked: only valid candidates are ever kept). Float16 on a GPU (0/1
    counts are exact in it, and it multiplies fastest there), else float32.

    The IoU is taken between boxes, then gathered for the candidates: a synthetic model's boxes
    pass for tens of classes each, and the IoU's arithmetic is most of what this costs."""
    import torch

    box_count, candidate_count = box_xyxy.shape[1], boxes.shape[1]
    overlapping = _overlapping(box_xyxy, iou_threshold)
    overlapping = overlapping.gather(1, boxes[..., None].expand(-1, -1, box_count))
    overlapping = overlapping.gather(2, boxes[:, None, :].expand(-1, candidate_count, -1))
    suppresses = (overlapping & (classes[:, :, None] == classes[:, None, :])).triu_(diagonal=1)
    return suppresses.to(torch.float16 if box_xyxy.is_cuda else torch.float32)


@functools.cache
def _fused_matrix() -> Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None:
    """torch_triton.suppression_matrix, where Triton imports."""
    try:
        from yoloforge.backends.torch_triton import suppression_matrix as fused
    except ImportError:
        return None
    return fused


def _passes(
    suppresses: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, passes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`passes` suppression passes from `keep`: (keep before the last pass, keep after it).

    A pass is a matrix-vector product, which reads the matrix once, not an elementwise `&` and a
    reduction over it: at batch 32 the `&` alone was a large share of NMS's device time."""
    import torch

    previous = keep
    for _ in range(passes):
        suppressed = torch.bmm(keep.to(suppresses.dtype)[:, None, :], suppresses)[:, 0] > 0
        previous, keep = keep, valid & ~suppressed
    return previous, keep


def _settle(suppresses: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Passes from `keep` until it no longer changes (at most one per candidate)."""
    import torch

    for _ in range(0, suppresses.shape[1], CONVERGENCE_PASSES):
        previous, keep = _passes(suppresses, valid, keep, CONVERGENCE_PASSES)
        if torch.equal(previous, keep):
            break
    return keep


def _pack(
    xyxy: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, keep: torch.Tensor, max_boxes: int
) -> torch.Tensor:
    """[N, k, 7]: boxes, score, class and whether kept, the first `max_boxes` kept in score order."""
    import torch

    keep = keep & (keep.cumsum(dim=1) <= max_boxes)
    return torch.cat([xyxy, scores[..., None], classes[..., None].float(), keep[..., None].float()], 2)


def _size_for(count: int, limit: int) -> int:
    """`count` rounded up to a power of two, at least SMALLEST_NMS_SIZE, at most `limit`."""
    return min(limit, max(SMALLEST_NMS_SIZE, 1 << (count - 1).bit_length()))


def suppression_sizes(
    boxes_passing: int, candidates_passing: int, box_limit: int, candidate_limit: int, classes: int
) -> tuple[int, int]:
    """The (box, candidate) counts BatchedNms suppresses over, for a batch whose most passing
    boxes and candidates in one image are these (candidates_passing at least 1)."""
    box_count = _size_for(boxes_passing, box_limit)
    return box_count, min(_size_for(candidates_passing, candidate_limit), box_count * classes)


def all_suppression_sizes(box_limit: int, candidate_limit: int, classes: int) -> list[tuple[int, int]]:
    """Every value suppression_sizes can take with these limits, in ascending order."""

    def rounded(limit: int) -> list[int]:
        sizes, size = [], SMALLEST_NMS_SIZE
        while size < limit:
            sizes.append(size)
            size *= 2
        return [*sizes, limit]

    return sorted(
        {
            (boxes, min(candidates, boxes * classes))
            for boxes in rounded(box_limit)
            for candidates in rounded(candidate_limit)
        }
    )


def _overlapping(xyxy: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Boxes [N, k, 4] -> whether each pair's IoU exceeds the threshold [N, k, k], with one
    [N, k, k] temporary per step (not [N, k, k, 2]): the matrix is the largest thing NMS computes."""
    import torch

    x1, y1, x2, y2 = (xyxy[..., axis] for axis in range(4))
    width = (
        torch.minimum(x2[:, :, None], x2[:, None, :]) - torch.maximum(x1[:, :, None], x1[:, None, :])
    ).clamp_(min=0)
    height = (
        torch.minimum(y2[:, :, None], y2[:, None, :]) - torch.maximum(y1[:, :, None], y1[:, None, :])
    ).clamp_(min=0)
    intersection = width.mul_(height)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    union = (area[:, :, None] + area[:, None, :]).sub_(intersection)
    # The IoU itself, not intersection > threshold x union: the host decode divides, and the two
    # must round alike at the threshold. The union is never negative, and where it is zero so is
    # the intersection: 0/0 is NaN, which exceeds no threshold, as the host's IoU of 0 does not.
    return intersection.div_(union) > iou_threshold
