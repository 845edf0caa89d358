"""cudnn-fused: which chains of the graph it fuses (on any machine: run as torch operations, the
fused module must equal the plain one), and the engine itself where PyTorch sees a CUDA GPU and
cuDNN's graph API is installed; CI's machines have no GPU, so those tests skip there."""

import json
import re
import zipfile

import numpy as np
import pytest

from tests.conftest import MODELS, mixed_batch, real_photo_batch
from tests.reference import onnx_detections
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.backends.torch_graph import ConvChain, chain_in_torch, onnx_module
from yoloforge.darknet.convert import convert
from yoloforge.errors import YoloforgeError

torch = pytest.importorskip("torch")

# Darknet-53's residual block (conv, conv, shortcut from=-3) and a head whose 18 output channels
# are padded to 24 for tensor cores.
RESIDUAL_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=8
size=1
stride=1
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[shortcut]
from=-3
activation=linear

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=relu

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=1
num=3
"""


@pytest.fixture(scope="module")
def residual_onnx(synthetic_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("residual")
    cfg = folder / "residual.cfg"
    cfg.write_text(RESIDUAL_CFG)
    output = folder / "residual-64.onnx"
    convert(cfg, synthetic_weights(cfg), output, (64, 64))
    return output


def _fused_module(onnx_path, channel_multiple: int):
    chains = []

    def fuse(chain):
        chains.append(chain)
        return chain_in_torch(chain)

    return onnx_module(onnx_path, channel_multiple, fuse), chains


def test_chains_cover_conv_bias_activation_and_residual(residual_onnx):
    module, chains = _fused_module(residual_onnx, channel_multiple=8)
    plain = onnx_module(residual_onnx, channel_multiple=8)
    images = torch.from_numpy(mixed_batch(64, 64))
    with torch.inference_mode():
        torch.testing.assert_close(module(images), plain(images), rtol=0, atol=1e-5)
    # Every convolution is a chain; the shortcut joins the chain of the conv before it.
    assert [(c.activation, c.negative_slope, c.residual) for c in chains] == [
        ("relu", pytest.approx(0.1), False),
        ("relu", pytest.approx(0.1), False),
        ("relu", pytest.approx(0.1), True),
        ("relu", 0.0, False),
        (None, 0.0, False),
    ]
    assert chains[0].stride == (2, 2) and chains[0].pre_padding == chains[0].post_padding == (1, 1)
    assert len(module.steps) < len(plain.steps) - 4  # activations and the Add left the step list


def test_chains_through_the_custom_op_compile_and_agree(residual_onnx):
    """The engine's compile=true path, with the chains run as torch operations behind the same
    custom op: torch.compile traces it through its fake implementation, whose output layout
    must be the one the op returns."""
    from yoloforge.backends.cudnn_fused import as_custom_op

    module = onnx_module(residual_onnx, 8, lambda chain: as_custom_op(chain, chain_in_torch(chain)))
    module = module.to(memory_format=torch.channels_last)
    plain = onnx_module(residual_onnx, 8)
    images = torch.from_numpy(mixed_batch(64, 64)).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = plain(images)
        torch.testing.assert_close(module(images), expected, rtol=0, atol=1e-3)
        compiled = torch.compile(module, fullgraph=True, dynamic=False)
        torch.testing.assert_close(compiled(images), expected, rtol=0, atol=1e-3)


def test_yolov3_tiny_fuses_every_convolution(tiny_weights, tmp_path):
    onnx_path = tmp_path / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, onnx_path, (320, 320))
    module, chains = _fused_module(onnx_path, channel_multiple=8)
    assert len(chains) == 13 and sum(c.activation is None for c in chains) == 2
    images = torch.from_numpy(real_photo_batch(320, 320))
    with torch.inference_mode():
        torch.testing.assert_close(module(images), onnx_module(onnx_path, 8)(images), rtol=0, atol=1e-4)


def test_build_without_a_gpu_fails_in_one_line(residual_onnx, tmp_path):
    backend = get_backend("cudnn-fused")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    output = tmp_path / "engines" / "residual.engine"
    output.parent.mkdir()
    with pytest.raises(YoloforgeError, match="cudnn-fused fp16 is unavailable: needs an NVIDIA GPU"):
        backend.build(BuildRequest(onnx=residual_onnx, precision="fp16", batch=1, output=output))
    with pytest.raises(YoloforgeError, match="no fp32 mode"):
        backend.build(BuildRequest(onnx=residual_onnx, precision="fp32", batch=1, output=output))
    assert list(output.parent.iterdir()) == []


def test_timing_cache_is_valid_for_one_version_of_the_triton_kernel(tmp_path, monkeypatch):
    from yoloforge.backends import cudnn_fused

    path = tmp_path / "cudnn-timing.json"
    timings = {"chain signature": {"plan": 3, "name": "eng4", "ms": 0.01}}
    cudnn_fused.write_timings(path, timings)
    assert cudnn_fused.read_timings(path) == timings
    # Timed with another kernel: it may have chosen against a kernel that is faster now.
    monkeypatch.setattr(cudnn_fused, "_kernels_version", lambda: "another")
    assert cudnn_fused.read_timings(path) == {}
    monkeypatch.undo()
    for stale in ("{not json", json.dumps(timings), json.dumps([1, 2])):  # the unversioned format
        path.write_text(stale)
        assert cudnn_fused.read_timings(path) == {}
    assert cudnn_fused.read_timings(tmp_path / "missing.json") == {}


def test_timing_cache_keeps_what_a_build_alongside_wrote(tmp_path):
    from yoloforge.backends import cudnn_fused

    path = tmp_path / "cudnn-timing.json"
    # Two builds read the same cache, then each writes its own chains: neither loses the other's.
    first = {"chain a": {"plan": 1, "name": "eng4", "ms": 0.02}}
    second = {"chain b": {"plan": "torch", "ms": 0.05}, "chain a": {"plan": 2, "name": "eng5", "ms": 0.01}}
    cudnn_fused.write_timings(path, first)
    cudnn_fused.write_timings(path, second)
    assert cudnn_fused.read_timings(path) == {**first, **second}


@pytest.fixture(scope="module")
def tiny_detections(tiny_weights, tmp_path_factory) -> np.ndarray:
    """yolov3-tiny's official weights' raw rows on three real photos (ONNX Runtime FP32)."""
    onnx_path = tmp_path_factory.mktemp("tiny") / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, onnx_path, (320, 320))
    return onnx_detections(onnx_path, real_photo_batch(320, 320))


class ChainsOverRows:
    """The FP8 side of CudnnChains (chains_in_fp8, choose) over fixed detection rows: each chain in
    FP8 widens every box by its error, so the engine's detections drift as chains go to FP8."""

    def __init__(self, rows: np.ndarray, errors: dict[str, float]) -> None:
        self.rows, self.errors = rows, errors
        self.precision = dict.fromkeys(errors, "fp8")
        self.why: dict[str, str | None] = {}
        self.detected_with: list[list[str]] = []

    def chains_in_fp8(self) -> list[str]:
        return sorted((k for k, p in self.precision.items() if p == "fp8"), key=lambda k: -self.errors[k])

    def choose(self, key: str, precision: str, why: str | None = None) -> None:
        self.precision[key], self.why[key] = precision, why

    def detect(self) -> list[np.ndarray]:
        in_fp8 = sorted(self.chains_in_fp8())
        self.detected_with.append(in_fp8)
        rows = self.rows.copy()
        rows[..., 2:4] *= 1 + sum(self.errors[key] for key in in_fp8)
        return list(rows)


