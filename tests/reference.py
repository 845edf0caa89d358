"""Our ONNX through ONNX Runtime against OpenCV DNN's own Darknet reader on the same input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime

from yoloforge.backends.opencv_darknet import cfg_without_score_threshold

TOLERANCE = 1e-3  # FP32 summation order differs; conversion errors are orders of magnitude larger


def onnx_detections(onnx_path: Path, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})[0]


def opencv_outputs(cfg: Path, weights: Path, images: np.ndarray) -> np.ndarray:
    """OpenCV's rows (x, y, w, h, objectness, objectness x class score), heads concatenated."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setInput(images)
    outputs = net.forward(net.getUnconnectedOutLayersNames())
    return np.concatenate([o.reshape(len(images), -1, o.shape[-1]) for o in outputs], axis=1)


def assert_matches_opencv(cfg: Path, weights: Path, onnx_path: Path, images: np.ndarray, tmp_path: Path):
    """Every box of every image agrees within TOLERANCE, boxes and all class scores included.

    OpenCV multiplies class scores by objectness and zeroes those under the [yolo] `thresh`;
    the comparison runs on a copy of the cfg with thresh=0 so no score is hidden, and once with
    the cfg as written, where a zeroed score must be one ours also puts under the threshold.
    """
    ours = onnx_detections(onnx_path, images)
    ours_scores = ours[..., 5:] * ours[..., 4:5]

    open_cfg = tmp_path / f"{cfg.stem}-thresh0.cfg"
    open_cfg.write_text(cfg_without_score_threshold(cfg.read_text()))
    reference = opencv_outputs(open_cfg, weights, images)
    assert reference.shape == ours.shape
    assert np.isfinite(ours).all()
    box_error = np.abs(reference[..., :5] - ours[..., :5]).max()
    score_error = np.abs(reference[..., 5:] - ours_scores).max()
    assert box_error < TOLERANCE, f"boxes/objectness differ by {box_error}"
    assert score_error < TOLERANCE, f"class scores differ by {score_error}"

    thresholded = opencv_outputs(cfg, weights, images)
    kept = thresholded[..., 5:] > 0
    assert np.abs(thresholded[..., 5:][kept] - ours_scores[kept]).max(initial=0) < TOLERANCE
    assert (ours_scores[~kept] < 0.2 + TOLERANCE).all()  # OpenCV's default thresh is 0.2
    return box_error, score_error
