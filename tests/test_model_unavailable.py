"""A model one engine cannot read: OpenCV's Darknet reader lacks [reorg3d] (yolov4-sam-mish-csp-
reorg-bfm of the zoo). Its opencv-darknet row is marked unavailable with OpenCV's reason through
build, timing, accuracy and the table, and the reference falls back to ONNX Runtime."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import run_cli
from yoloforge.backends.base import sidecar_path
from yoloforge.darknet.convert import convert
from yoloforge.datasets import write_substitute_set

CFG = """[net]
width=64
height=64
channels=3

[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky

[reorg3d]
stride=2

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
"""
REASON = "OpenCV's Darknet reader refuses model.cfg (Parsing error: Unknown layer type: reorg3d)"


@pytest.fixture(scope="module")
def model(synthetic_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    cfg = folder / "model.cfg"
    cfg.write_text(CFG)
    weights = synthetic_weights(cfg)
    onnx = folder / "model.onnx"
    convert(cfg, weights, onnx)
    images = folder / "images"
    images.mkdir()
    write_substitute_set(images, 2, calibration=True)
    return cfg, weights, onnx, images


def _ok(*args: str):
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    return result


def test_the_row_is_unavailable_with_opencvs_reason_and_the_reference_falls_back(model, tmp_path):
    cfg, weights, onnx, images = model
    engine = tmp_path / "opencv-darknet-fp32-b1.engine"
    build = _ok(
        "build", "--engine", "opencv-darknet", "--onnx", str(onnx), "--output", str(engine),
        "--cfg", str(cfg), "--weights", str(weights), "--check-images", str(images),
    )  # fmt: skip
    assert REASON in build.stderr
    assert engine.exists() and json.loads(sidecar_path(engine).read_text())["unavailable"] == REASON

    rounds = [tmp_path / f"round-{index}.json" for index in range(2)]
    for index, output in enumerate(rounds):
        _ok(
            "bench", "--engine", "opencv-darknet", "--engine-file", str(engine), "--model", "m",
            "--images", str(images), "--rounds", "2", "--round", str(index), "--output", str(output),
        )  # fmt: skip
    pooled = tmp_path / "pooled.json"
    _ok("pool", "--output", str(pooled), *map(str, rounds))
    assert json.loads(pooled.read_text())["unavailable"] == REASON

    reference = tmp_path / "reference.json"
    _ok(
        "reference", "--onnx", str(onnx), "--cfg", str(cfg), "--weights", str(weights),
        "--images", str(images), "--count", "2", "--output", str(reference),
    )  # fmt: skip
    assert json.loads(reference.read_text())["reference"] == "onnxruntime fp32"

    accuracy = tmp_path / "accuracy.json"
    _ok(
        "accuracy", "--engine", "opencv-darknet", "--engine-file", str(engine), "--model", "m",
        "--images", str(images), "--reference", str(reference), "--output", str(accuracy),
        "--coco-output", str(tmp_path / "coco.json"), "--draw-dir", str(tmp_path / "drawn"),
    )  # fmt: skip
    table = tmp_path / "table.csv"
    _ok("table", "--output", str(table), "--accuracy", str(accuracy), "--", str(pooled))
    rows = pd.read_csv(table)
    assert set(rows["unavailable"]) == {REASON}
    assert set(rows["scope"]) == {"model", "end-to-end"}


def test_strict_refuses_the_model_in_one_line(model, tmp_path):
    cfg, weights, onnx, images = model
    engine = tmp_path / "opencv-darknet-fp32-b1.engine"
    result = run_cli(
        "build", "--engine", "opencv-darknet", "--onnx", str(onnx), "--output", str(engine),
        "--cfg", str(cfg), "--weights", str(weights), "--strict",
    )  # fmt: skip
    assert result.returncode == 2
    expected = f"yoloforge: error: {engine}: strict: opencv-darknet cannot run this model: {REASON}"
    assert result.stderr.strip() == expected
    assert not engine.exists() and not sidecar_path(engine).exists()
