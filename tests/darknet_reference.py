"""References for the Darknet converter: OpenCV's own Darknet reader, and Darknet's arithmetic in
NumPy (written from Darknet's C loops) for what OpenCV does not honour.

OpenCV is run one image at a time (its reader fails on enet-coco at batch 2) with Winograd
convolutions off: their rounding, amplified through a hundred layers of random weights, is
larger than the tolerance, while the direct convolution agrees with ours.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.reference import onnx_detections

TOLERANCE = 1e-3
REGION_NMS = 0.4  # OpenCV's [region] always runs its NMS at this IoU; its [yolo] reads nms_threshold


def cfg_for_comparison(text: str) -> str:
    """The cfg with every score kept: thresh=0 on each head, and no NMS on [yolo] heads."""
    text = re.sub(r"(?im)^\s*(thresh|nms_threshold)\s*=.*$", "", text)
    return re.sub(r"(?im)^\s*\[(yolo|region)\]\s*$", lambda m: f"[{m[1]}]\nthresh=0\nnms_threshold=0", text)


def opencv_rows(cfg: Path, weights: Path, images: np.ndarray) -> np.ndarray:
    """OpenCV's rows (x, y, w, h, objectness, objectness x class score), heads concatenated."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableWinograd(False)
    rows = []
    for image in images:
        net.setInput(image[None])
        outputs = net.forward(net.getUnconnectedOutLayersNames())
        rows.append(np.concatenate([o.reshape(-1, o.shape[-1]) for o in outputs]))
    return np.stack(rows)


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    low = np.maximum(box[:2] - box[2:] / 2, others[:, :2] - others[:, 2:] / 2)
    high = np.minimum(box[:2] + box[2:] / 2, others[:, :2] + others[:, 2:] / 2)
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    return inter / (np.prod(box[2:]) + np.prod(others[:, 2:], axis=1) - inter)


def _suppressed_by_nms(boxes: np.ndarray, reference: np.ndarray, ours: np.ndarray, row: int, k: int) -> bool:
    """A score OpenCV zeroed is one its NMS drops: a kept box of that class scores at least as
    high and overlaps it by more than REGION_NMS."""
    kept = np.flatnonzero(reference[:, k] >= ours[row, k] - TOLERANCE)
    kept = kept[kept != row]
    return bool(kept.size) and bool((_iou(boxes[row], boxes[kept]) > REGION_NMS - 1e-3).any())


def assert_matches_opencv(cfg: Path, weights: Path, onnx_path: Path, images: np.ndarray, tmp_path: Path):
    """Every row agrees with OpenCV within TOLERANCE: centres, objectness and every class score
    absolutely; widths and heights relative to their size where over 1 (boxes larger than the
    image, which trained anchors give at the small sizes tests run at)."""
    ours = onnx_detections(onnx_path, images)
    assert np.isfinite(ours).all()
    open_cfg = tmp_path / f"{cfg.stem}-open.cfg"
    open_cfg.write_text(cfg_for_comparison(cfg.read_text()))
    reference = opencv_rows(open_cfg, weights, images)
    assert reference.shape == ours.shape

    scale = np.ones_like(ours[..., :5])
    scale[..., 2:4] = np.maximum(1, np.abs(reference[..., 2:4]))
    box_error = (np.abs(reference[..., :5] - ours[..., :5]) / scale).max()
    assert box_error < TOLERANCE, f"boxes/objectness differ by {box_error}"

    scores = ours[..., 5:] * ours[..., 4:5]
    differ = np.abs(reference[..., 5:] - scores) >= TOLERANCE
    for image, row, k in zip(*np.nonzero(differ), strict=True):
        assert reference[image, row, 5 + k] == 0, f"class score {k} of row {row} differs"
        assert _suppressed_by_nms(ours[image, :, :4], reference[image, :, 5:], scores[image], row, k)
    return box_error


