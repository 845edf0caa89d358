"""OpenCV DNN reading the Darknet cfg + weights itself: the unoptimized-Darknet reference.

Its engine file is a copy of the cfg with `thresh=0` in every [yolo] section, so OpenCV reports
every class score instead of zeroing those under its default threshold; the sidecar pins the
weights by path and sha256.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends.base import Backend, BuildRequest, EngineFacts, Runner
from yoloforge.device import cpu_threads
from yoloforge.errors import YoloforgeError
from yoloforge.files import sha256_file


def cfg_without_score_threshold(text: str) -> str:
    without = re.sub(r"(?im)^\s*thresh\s*=.*$", "", text)
    return re.sub(r"(?im)^\s*\[yolo\]\s*$", "[yolo]\nthresh=0", without)


def cfg_letter_box(text: str) -> bool:
    """Whether a Darknet cfg letterboxes its images: [net] letter_box read as Darknet reads it
    (whitespace dropped, the first occurrence, the integer the value starts with, 0 when absent)."""
    section = None
    for line in text.splitlines():
        line = "".join(line.split())
        if line.startswith("["):
            section = line
        elif section in ("[net]", "[network]") and line.startswith("letter_box="):
            number = re.match(r"[+-]?\d+", line.removeprefix("letter_box="))
            return bool(number and int(number.group()))
    return False


def opencv_problem(error: Exception) -> str:
    """cv2.error's message -> its kind and detail in one line: 'Parsing error: Unknown layer type:
    reorg3d', without OpenCV's source location and function."""
    message = str(error).strip().splitlines()[-1]
    found = re.search(r"\(-?\d+:([^)]*)\) (.*?)(?: in function '[^']*')?$", message)
    return f"{found[1]}: {found[2]}" if found else message


def opencv_to_detections(outputs: list[np.ndarray], batch: int) -> np.ndarray:
    """OpenCV's per-head outputs -> the `detections` contract (scores not times objectness)."""
    heads = [output.reshape(batch, -1, output.shape[-1]) for output in outputs]
    detections = np.concatenate(heads, axis=1).astype(np.float32, copy=True)
    objectness = detections[..., 4:5]
    np.divide(detections[..., 5:], objectness, out=detections[..., 5:], where=objectness > 0)
    return detections


class _OpenCvRunner(Runner):
    def __init__(self, net) -> None:
        self.net = net
        self.outputs = net.getUnconnectedOutLayersNames()

    def infer(self, images: np.ndarray) -> np.ndarray:
        self.net.setInput(images)
        return opencv_to_detections(self.net.forward(self.outputs), images.shape[0])


class OpenCvDarknetBackend(Backend):
    name = "opencv-darknet"
    # The article's Darknet (OpenCV DNN reads cfg + weights): the CPU baseline, and the first choice
    # of accuracy reference.
    facts = EngineFacts(
        precisions=("fp32",),
        devices=("cpu",),
        extras=("opencv",),
        family="opencv",
        baseline_on=("cpu",),
        reference_rank=1,
    )

    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        try:
            import cv2
        except ImportError as error:
            return f"opencv-python-headless<5 is not installed ({error})"
        if not hasattr(cv2.dnn, "readNetFromDarknet"):
            return f"OpenCV {cv2.__version__} has no Darknet reader (removed in 5.x)"
        return None

    def library_versions(self) -> dict[str, str]:
        import cv2

        return {"opencv": cv2.__version__}

    def model_unavailable_reason(self, request: BuildRequest) -> str | None:
        """OpenCV's reader lacks some of Darknet's layers ([reorg3d], say) and refuses a [yolo]
        whose num= differs from its anchors: such a cfg cannot run on this engine."""
        import cv2

        from yoloforge.darknet.cfg import read_cfg_text

        if request.cfg is None:
            return None
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / "model.cfg"
            copy.write_text(cfg_without_score_threshold(read_cfg_text(request.cfg)))
            try:
                cv2.dnn.readNetFromDarknet(str(copy))
            except cv2.error as error:
                return f"OpenCV's Darknet reader refuses {Path(request.cfg).name} ({opencv_problem(error)})"
        return None

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        from yoloforge.darknet.cfg import read_cfg_text

        if request.cfg is None or request.weights is None:
            raise YoloforgeError("opencv-darknet needs --cfg and --weights", request.output)
        request.output.write_text(cfg_without_score_threshold(read_cfg_text(request.cfg)))
        return {
            "weights": os.path.abspath(request.weights),
            "weights_sha256": sha256_file(request.weights),
        }

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        import cv2

        weights = sidecar["build_flags"]["weights"]
        if not os.path.exists(weights) or sha256_file(weights) != sidecar["build_flags"]["weights_sha256"]:
            raise YoloforgeError("weights changed or moved since this engine was built", weights)
        cv2.setNumThreads(cpu_threads())
        net = cv2.dnn.readNetFromDarknet(os.fspath(engine), weights)
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        return _OpenCvRunner(net)
