"""Each ONNX op the torch engines run, on small hand-made graphs, against ONNX Runtime in fp32."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from yoloforge.backends.torch_graph import onnx_module
from yoloforge.errors import YoloforgeError

torch = pytest.importorskip("torch")
onnxruntime = pytest.importorskip("onnxruntime")

SHAPE = (2, 4, 7, 6)  # odd sizes, so that strides and pads meet edges unevenly


def _constant(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _save(tmp_path, nodes, constants=(), shape=SHAPE, opset=18):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", *shape[1:]])
    output = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "ops", [images], [output], initializer=list(constants))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    path = tmp_path / "ops.onnx"
    onnx.save(model, path)
    return path


def _agree(path, shape=SHAPE, positive=False) -> None:
    values = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if positive:
        values = np.abs(values) + 0.1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"images": values})[0]
    with torch.inference_mode():
        found = onnx_module(path)(torch.from_numpy(values)).numpy()
    assert found.shape == expected.shape
    np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-5)


RNG = np.random.default_rng(1)
PER_CHANNEL = RNG.standard_normal((1, 4, 1, 1)).astype(np.float32)
PER_COLUMN = RNG.standard_normal(6).astype(np.float32)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize(
    "operand", [np.float32(0.75), PER_CHANNEL, PER_COLUMN], ids=["scalar", "per-channel", "per-column"]
)
def test_binary_ops_broadcast_constants(tmp_path, op, operand):
    nodes = [
        helper.make_node(op, ["images", "operand"], ["left"]),
        helper.make_node(op, ["operand", "left"], ["out"]),  # the constant first, too
    ]
    _agree(_save(tmp_path, nodes, [_constant("operand", operand)]))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_ops_broadcast_computed_tensors(tmp_path, op):
    """The per-channel operand of scale_channels: a pooled [N, C, 1, 1] against [N, C, H, W]."""
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Sigmoid", ["pooled"], ["gate"]),
        helper.make_node(op, ["images", "gate"], ["out"]),
    ]
    _agree(_save(tmp_path, nodes))


@pytest.mark.parametrize(
    "exponent", [np.float32(2.0), np.float32(0.5), PER_CHANNEL], ids=["square", "root", "per-channel"]
)
def test_pow_by_a_constant(tmp_path, exponent):
    nodes = [helper.make_node("Pow", ["images", "exponent"], ["out"])]
    _agree(_save(tmp_path, nodes, [_constant("exponent", exponent)]), positive=True)


def test_pow_by_a_computed_exponent(tmp_path):
    nodes = [
        helper.make_node("Sigmoid", ["images"], ["exponent"]),
        helper.make_node("Pow", ["images", "exponent"], ["out"]),
    ]
    _agree(_save(tmp_path, nodes), positive=True)


@pytest.mark.parametrize("op", ["Sigmoid", "Tanh", "Exp", "Relu", "Mish", "Identity"])
def test_unary_ops(tmp_path, op):
    _agree(_save(tmp_path, [helper.make_node(op, ["images"], ["out"])]))


def test_leaky_relu_slope(tmp_path):
    _agree(_save(tmp_path, [helper.make_node("LeakyRelu", ["images"], ["out"], alpha=0.1)]))


@pytest.mark.parametrize("axis", [None, 1, 2, -2])
def test_softmax_over_one_axis(tmp_path, axis):
    attributes = {} if axis is None else {"axis": axis}
    _agree(_save(tmp_path, [helper.make_node("Softmax", ["images"], ["out"], **attributes)]))


def test_softmax_of_an_older_opset_is_refused(tmp_path):
    """Before opset 13 Softmax normalized over every axis from `axis` on."""
    path = _save(tmp_path, [helper.make_node("Softmax", ["images"], ["out"], axis=1)], opset=12)
    with pytest.raises(YoloforgeError, match="Softmax of opset 12"):
        onnx_module(path)


CONV_SETTINGS = {
    "stride-per-axis": {"strides": [2, 1], "pads": [1, 1, 1, 1]},
    "asymmetric-pads": {"strides": [2, 2], "pads": [0, 1, 1, 0]},
    "grouped": {"group": 2, "pads": [1, 1, 1, 1]},
    "depthwise-dilated": {"group": 4, "dilations": [2, 2], "pads": [2, 2, 2, 2]},
}


@pytest.mark.parametrize("settings", CONV_SETTINGS.values(), ids=CONV_SETTINGS.keys())
@pytest.mark.parametrize("bias", [True, False])
def test_conv(tmp_path, settings, bias):
    groups = settings.get("group", 1)
    kernel = RNG.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    constants = [_constant("kernel", kernel)]
    inputs = ["images", "kernel"]
    if bias:
        constants.append(_constant("bias", RNG.standard_normal(8).astype(np.float32)))
        inputs.append("bias")
    node = helper.make_node("Conv", inputs, ["out"], kernel_shape=[3, 3], **settings)
    _agree(_save(tmp_path, [node], constants))


POOLS = {
    "darknet-stride-1": {"kernel_shape": [2, 2], "strides": [1, 1], "pads": [0, 0, 1, 1]},
    "stride-per-axis": {"kernel_shape": [2, 2], "strides": [2, 1], "pads": [0, 0, 1, 1]},
    "symmetric": {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]},
    "ceil": {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1},
    "wide-pads": {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1]},
}


@pytest.mark.parametrize("settings", POOLS.values(), ids=POOLS.keys())
def test_max_pool(tmp_path, settings):
    _agree(_save(tmp_path, [helper.make_node("MaxPool", ["images"], ["out"], **settings)]))


@pytest.mark.parametrize("settings", POOLS.values(), ids=POOLS.keys())
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool(tmp_path, settings, count_include_pad):
    node = helper.make_node(
        "AveragePool", ["images"], ["out"], count_include_pad=count_include_pad, **settings
    )
    _agree(_save(tmp_path, [node]))


def test_global_average_pool(tmp_path):
    _agree(_save(tmp_path, [helper.make_node("GlobalAveragePool", ["images"], ["out"])]))


@pytest.mark.parametrize("axes", [[2, 3], [1], [-1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean(tmp_path, axes, keepdims):
    node = helper.make_node("ReduceMean", ["images", "axes"], ["out"], keepdims=keepdims)
    _agree(_save(tmp_path, [node], [_constant("axes", np.array(axes, dtype=np.int64))]))


def test_reduce_mean_of_opset_13_reads_axes_from_the_attribute(tmp_path):
    node = helper.make_node("ReduceMean", ["images"], ["out"], axes=[2, 3], keepdims=1)
    _agree(_save(tmp_path, [node], opset=13))


@pytest.mark.parametrize(
    "pads, axes",
    [
        ([0, 0, 0, 0, 0, 0, 1, 1], None),  # Darknet's bottom-right
        ([0, 2, 1, 0, 0, 1, 0, 3], None),  # channels too
        ([1, 0, 2, 1], [2, 3]),  # by axes
        ([0, 0, -1, 1, 0, 0, 1, -2], None),  # negative: crops
    ],
)
def test_pad_constant(tmp_path, pads, axes):
    inputs = ["images", "pads", "value"]
    constants = [_constant("pads", np.array(pads, dtype=np.int64)), _constant("value", np.float32(-0.25))]
    if axes is not None:
        inputs.append("axes")
        constants.append(_constant("axes", np.array(axes, dtype=np.int64)))
    _agree(_save(tmp_path, [helper.make_node("Pad", inputs, ["out"], mode="constant")], constants))


def test_pad_in_another_mode_is_refused(tmp_path):
    pads = _constant("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], dtype=np.int64))
    path = _save(tmp_path, [helper.make_node("Pad", ["images", "pads"], ["out"], mode="reflect")], [pads])
    with pytest.raises(YoloforgeError, match="Pad in mode reflect"):
        onnx_module(path)


def test_layout_ops(tmp_path):
    """Reshape, Transpose, Split (by sizes and in equal parts), Concat and Slice (negative axes,
    steps): the moves of the YOLO heads and of Darknet's reorg."""
    constants = [
        _constant("grouped_shape", np.array([-1, 2, 2, 7, 6], dtype=np.int64)),
        _constant("shape", np.array([-1, 4, 7, 6], dtype=np.int64)),
        _constant("sizes", np.array([1, 3], dtype=np.int64)),
        _constant("starts", np.array([1, 0], dtype=np.int64)),
        _constant("ends", np.array([7, 100], dtype=np.int64)),
        _constant("axes", np.array([-2, -1], dtype=np.int64)),
        _constant("steps", np.array([2, 3], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Reshape", ["images", "grouped_shape"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "shape"], ["shuffled"]),
        helper.make_node("Split", ["shuffled", "sizes"], ["first", "rest"], axis=1),
        helper.make_node("Split", ["rest"], ["top", "bottom"], axis=2, num_outputs=2),
        helper.make_node("Concat", ["bottom", "top"], ["rolled"], axis=2),
        helper.make_node("Concat", ["rolled", "first"], ["joined"], axis=1),
        helper.make_node("Slice", ["joined", "starts", "ends", "axes", "steps"], ["out"]),
    ]
    _agree(_save(tmp_path, nodes, constants))


def test_the_new_ops_export_with_a_dynamic_batch(tmp_path):
    """torch.export (torch-aoti's first step) traces them with the batch left symbolic."""
    constants = [
        _constant("pads", np.array([0, 0, 0, 1, 0, 0, 1, 0], dtype=np.int64)),
        _constant("widen", RNG.standard_normal((6, 4, 1, 1)).astype(np.float32)),
        _constant("kernel", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        _constant("two", np.float32(2.0)),
        _constant("half", np.float32(0.5)),
        _constant("axes", np.array([2, 3], dtype=np.int64)),
    ]
    nodes = [
        helper.make_node("Pad", ["images", "pads"], ["padded"]),
        helper.make_node("AveragePool", ["padded"], ["pooled"], kernel_shape=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Conv", ["pooled", "widen"], ["wide"], kernel_shape=[1, 1]),
        helper.make_node("Conv", ["wide", "kernel"], ["conv"], kernel_shape=[3, 3], group=2, strides=[2, 1]),
        helper.make_node("Softmax", ["conv"], ["soft"], axis=1),
        helper.make_node("Pow", ["soft", "two"], ["squared"]),
        helper.make_node("Sub", ["squared", "half"], ["shifted"]),
        helper.make_node("Div", ["shifted", "two"], ["halved"]),
        helper.make_node("Tanh", ["halved"], ["bent"]),
        helper.make_node("ReduceMean", ["bent", "axes"], ["mean"], keepdims=1),
        helper.make_node("GlobalAveragePool", ["bent"], ["global"]),
        helper.make_node("Mul", ["mean", "global"], ["product"]),
        helper.make_node("Mul", ["bent", "product"], ["scaled"]),
        helper.make_node("Split", ["scaled"], ["left", "right"], axis=1, num_outputs=2),
        helper.make_node("Add", ["left", "right"], ["out"]),
    ]
    path = _save(tmp_path, nodes, constants)
    _agree(path)
    module = onnx_module(path)
    images = torch.from_numpy(np.random.default_rng(2).standard_normal((3, *SHAPE[1:])).astype(np.float32))
    batch = torch.export.Dim("batch", min=1, max=64)
    exported = torch.export.export(module, (images,), dynamic_shapes={"images": {0: batch}})
    with torch.inference_mode():
        torch.testing.assert_close(exported.module()(images[:2]), module(images[:2]), rtol=0, atol=1e-6)
        # Channels padded for tensor cores (6 to 8; the grouped convolution is left as it is) change nothing.
        padded = onnx_module(path, channel_multiple=8)
        torch.testing.assert_close(padded(images), module(images), rtol=0, atol=1e-6)
    assert {tuple(buffer.shape[:2]) for buffer in padded.buffers() if buffer.dim() == 4} == {(8, 8), (4, 3)}
