"""The PyTorch engines against ONNX Runtime on the same ONNX file (on CUDA where torch sees one)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import DATA, MODELS, mixed_batch, real_photo_batch
from tests.reference import TOLERANCE, onnx_detections
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.backends.torch_graph import onnx_module
from yoloforge.darknet.convert import convert
from yoloforge.errors import YoloforgeError
from yoloforge.files import sha256_file

torch = pytest.importorskip("torch")

# bf16 keeps 8 mantissa bits and fp16 11, so boxes and scores in [0, 1] move by up to about 1e-2.
LOW_PRECISION_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def tiny_onnx(tiny_weights, tmp_path_factory):
    output = tmp_path_factory.mktemp("onnx") / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, output, (320, 320))
    return output


@pytest.fixture(scope="module")
def aoti_engine(tiny_onnx, tmp_path_factory):
    """torch-aoti at fp32, batch 3: one AOTInductor compile shared by the tests below."""
    output = tmp_path_factory.mktemp("aoti") / "tiny-fp32-b3.engine"
    sidecar = get_backend("torch-aoti").build(
        BuildRequest(onnx=tiny_onnx, precision="fp32", batch=3, output=output)
    )
    return output, sidecar


def _build(engine: str, onnx_path, precision: str, batch: int, output):
    return get_backend(engine).build(
        BuildRequest(onnx=onnx_path, precision=precision, batch=batch, output=output)
    )


def _errors(detections: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Largest differences in boxes + objectness and in class score x objectness."""
    assert detections.shape == reference.shape and detections.dtype == np.float32
    boxes = np.abs(detections[..., :5] - reference[..., :5]).max()
    scores = detections[..., 5:] * detections[..., 4:5]
    return boxes, np.abs(scores - reference[..., 5:] * reference[..., 4:5]).max()


def test_eager_fp32_agrees_with_the_onnx_reference(tiny_onnx, tmp_path):
    output = tmp_path / "eager.engine"
    sidecar = _build("torch-eager", tiny_onnx, "fp32", 3, output)
    # The engine is the ONNX file itself; everything else it needs is in the sidecar.
    assert sidecar["engine_sha256"] == sha256_file(tiny_onnx)
    assert sidecar["build_flags"]["dtype"] == "float32"
    assert sidecar["device"]["torch"] == torch.__version__
    images = real_photo_batch(320, 320)
    detections = get_backend("torch-eager").load(output).infer(images)
    boxes_error, scores_error = _errors(detections, onnx_detections(tiny_onnx, images))
    assert boxes_error < TOLERANCE and scores_error < TOLERANCE


def test_aoti_fp32_agrees_with_the_onnx_reference(aoti_engine, tiny_onnx):
    output, sidecar = aoti_engine
    assert sidecar["build_flags"]["batch"] == 3
    runner = get_backend("torch-aoti").load(output)
    images = real_photo_batch(320, 320)
    detections = runner.infer(images)
    runner.synchronize()
    boxes_error, scores_error = _errors(detections, onnx_detections(tiny_onnx, images))
    assert boxes_error < TOLERANCE and scores_error < TOLERANCE


def test_aoti_engine_refuses_another_batch_size(aoti_engine):
    runner = get_backend("torch-aoti").load(aoti_engine[0])
    with pytest.raises(YoloforgeError, match="compiled for batch 3, not 1"):
        runner.infer(real_photo_batch(320, 320)[:1])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_eager_low_precision_stays_close(precision, tiny_onnx, tmp_path):
    output = tmp_path / f"eager-{precision}.engine"
    _build("torch-eager", tiny_onnx, precision, 3, output)
    images = mixed_batch(320, 320)
    detections = get_backend("torch-eager").load(output).infer(images)
    assert np.isfinite(detections).all()
    boxes_error, scores_error = _errors(detections, onnx_detections(tiny_onnx, images))
    assert boxes_error < LOW_PRECISION_TOLERANCE and scores_error < LOW_PRECISION_TOLERANCE
    assert boxes_error > 0  # the module really ran in the lower precision