def test_fp8_chains_go_back_to_fp16_until_the_detections_hold(tiny_detections):
    from yoloforge.backends.cudnn_fused import FP8_AGREEMENT, hold_fp8_to_fp16_detections

    # Boxes widened by 1.5 keep under half their overlap (1/1.5^2), by 1.2 over two thirds: with
    # all three chains, or all but the worst, the detections move; without the two worst they hold.
    chains = ChainsOverRows(tiny_detections, {"worst": 0.5, "middle": 0.3, "least": 0.2})
    found = hold_fp8_to_fp16_detections(chains, chains.detect)
    assert found["chains_checked"] == 3 and found["chains_returned_to_fp16"] == 2, found
    assert found["agreement_map50_with_fp16"] >= FP8_AGREEMENT
    assert chains.precision == {"worst": "fp16", "middle": "fp16", "least": "fp8"}
    assert "under 0.99" in chains.why["worst"] and "under 0.99" in chains.why["middle"]
    # The reference is the engine with no chain in FP8; then the worst chains leave one by one.
    assert chains.detected_with == [[], ["least", "middle", "worst"], ["least", "middle"], ["least"]]


def test_fp8_chains_that_keep_the_detections_stay(tiny_detections):
    from yoloforge.backends.cudnn_fused import hold_fp8_to_fp16_detections

    chains = ChainsOverRows(tiny_detections, {"a": 0.05, "b": 0.02})
    found = hold_fp8_to_fp16_detections(chains, chains.detect)
    assert found["chains_returned_to_fp16"] == 0 and found["agreement_map50_with_fp16"] == 1.0
    assert chains.precision == {"a": "fp8", "b": "fp8"}
    nothing = ChainsOverRows(tiny_detections, {})
    assert hold_fp8_to_fp16_detections(nothing, nothing.detect) == {"chains_checked": 0}
    assert nothing.detected_with == []


