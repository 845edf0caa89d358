"""TensorRT through Polygraphy. Runs only where `import tensorrt` works and a GPU is visible;
TensorRT is not installable in this project's own CI, so these tests have not run there."""

import numpy as np
import pytest

from tests.conftest import MODELS, real_photo_batch
from tests.reference import TOLERANCE, onnx_detections
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.darknet.convert import convert
from yoloforge.images import image_paths

pytest.importorskip("tensorrt")
pytestmark = pytest.mark.skipif(
    get_backend("tensorrt").unavailable_reason() is not None, reason="no TensorRT GPU here"
)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_weights, tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx") / "tiny-416.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, output)
    return output


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    from yoloforge.images import BUNDLED_PHOTOS, _bundled_photo

    folder = tmp_path_factory.mktemp("photos")
    for name in BUNDLED_PHOTOS:
        Image.fromarray(_bundled_photo(name)).save(folder / f"{name}.png")
    return image_paths(folder)


@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", TOLERANCE), ("fp16", 0.02), ("int8", 0.2)])
def test_engine_agrees_with_the_onnx_reference(tiny_onnx, photos, tmp_path, precision, tolerance):
    output = tmp_path / f"tiny-{precision}.engine"
    request = BuildRequest(
        onnx=tiny_onnx, precision=precision, batch=4, output=output, calibration=photos, check_images=photos
    )
    sidecar = get_backend("tensorrt").build(request)
    assert sidecar["check"]["non_finite_values"] == 0
    images = real_photo_batch(416, 416, names=("astronaut", "chelsea", "coffee", "motorcycle"))
    detections = get_backend("tensorrt").load(output).infer(images)
    reference = onnx_detections(tiny_onnx, images)
    assert np.abs(detections[..., :5] - reference[..., :5]).max() < tolerance
    if precision == "int8":
        assert (tmp_path / "tiny-int8.calibration.cache").exists()
    assert (tmp_path / "tensorrt-timing.cache").exists()
