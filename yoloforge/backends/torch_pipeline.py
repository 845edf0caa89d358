"""End-to-end stages of the PyTorch engines, run where the engine runs.

On a GPU the encoded images go in and only the kept boxes come back: JPEG decoding by nvJPEG
(where torchvision is installed), letterbox, normalization and layout on the device, and
batched class-aware NMS on the device, with one small copy of the results to the host. The same
code runs on the CPU, where the tests compare it with the host pipeline (images.letterbox,
detections.decode).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

import numpy as np

from yoloforge.detections import Boxes
from yoloforge.images import LETTERBOX_FILL, decode_rgb, letterbox_geometry

if TYPE_CHECKING:
    import torch

# Candidates per image that the device NMS considers, the highest-scoring: its IoU matrix is
# this squared per image. The host decode takes up to 10,000; both keep at most 300 boxes.
DEVICE_NMS_CANDIDATES = 1024
# Suppression passes between two reads of whether `keep` has settled (see nms_batch).
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


def letterbox_batch(
    images: Sequence[Any],
    width: int,
    height: int,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool = False,
) -> torch.Tensor:
    """RGB uint8 images ([H, W, 3] arrays or [3, H, W] tensors) -> the engine's input batch
    [N, 3, height, width] in [0, 1], as images.letterbox makes it: aspect kept, antialiased
    bilinear resize rounded to uint8 (as Pillow's), mid-gray padding."""
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
            host = np.stack([images[index] for index in indices])
            group = torch.from_numpy(host).to(device).permute(0, 3, 1, 2)
        else:
            group = torch.stack([images[index] for index in indices])
        new_w, new_h, left, top = letterbox_geometry(source_w, source_h, width, height)
        resized = F.interpolate(
            group.float(), size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False
        )
        where = torch.tensor(indices, device=device)
        batch[where, :, top : top + new_h, left : left + new_w] = resized.round_().clamp_(0, 255).div_(255)
    batch = batch.to(dtype)
    return batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def nms_batch(
    detections: torch.Tensor,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_boxes: int = 300,
    candidates: int = DEVICE_NMS_CANDIDATES,
) -> list[Boxes]:
    """Rows [N, boxes, 5 + classes] -> per image boxes after class-aware NMS, as
    detections.decode finds them, computed for the whole batch on the rows' device.

    Greedy NMS keeps candidate j (in descending score) unless a kept, higher-scoring candidate
    of its class overlaps it. Instead of one candidate at a time, every image's whole
    suppression matrix is built at once and `keep` is iterated to its fixed point: each pass
    settles at least the next candidate in order, and a pass past the fixed point changes
    nothing, so the result is exactly greedy NMS.

    The host waits on the device to size the candidate set, for the results, and once every
    CONVERGENCE_PASSES passes to read whether `keep` has settled, rather than every pass: each
    read stalls the host until the device has caught up (two passes settled the synthetic
    yolov3 batches checked).
    """
    import torch

    count, _, channels = detections.shape
    classes_count = channels - 5
    # Scores are float32 products, as the host decode computes them. Only candidates over the
    # threshold can be kept, and a trained detector has tens of them per image among ~10^6
    # (box, class) pairs: narrow down to the boxes with a passing class, then to the candidates
    # of those, sized for the image with the most. A top candidate's box ranks at least as high
    # among boxes, so `candidates` boxes hold the `candidates` best candidates.
    class_scores = detections[..., 4:5].float() * detections[..., 5:].float()
    passing = class_scores > score_threshold
    sizes = torch.stack([passing.any(dim=2).sum(dim=1).max(), passing.sum(dim=(1, 2)).max()])
    boxes_passing, candidates_passing = sizes.tolist()
    del passing
    box_order = class_scores.amax(dim=2).topk(max(1, min(candidates, boxes_passing)), dim=1).indices
    # In ascending box order, as the host enumerates candidates (box, then class).
    box_order = box_order.sort(dim=1).values
    xywh = detections[..., :4].gather(1, box_order[..., None].expand(-1, -1, 4)).float()
    box_xyxy = torch.cat([xywh[..., :2] - xywh[..., 2:] / 2, xywh[..., :2] + xywh[..., 2:] / 2], dim=2)
    scores = class_scores.gather(1, box_order[..., None].expand(-1, -1, classes_count)).reshape(count, -1)
    del class_scores

    top_index = scores.topk(max(1, min(candidates, candidates_passing)), dim=1).indices
    # topk orders equal scores arbitrarily, and fp16 outputs tie often; the host takes them in
    # candidate order: sort by candidate, then stably by score.
    top_index = top_index.sort(dim=1).values
    top_scores, by_score = scores.gather(1, top_index).sort(dim=1, descending=True, stable=True)
    top_index = top_index.gather(1, by_score)
    classes = top_index % classes_count
    xyxy = box_xyxy.gather(
        1, torch.div(top_index, classes_count, rounding_mode="floor")[..., None].expand(-1, -1, 4)
    )
    valid = top_scores > score_threshold
    # suppresses[b, i, j]: candidate i, if kept, removes the lower-scoring candidate j of its
    # class. (Whether i is valid need not be asked: only valid candidates are ever kept.)
    suppresses = (_iou(xyxy) > iou_threshold) & (classes[:, :, None] == classes[:, None, :])
    # A pass is a matrix-vector product, which reads the matrix once, not an elementwise `&` and
    # a reduction over it: in a profile on an H200 the `&` alone took 0.2 ms a pass over a
    # 32 x 1,024 x 1,024 boolean matrix.
    counting = torch.float16 if detections.is_cuda else torch.float32
    suppresses = suppresses.triu_(diagonal=1).to(counting)
    keep = valid
    for _ in range(0, suppresses.shape[1], CONVERGENCE_PASSES):
        for _ in range(CONVERGENCE_PASSES):
            suppressed = torch.bmm(keep.to(counting)[:, None, :], suppresses)[:, 0] > 0
            previous, keep = keep, valid & ~suppressed
        if torch.equal(previous, keep):
            break
    keep &= keep.cumsum(dim=1) <= max_boxes

    # One copy to the host for the whole batch: boxes, score, class and the keep flag.
    packed = torch.cat([xyxy, top_scores[..., None], classes[..., None].float(), keep[..., None].float()], 2)
    packed = packed.cpu().numpy()
    results = []
    for image in packed:
        kept = image[image[:, 6] > 0]
        results.append(Boxes(kept[:, :4].copy(), kept[:, 4].copy(), kept[:, 5].astype(np.int64)))
    return results


def _iou(xyxy: torch.Tensor) -> torch.Tensor:
    """Boxes [N, k, 4] -> their pairwise IoU [N, k, k], one [N, k, k] temporary per step
    (not [N, k, k, 2]): the matrix is the largest thing NMS computes."""
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
    # must round alike at the threshold.
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0)