def test_agreement_of_raw_rows_is_scored_as_accuracy_jobs_score_it(tiny_detections):
    from yoloforge.accuracy import rows_agreement_map50

    rows = list(tiny_detections)
    score = rows_agreement_map50(rows)
    assert score(rows) == 1.0
    shifted = [r.copy() for r in rows]
    for r in shifted:
        r[:, 0] += 0.5  # every box half the image to the right: nothing overlaps
    assert score(shifted) == 0.0
    assert score(rows) == 1.0  # the reference stays as it was decoded
    empty = [np.zeros_like(r) for r in rows]
    assert rows_agreement_map50(empty)(rows) is None


needs_gpu = pytest.mark.skipif(
    get_backend("cudnn-fused").unavailable_reason("fp16") is not None,
    reason=f"cudnn-fused cannot run here: {get_backend('cudnn-fused').unavailable_reason('fp16')}",
)


@needs_gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_engine_agrees_with_the_onnx_reference(tiny_weights, tmp_path, precision):
    onnx_path = tmp_path / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, onnx_path, (320, 320))
    output = tmp_path / f"tiny-{precision}.engine"
    sidecar = get_backend("cudnn-fused").build(
        BuildRequest(onnx=onnx_path, precision=precision, batch=3, output=output)
    )
    flags = sidecar["build_flags"]
    assert flags["distinct_chains"] > 0 and flags["chains_fused_by_cudnn"] > 0, flags
    with zipfile.ZipFile(output) as archive:
        plans = json.loads(archive.read("plans.json"))
    # The chains with under 32 input channels (the first's 3 padded to 8, then 16) are narrow: the
    # Triton kernel was timed on them and only them.
    narrow = {key for key in plans if int(re.search(r"\[\(\(\d+, (\d+),", key).group(1)) < 32}
    assert narrow == {key for key, plan in plans.items() if "triton_tile_shapes" in plan}, plans
    assert len(narrow) == 2
    images = real_photo_batch(320, 320)
    runner = get_backend("cudnn-fused").load(output)
    first = runner.infer(images)
    again = runner.infer(images)  # a CUDA-graph replay
    np.testing.assert_array_equal(first, again)
    reference = onnx_detections(onnx_path, images)
    tolerance = 0.05 if precision == "bf16" else 0.02
    assert np.abs(first[..., :5] - reference[..., :5]).max() < tolerance
    scores = first[..., 5:] * first[..., 4:5]
    assert np.abs(scores - reference[..., 5:] * reference[..., 4:5]).max() < tolerance


@needs_gpu
@pytest.mark.parametrize(
    ("activation", "slope"),
    [
        ("relu", 0.1),
        ("relu", 0.0),
        (None, 0.0),
        ("sigmoid", 0.0),
        ("tanh", 0.0),
        ("swish", 0.0),
        ("mish", 0.0),
    ],
)
def test_every_cudnn_plan_computes_the_residual_chain(activation, slope):
    """Whatever the timing picks, each plan cuDNN offers must compute what the torch operations
    do. For the activations beyond ReLU, cuDNN may offer none (the engine then records why and
    runs the chain as torch operations)."""
    from yoloforge.backends.cudnn_fused import CudnnChains

    chain = ConvChain("chain", (1, 1), (1, 1), (1, 1), (1, 1), activation, slope, residual=True)
    generator = torch.Generator(device="cuda").manual_seed(0)

    def channels_last(*shape, scale=1.0):
        values = torch.randn(shape, device="cuda", generator=generator) * scale
        return values.to(torch.float16).contiguous(memory_format=torch.channels_last)

    x, kernel, residual = (
        channels_last(2, 8, 32, 32),
        channels_last(16, 8, 3, 3, scale=0.2),
        channels_last(2, 16, 32, 32),
    )
    bias = torch.randn(16, device="cuda", generator=generator).to(torch.float16)
    expected = chain_in_torch(chain)(x, kernel, bias, residual)
    chains = CudnnChains(torch.float16)
    try:
        graph, tensors = chains._graph(chain, x, kernel, residual)
    except Exception as error:  # noqa: BLE001 - cuDNN raises several types for "not supported"
        if activation in ("relu", None):
            raise
        pytest.skip(f"cuDNN has no plan for a chain with {activation}: {error}")
    ran = 0
    for index in range(graph.get_execution_plan_count()):
        try:
            graph.build_plan_at_index(index)
        except Exception:  # noqa: BLE001 - not every listed plan builds for every shape
            continue
        computed = chains._executor(graph, tensors, index, chain)(x, kernel, bias, residual)
        torch.testing.assert_close(computed, expected, atol=0.02, rtol=0.01)
        ran += 1
    assert ran > 0