def test_module_exports_for_a_fixed_and_a_dynamic_batch(tiny_onnx):
    module = onnx_module(tiny_onnx)
    images = torch.from_numpy(real_photo_batch(320, 320))
    with torch.inference_mode():
        eager = module(images)
    fixed = torch.export.export(module, (images,))
    batch = torch.export.Dim("batch", min=1, max=64)
    dynamic = torch.export.export(module, (images,), dynamic_shapes={"images": {0: batch}})
    with torch.inference_mode():
        torch.testing.assert_close(fixed.module()(images), eager, rtol=0, atol=1e-5)
        torch.testing.assert_close(dynamic.module()(images[:1]), eager[:1], rtol=0, atol=1e-5)
    with pytest.raises(AssertionError, match=r"size\(\)\[0\] == 3"):  # fixed means fixed
        fixed.module()(images[:2])


def test_channel_padding_keeps_every_output(tiny_onnx):
    """Zero channels added for tensor cores (the GPU's fp16 and bf16 engines) change nothing."""
    plain, padded = onnx_module(tiny_onnx), onnx_module(tiny_onnx, channel_multiple=8)
    channels = {tuple(buffer.shape[:2]) for buffer in padded.buffers() if buffer.dim() == 4}
    assert all(k % 8 == 0 and c % 8 == 0 for k, c in channels)
    assert {tuple(buffer.shape[:2]) for buffer in plain.buffers() if buffer.dim() == 4} != channels
    images = torch.from_numpy(mixed_batch(320, 320))
    with torch.inference_mode():
        torch.testing.assert_close(padded(images), plain(images), rtol=0, atol=1e-5)


def test_every_layer_type_agrees_with_the_onnx_reference(synthetic_weights, tmp_path):
    cfg = DATA / "every-layer.cfg"
    onnx_path = tmp_path / "every-layer.onnx"
    convert(cfg, synthetic_weights(cfg), onnx_path)
    output = tmp_path / "every-layer.engine"
    _build("torch-eager", onnx_path, "fp32", 3, output)
    images = mixed_batch(320, 256)  # the cfg's non-square size
    detections = get_backend("torch-eager").load(output).infer(images)
    boxes_error, scores_error = _errors(detections, onnx_detections(onnx_path, images))
    assert boxes_error < TOLERANCE and scores_error < TOLERANCE


def test_unsupported_op_is_named_with_the_file(tmp_path):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])
    detections = helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["batch", 3, 4, 4])
    node = helper.make_node("Erf", ["images"], ["detections"], name="odd_erf")
    model = helper.make_model(helper.make_graph([node], "odd", [images], [detections]))
    path = tmp_path / "erf.onnx"
    onnx.save(model, path)
    with pytest.raises(YoloforgeError, match=r"erf\.onnx: .*ONNX op Erf \(odd_erf\)"):
        onnx_module(path)
    output = tmp_path / "engines" / "erf.engine"
    with pytest.raises(YoloforgeError, match="Erf"):
        _build("torch-eager", path, "fp32", 1, output)
    assert list(output.parent.iterdir()) == []


@pytest.mark.parametrize("scale", [2, 3, 7])
def test_resize_by_whole_scales_equals_onnx_runtime_exactly(tmp_path, scale):
    """Darknet's upsample as ONNX Resize (nearest, asymmetric, floor): the module's one-kernel
    nearest-exact interpolation must pick the same source pixels, at every output size here."""
    import onnxruntime

    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 19, 13])
    detections = helper.make_tensor_value_info("detections", TensorProto.FLOAT, None)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, scale, scale])
    node = helper.make_node(
        "Resize",
        ["images", "", "scales"],
        ["detections"],
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    graph = helper.make_graph([node], "resize", [images], [detections], initializer=[scales])
    path = tmp_path / "resize.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    values = np.random.default_rng(scale).random((2, 3, 19, 13), dtype=np.float32)
    expected = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"images": values}
    )[0]
    with torch.inference_mode():
        resized = onnx_module(path)(torch.from_numpy(values)).numpy()
    np.testing.assert_array_equal(resized, expected)