def convolution(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride_x: int, stride_y: int, pad: int):
    """Darknet's convolution (im2col_cpu_ext, one group): out[f, i, j] = sum of kernel[f, c, n, m]
    times input[c, i * stride_y + n - pad, j * stride_x + m - pad], zero outside."""
    channels, height, width = x.shape[1:]
    filters, _, size, _ = kernel.shape
    out_h = (height + 2 * pad - size) // stride_y + 1
    out_w = (width + 2 * pad - size) // stride_x + 1
    out = np.zeros((x.shape[0], filters, out_h, out_w)) + bias[None, :, None, None]
    for n in range(size):
        for m in range(size):
            rows = np.arange(out_h) * stride_y + n - pad
            cols = np.arange(out_w) * stride_x + m - pad
            valid_rows, valid_cols = (rows >= 0) & (rows < height), (cols >= 0) & (cols < width)
            patch = np.zeros((x.shape[0], channels, out_h, out_w))
            patch[:, :, valid_rows[:, None] & valid_cols[None, :]] = x[:, :, rows[valid_rows]][
                :, :, :, cols[valid_cols]
            ].reshape(x.shape[0], channels, -1)
            out += np.einsum("fc,bchw->bfhw", kernel[:, :, n, m], patch)
    return out


def maxpool(x: np.ndarray, size: int, stride_x: int, stride_y: int, padding: int) -> np.ndarray:
    """Darknet's forward_maxpool_layer: windows start at -padding/2, values outside are -inf."""
    height, width = x.shape[2:]
    out_h = (height + padding - size) // stride_y + 1
    out_w = (width + padding - size) // stride_x + 1
    out = np.full((*x.shape[:2], out_h, out_w), -np.inf)
    offset = -(padding // 2)
    for i in range(out_h):
        for j in range(out_w):
            for n in range(size):
                for m in range(size):
                    y, xx = offset + i * stride_y + n, offset + j * stride_x + m
                    if 0 <= y < height and 0 <= xx < width:
                        out[:, :, i, j] = np.maximum(out[:, :, i, j], x[:, :, y, xx])
    return out


def reorg_cpu(x: np.ndarray, w: int, h: int, c: int, stride: int) -> np.ndarray:
    """blas.c's reorg_cpu(x, w, h, c, batch, stride, forward=0, out), index for index, on the
    flat per-image buffers; w, h, c are the sizes its caller passes. The result, flat per image."""
    batch = x.shape[0]
    flat = x.reshape(batch, -1)
    out = np.empty_like(flat)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * k)
                    c2 = k % out_c
                    offset = k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out[b, in_index] = flat[b, w2 + w * stride * (h2 + h * stride * c2)]
    return out


def gaussian_yolo_rows(x: np.ndarray, anchors, classes: int, net_w: int, net_h: int, scale_x_y=1.0):
    """forward_gaussian_yolo_layer and get_gaussian_yolo_detections (center points) on the head's
    input [N, anchors * (9 + classes), H, W]: per image, rows ordered by grid row, column, anchor,
    of (x, y, w, h, Darknet's probability of each class)."""

    def logistic(v):
        return 1 / (1 + np.exp(-v))

    batch, _, height, width = x.shape
    rows = []
    for b in range(batch):
        image = []
        for j in range(height):
            for i in range(width):
                for n, (anchor_w, anchor_h) in enumerate(anchors):
                    out = x[b, n * (9 + classes) : (n + 1) * (9 + classes), j, i].astype(np.float64)
                    entries = out.copy()
                    entries[[0, 1, 2, 3, 5, 7]] = logistic(out[[0, 1, 2, 3, 5, 7]])
                    entries[8:] = logistic(out[8:])
                    entries[[0, 2]] = entries[[0, 2]] * scale_x_y - 0.5 * (scale_x_y - 1)
                    box = [
                        (i + entries[0]) / width,
                        (j + entries[2]) / height,
                        np.exp(entries[4]) * anchor_w / net_w,
                        np.exp(entries[6]) * anchor_h / net_h,
                    ]
                    uncertainty = (entries[1] + entries[3] + entries[5] + entries[7]) / 4
                    image.append([*box, *(entries[8] * entries[9:] * (1 - uncertainty))])
        rows.append(image)
    return np.array(rows)