# The activations of Scaled-YOLOv4 and YOLOv7 after convolutions: mish, swish (Sigmoid and Mul in
# the graph, a residual after it) and logistic; 18 output channels, padded for tensor cores.
ACTIVATIONS_CFG = """
[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=swish

[shortcut]
from=-2
activation=linear

[convolutional]
batch_normalize=1
filters=16
size=1
stride=1
pad=1
activation=logistic

[convolutional]
size=1
stride=1
pad=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=1
num=3
"""


def test_chains_take_in_mish_swish_and_logistic(synthetic_weights, tmp_path):
    cfg = tmp_path / "activations.cfg"
    cfg.write_text(ACTIVATIONS_CFG)
    onnx_path = tmp_path / "activations.onnx"
    convert(cfg, synthetic_weights(cfg), onnx_path, (32, 32))
    images = torch.from_numpy(mixed_batch(32, 32))
    for multiple in (1, 8):
        module, chains = _fused_module(onnx_path, channel_multiple=multiple)
        assert [(c.activation, c.residual) for c in chains] == [
            ("mish", False),
            ("swish", True),
            ("sigmoid", False),
            (None, False),
        ]
        with torch.inference_mode():
            torch.testing.assert_close(
                module(images), onnx_module(onnx_path, multiple)(images), rtol=0, atol=1e-5
            )


def _chain_graph(tmp_path, nodes, constants):
    """A hand-made graph over a [batch, 4, 6, 6] input: a GlobalAveragePool of it ("pooled"),
    the Conv "conv" ([batch, 4, 6, 6] "y"), then `nodes`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "kernel": rng.standard_normal((4, 4, 3, 3)).astype(np.float32) * 0.3,
        "bias": rng.standard_normal(4).astype(np.float32),
        **constants,
    }
    conv = helper.make_node(
        "Conv", ["images", "kernel", "bias"], ["y"], "conv", kernel_shape=[3, 3], pads=[1] * 4
    )
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 4, 6, 6])
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    initializers = [numpy_helper.from_array(value, name) for name, value in weights.items()]
    pool = helper.make_node("GlobalAveragePool", ["images"], ["pooled"])
    graph = helper.make_graph([pool, conv, *nodes], "chain", [images], [output], initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = tmp_path / "chain.onnx"
    onnx.save(model, path)
    return path


def _node(op, inputs, output):
    from onnx import helper

    return helper.make_node(op, inputs, [output], output)


CHAIN_CASES = {
    # Darknet's scale_channels: the convolution's output is scaled per channel, not added.
    "scaled-by-a-gate": (
        [
            _node("Sigmoid", ["pooled"], "gate"),
            _node("Mul", ["y", "gate"], "out"),
        ],
        {},
        (None, False),
    ),
    # A logistic activation whose output gates another tensor: the Mul stays outside.
    "logistic-gating-the-input": (
        [_node("Sigmoid", ["y"], "gate"), _node("Mul", ["images", "gate"], "out")],
        {},
        ("sigmoid", False),
    ),
    # An Add that broadcasts a per-channel tensor is no residual of the convolution's shape.
    "broadcast-add": (
        [
            _node("Tanh", ["y"], "t"),
            _node("Add", ["t", "pooled"], "out"),
        ],
        {},
        ("tanh", False),
    ),
    "constant-add": (
        [_node("Add", ["y", "offset"], "out")],
        {"offset": np.full((1, 4, 1, 1), 0.5, dtype=np.float32)},
        (None, False),
    ),
    # The convolution's output read twice (a swish look-alike whose Mul takes another tensor).
    "sigmoid-and-another-use": (
        [_node("Sigmoid", ["y"], "s"), _node("Mul", ["s", "images"], "m"), _node("Add", ["m", "y"], "out")],
        {},
        (None, False),
    ),
    "swish-then-residual": (
        [_node("Sigmoid", ["y"], "s"), _node("Mul", ["s", "y"], "m"), _node("Add", ["images", "m"], "out")],
        {},
        ("swish", True),
    ),
}


@pytest.mark.parametrize("case", CHAIN_CASES.values(), ids=CHAIN_CASES.keys())
def test_chains_take_in_only_what_they_compute(tmp_path, case):
    nodes, constants, expected = case
    path = _chain_graph(tmp_path, nodes, constants)
    module, chains = _fused_module(path, channel_multiple=1)
    assert [(c.activation, c.residual) for c in chains] == [expected]
    images = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32))
    with torch.inference_mode():
        torch.testing.assert_close(module(images), onnx_module(path)(images), rtol=0, atol=1e-6)
