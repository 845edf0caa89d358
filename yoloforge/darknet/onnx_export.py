"""Darknet network + weights -> ONNX, the hub format every engine is built from.

Contract of the graph: input `images` float32 [N, 3, H, W], RGB in [0, 1]; output `detections`
float32 [N, boxes, 5 + classes] with cx, cy, w, h normalized to the input, objectness, and class
probabilities (not multiplied by objectness). Each head's boxes are ordered by grid row, grid
column, then anchor, and heads are concatenated in cfg order.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from yoloforge import __version__
from yoloforge.darknet.cfg import Layer, Network
from yoloforge.darknet.weights import LayerParams

OPSET = 18  # Mish is an ONNX operator from opset 18 on
INPUT_NAME = "images"
OUTPUT_NAME = "detections"
LEAKY_SLOPE = 0.1
# Batch norm at inference is (x - mean) / sqrt(variance + 1e-6), as OpenCV's Darknet reader
# computes it. Darknet forks differ (pjreddie: sqrt(variance) + 1e-6; AlexeyAB: sqrt(variance +
# 1e-5)); the three agree to 1e-4 relative wherever the variance is above 1e-2, as in trained weights.
BATCHNORM_EPSILON = 1e-6


class _GraphBuilder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: int = 1, **attrs) -> list[str]:
        names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=name, **attrs))
        return names

    def op(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        return self.node(op, inputs, name, **attrs)[0]


def _activation(graph: _GraphBuilder, activation: str, x: str, name: str) -> str:
    if activation == "linear":
        return x
    if activation == "leaky":
        return graph.op("LeakyRelu", [x], f"{name}_leaky", alpha=LEAKY_SLOPE)
    if activation == "relu":
        return graph.op("Relu", [x], f"{name}_relu")
    if activation == "logistic":
        return graph.op("Sigmoid", [x], f"{name}_logistic")
    if activation == "mish":
        return graph.op("Mish", [x], f"{name}_mish")
    if activation == "swish":
        gate = graph.op("Sigmoid", [x], f"{name}_swish_gate")
        return graph.op("Mul", [x, gate], f"{name}_swish")
    raise ValueError(f"unknown activation {activation}")


def folded_convolution(layer: Layer, params: LayerParams) -> tuple[np.ndarray, np.ndarray]:
    """Convolution kernel and bias with Darknet's batch normalization folded in, in float64."""
    kernel = (
        params["weights"]
        .astype(np.float64)
        .reshape(layer.filters, layer.in_channels // layer.groups, layer.size, layer.size)
    )
    bias = params["biases"].astype(np.float64)
    if layer.batch_normalize:
        factor = params["scales"] / np.sqrt(params["variance"].astype(np.float64) + BATCHNORM_EPSILON)
        kernel = kernel * factor[:, None, None, None]
        bias = bias - params["mean"] * factor
    return kernel, bias


def _yolo_head(graph: _GraphBuilder, layer: Layer, x: str, shape, width: int, height: int) -> str:
    _, grid_h, grid_w = shape
    anchors = len(layer.anchors)
    attributes = 5 + layer.classes
    boxes = grid_h * grid_w * anchors
    name = f"layer{layer.index}_yolo"
    split = graph.op(
        "Reshape",
        [x, graph.constant(f"{name}_split_shape", np.array([-1, anchors, attributes, grid_h, grid_w]))],
        f"{name}_by_anchor",
    )
    cells_last = graph.op("Transpose", [split], f"{name}_cells_first", perm=[0, 3, 4, 1, 2])
    rows = graph.op(
        "Reshape",
        [cells_last, graph.constant(f"{name}_rows_shape", np.array([-1, boxes, attributes]))],
        f"{name}_rows",
    )
    xy, wh, scores = graph.node(
        "Split",
        [rows, graph.constant(f"{name}_split_sizes", np.array([2, 2, 1 + layer.classes]))],
        f"{name}_parts",
        outputs=3,
        axis=2,
    )
    # Per-row constants, so the decode is a fixed elementwise affine map of the raw outputs.
    cell_y, cell_x, _ = np.meshgrid(np.arange(grid_h), np.arange(grid_w), np.arange(anchors), indexing="ij")
    grid = np.stack([cell_x.reshape(-1), cell_y.reshape(-1)], axis=1).astype(np.float64)
    scale = layer.scale_x_y
    grid_size = np.array([grid_w, grid_h], dtype=np.float64)
    xy_offset = ((grid - (scale - 1) / 2) / grid_size)[None].astype(np.float32)
    xy_gain = (scale / grid_size)[None, None].astype(np.float32)
    anchor_wh = np.array(layer.anchors, dtype=np.float64) / np.array([width, height])
    wh_gain = np.tile(anchor_wh, (grid_h * grid_w, 1))[None].astype(np.float32)

    xy = graph.op("Sigmoid", [xy], f"{name}_xy_sigmoid")
    xy = graph.op("Mul", [xy, graph.constant(f"{name}_xy_gain", xy_gain)], f"{name}_xy_scaled")
    xy = graph.op("Add", [xy, graph.constant(f"{name}_xy_offset", xy_offset)], f"{name}_xy")
    wh = graph.op("Exp", [wh], f"{name}_wh_exp")
    wh = graph.op("Mul", [wh, graph.constant(f"{name}_anchors", wh_gain)], f"{name}_wh")
    scores = graph.op("Sigmoid", [scores], f"{name}_scores")
    return graph.op("Concat", [xy, wh, scores], f"{name}_out", axis=2)


def export_onnx(
    network: Network,
    params: list[LayerParams],
    width: int | None = None,
    height: int | None = None,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Build the ONNX graph for `network` at width x height (default: the cfg's size)."""
    width = width or network.width
    height = height or network.height
    shapes = network.shapes(width, height)
    graph = _GraphBuilder()
    outputs: list[str] = []
    heads: list[str] = []
    boxes = 0
    for layer, layer_params, shape in zip(network.layers, params, shapes, strict=True):
        sources = [INPUT_NAME if i < 0 else outputs[i] for i in layer.inputs]
        name = f"layer{layer.index}_{layer.kind}"
        if layer.kind == "convolutional":
            kernel, bias = folded_convolution(layer, layer_params)
            y = graph.op(
                "Conv",
                [
                    sources[0],
                    graph.constant(f"{name}_kernel", kernel.astype(np.float32)),
                    graph.constant(f"{name}_bias", bias.astype(np.float32)),
                ],
                name,
                kernel_shape=[layer.size, layer.size],
                strides=[layer.stride, layer.stride],
                pads=[layer.padding] * 4,
                group=layer.groups,
            )
            y = _activation(graph, layer.activation, y, name)
        elif layer.kind == "shortcut":
            y = _activation(graph, layer.activation, graph.op("Add", sources, name), name)
        elif layer.kind == "route":
            parts = []
            for source, index in zip(sources, layer.inputs, strict=True):
                channels = shapes[index][0] // layer.route_groups
                if layer.route_groups == 1:
                    parts.append(source)
                    continue
                start = channels * layer.route_group_id
                parts.append(
                    graph.op(
                        "Slice",
                        [
                            source,
                            graph.constant(f"{name}_{index}_start", np.array([start])),
                            graph.constant(f"{name}_{index}_end", np.array([start + channels])),
                            graph.constant(f"{name}_{index}_axis", np.array([1])),
                        ],
                        f"{name}_{index}_group",
                    )
                )
            y = parts[0] if len(parts) == 1 else graph.op("Concat", parts, name, axis=1)
        elif layer.kind == "upsample":
            scales = np.array([1, 1, layer.stride, layer.stride], dtype=np.float32)
            y = graph.op(
                "Resize",
                [sources[0], "", graph.constant(f"{name}_scales", scales)],
                name,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        elif layer.kind == "maxpool":
            before = layer.padding // 2  # Darknet pads the extra row/column at the bottom/right
            after = layer.padding - before
            y = graph.op(
                "MaxPool",
                sources[:1],
                name,
                kernel_shape=[layer.size, layer.size],
                strides=[layer.stride, layer.stride],
                pads=[before, before, after, after],
            )
        elif layer.kind == "yolo":
            y = sources[0]
            heads.append(_yolo_head(graph, layer, y, shape, width, height))
            boxes += shape[1] * shape[2] * len(layer.anchors)
        else:
            raise ValueError(f"unhandled layer kind {layer.kind}")
        outputs.append(y)

    if len(heads) == 1:
        graph.node("Identity", heads, OUTPUT_NAME)
    else:
        graph.node("Concat", heads, OUTPUT_NAME, axis=1)
    images = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", network.channels, height, width]
    )
    detections = helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.FLOAT, ["batch", boxes, 5 + network.classes]
    )
    onnx_graph = helper.make_graph(
        graph.nodes, "darknet", [images], [detections], initializer=graph.initializers
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="yoloforge",
        producer_version=__version__,
    )
    model.ir_version = 9  # readable by every onnxruntime release that implements opset 18
    helper.set_model_props(model, {"width": str(width), "height": str(height), **(metadata or {})})
    return model
