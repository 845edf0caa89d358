import numpy as np
import onnx
import onnxruntime
import pytest

from tests.conftest import DATA, MODELS, real_photo_batch, run_cli
from yoloforge.darknet.cfg import load_cfg
from yoloforge.darknet.onnx_export import export_onnx
from yoloforge.darknet.synthetic import synthetic_params
from yoloforge.darknet.weights import read_weights
from yoloforge.provenance import read_provenance

FP16_MAX = 65504.0


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = DATA / "every-layer.cfg"
    paths = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        paths.append(tmp_path / f"{name}.weights")
        result = run_cli("synth-weights", "--cfg", str(cfg), "--seed", str(seed), "--output", str(paths[-1]))
        assert result.returncode == 0, result.stderr
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()
    provenance = read_provenance(paths[0])
    assert provenance["source"] == "synthetic" and provenance["seed"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("size", [416, 608])
def test_yolov3_activations_stay_in_fp16_range_on_unseen_photos(size):
    """Every intermediate tensor of yolov3 (107 layers) stays far inside FP16, and none dies out."""
    network = load_cfg(MODELS / "yolov3.cfg")
    model = export_onnx(network, synthetic_params(network, seed=0), size, size)
    layer_outputs = [node.output[0] for node in model.graph.node if node.op_type in ("LeakyRelu", "Add")]
    for name in layer_outputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # Photos the calibration never saw.
    images = real_photo_batch(size, size, names=("chelsea", "rocket", "motorcycle"))
    detections, *activations = session.run(None, {"images": images})
    for name, value in zip(layer_outputs, activations, strict=True):
        assert np.abs(value).max() < FP16_MAX / 100, name
        assert value.std() > 0.05, name
    assert np.isfinite(detections).all()
    assert detections[..., 2:4].max() < 10  # box sizes: exp() of the raw outputs stays tame
    objectness = detections[..., 4]
    assert 0 < (objectness > 0.25).sum() < objectness.size / 100  # a few confident boxes, not all


def _box_logits(network, params, images) -> dict[str, np.ndarray]:
    """The raw box-centre and box-size outputs of every head on `images`."""
    outputs = []
    for layer, arrays in zip(network.layers, params, strict=True):
        outputs.append(layer.forward([images if i < 0 else outputs[i] for i in layer.inputs], arrays))
    raw = np.concatenate(
        [outputs[h.index].reshape(len(images), len(h.anchors), 5 + h.classes, -1) for h in network.heads],
        axis=3,
    )
    return {"xy": raw[:, :, 0:2], "wh": raw[:, :, 2:4]}


def test_synthetic_box_logits_spread_as_real_ones_do(tiny_weights):
    """The head's raw box outputs (before sigmoid and exp) of synthetic yolov3-tiny spread as
    those of the published weights do on the same unseen photos: exp() of the sizes stays in the
    range trained networks give, far from FP16 overflow."""
    network = load_cfg(MODELS / "yolov3-tiny.cfg")
    images = real_photo_batch(416, 416, names=("chelsea", "rocket", "motorcycle"))
    real = _box_logits(network, read_weights(tiny_weights, network)[1], images)
    synthetic = _box_logits(network, synthetic_params(network, seed=0), images)
    for role in ("xy", "wh"):
        assert 0.5 < synthetic[role].std() / real[role].std() < 1.5, role
        assert np.abs(synthetic[role]).max() < 1.5 * np.abs(real[role]).max(), role


@pytest.mark.slow
def test_synthetic_yolov3_runs_in_fp16(synthetic_weights, tmp_path):
    """Synthetic yolov3 in half precision (torch on the CPU) gives finite detections."""
    torch = pytest.importorskip("torch")
    from yoloforge.backends.torch_graph import onnx_module
    from yoloforge.darknet.convert import convert

    cfg = MODELS / "yolov3.cfg"
    output = tmp_path / "yolov3.onnx"
    convert(cfg, synthetic_weights(cfg), output, (416, 416))
    images = torch.from_numpy(real_photo_batch(416, 416, names=("chelsea", "rocket")))
    with torch.inference_mode():
        detections = onnx_module(output).half()(images.half())
    assert detections.dtype == torch.float16
    assert torch.isfinite(detections).all()
