import json

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import MODELS, real_photo_batch
from tests.reference import TOLERANCE, onnx_detections
from yoloforge.backends import BuildRequest, get_backend, read_sidecar
from yoloforge.backends.base import CHECK_IMAGES, sidecar_path
from yoloforge.darknet.convert import convert
from yoloforge.device import fingerprint_id
from yoloforge.errors import YoloforgeError
from yoloforge.images import image_paths


@pytest.fixture(scope="module")
def tiny_onnx(tiny_weights, tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx") / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, output, (320, 320))
    return output


def _build(engine, tiny_onnx, tiny_weights, output):
    request = BuildRequest(
        onnx=tiny_onnx,
        precision="fp32",
        batch=2,
        output=output,
        cfg=MODELS / "yolov3-tiny.cfg",
        weights=tiny_weights,
    )
    return get_backend(engine).build(request)


def test_probe_says_what_runs_here_and_why_not():
    onnxruntime = get_backend("onnxruntime").probe(["fp32", "int8", "bf16"])
    assert onnxruntime["precisions"] == {"fp32": None, "int8": None, "bf16": "onnxruntime has no bf16 mode"}
    assert onnxruntime["id"] == fingerprint_id(onnxruntime["fingerprint"])
    assert onnxruntime["fingerprint"]["onnxruntime"] == ort.__version__
    tensorrt = get_backend("tensorrt").probe(["fp16"])
    assert tensorrt["id"] is None and "tensorrt is not installed" in tensorrt["precisions"]["fp16"]


@pytest.mark.parametrize("engine", ["onnxruntime", "opencv-darknet"])
def test_engine_agrees_with_the_onnx_reference(engine, tiny_onnx, tiny_weights, tmp_path):
    output = tmp_path / f"{engine}.engine"
    sidecar = _build(engine, tiny_onnx, tiny_weights, output)
    assert sidecar == read_sidecar(output)
    assert sidecar["model"]["width"] == "320" and sidecar["build_seconds"] > 0
    images = real_photo_batch(320, 320)
    detections = get_backend(engine).load(output).infer(images)
    reference = onnx_detections(tiny_onnx, images)
    assert detections.shape == reference.shape
    np.testing.assert_allclose(detections[..., :5], reference[..., :5], atol=TOLERANCE)
    scores = detections[..., 5:] * detections[..., 4:5]
    np.testing.assert_allclose(scores, reference[..., 5:] * reference[..., 4:5], atol=TOLERANCE)


@pytest.fixture(scope="module")
def image_folders(tmp_path_factory):
    """Real photos to check on; generated scenes to calibrate on (never the checked images)."""
    from yoloforge.datasets import write_substitute_set

    check = tmp_path_factory.mktemp("check")
    calibration = tmp_path_factory.mktemp("calibration")
    write_substitute_set(check, 6, calibration=False)
    write_substitute_set(calibration, 8, calibration=True)
    return image_paths(check), image_paths(calibration)


@pytest.mark.parametrize(
    ("engine", "precision"),
    [("onnxruntime", "fp16"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8")],
)
def test_precisions_report_their_agreement(
    engine, precision, tiny_onnx, tiny_weights, image_folders, tmp_path
):
    check_images, calibration = image_folders
    request = BuildRequest(
        onnx=tiny_onnx,
        precision=precision,
        batch=1,
        output=tmp_path / "e.engine",
        calibration=calibration,
        check_images=check_images,
    )
    check = get_backend(engine).build(request)["check"]
    print(f"{engine} {precision}: {check}")
    assert check["non_finite_values"] == 0 and check["images"] == CHECK_IMAGES
    if precision == "fp32":
        assert check["max_abs_error_boxes"] < TOLERANCE and check["max_abs_error_scores"] < TOLERANCE
    assert 0 <= check["recall"] <= 1 and 0 <= check["precision"] <= 1


@pytest.mark.parametrize("batch", [4, 8])
def test_the_output_check_runs_whole_batches_and_compares_the_first_images(
    batch, tiny_onnx, image_folders, tmp_path
):
    check_images, _ = image_folders  # 6 images: a batch of 8 takes some twice
    request = BuildRequest(
        onnx=tiny_onnx, precision="fp32", batch=batch, output=tmp_path / "e.engine", check_images=check_images
    )
    check = get_backend("onnxruntime").build(request)["check"]
    assert check["images"] == CHECK_IMAGES
    assert check["max_abs_error_boxes"] < TOLERANCE and check["max_abs_error_scores"] < TOLERANCE


def test_engine_from_another_device_is_refused(tiny_onnx, tiny_weights, tmp_path):
    output = tmp_path / "copied.engine"
    _build("onnxruntime", tiny_onnx, tiny_weights, output)
    sidecar = json.loads(sidecar_path(output).read_text())
    sidecar["device"]["name"] = "Another CPU"
    sidecar_path(output).write_text(json.dumps(sidecar))
    with pytest.raises(YoloforgeError, match="built for another device or library version"):
        get_backend("onnxruntime").load(output)


def test_corrupted_engine_is_refused(tiny_onnx, tiny_weights, tmp_path):
    output = tmp_path / "corrupt.engine"
    _build("onnxruntime", tiny_onnx, tiny_weights, output)
    data = bytearray(output.read_bytes())
    data[len(data) // 2] ^= 0xFF
    output.write_bytes(bytes(data))
    with pytest.raises(YoloforgeError, match="does not match the checksum"):
        get_backend("onnxruntime").load(output)


def test_failed_build_leaves_nothing(tiny_onnx, tmp_path):
    output = tmp_path / "e" / "opencv.engine"
    request = BuildRequest(onnx=tiny_onnx, precision="fp32", batch=1, output=output)
    with pytest.raises(YoloforgeError, match="needs --cfg and --weights"):
        get_backend("opencv-darknet").build(request)
    assert list(output.parent.iterdir()) == []


def test_unknown_precision_is_refused(tiny_onnx, tmp_path):
    request = BuildRequest(onnx=tiny_onnx, precision="int4", batch=1, output=tmp_path / "x.engine")
    with pytest.raises(YoloforgeError, match="onnxruntime has no int4 mode"):
        get_backend("onnxruntime").build(request)


def test_onnxruntime_threads_sleep_when_idle_where_the_cores_are_shared(
    tiny_onnx, tiny_weights, tmp_path, monkeypatch
):
    output = tmp_path / "model.engine"
    _build("onnxruntime", tiny_onnx, tiny_weights, output)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    shared = get_backend("onnxruntime").load(output).session.get_session_options()
    assert shared.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # A timing process keeps ONNX Runtime's default, spinning.
    monkeypatch.delenv("OMP_WAIT_POLICY")
    alone = get_backend("onnxruntime").load(output).session.get_session_options()
    with pytest.raises(RuntimeError, match="allow_spinning"):
        alone.get_session_config_entry("session.intra_op.allow_spinning")
