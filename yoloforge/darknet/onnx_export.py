"""Darknet network + weights -> ONNX, the hub format every engine is built from.

Contract of the graph: input `images` float32 [N, 3, H, W], RGB in [0, 1]; output `detections`
float32 [N, boxes, 5 + classes] with cx, cy, w, h normalized to the input, objectness, and class
probabilities (not multiplied by objectness). Each head's boxes are ordered by grid row, grid
column, then anchor, and heads are concatenated in cfg order. The metadata says how the images
must be prepared: `letter_box` "1" (letterboxed, aspect kept) or "0" (stretched to the input).

Each layer kind writes its own nodes (yoloforge.darknet.layers); this module chains them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from yoloforge import __version__
from yoloforge.darknet.cfg import Layer, Network
from yoloforge.darknet.layers.base import BATCHNORM_EPSILON, LEAKY_SLOPE, GraphBuilder, LayerParams

__all__ = ["BATCHNORM_EPSILON", "LEAKY_SLOPE", "export_onnx", "folded_convolution"]

OPSET = 18  # Mish is an ONNX operator from opset 18 on
INPUT_NAME = "images"
OUTPUT_NAME = "detections"


def folded_convolution(layer: Layer, params: LayerParams) -> tuple[np.ndarray, np.ndarray]:
    """Convolution kernel and bias with Darknet's batch normalization folded in, in float64."""
    return layer.folded(params)


def export_onnx(
    network: Network,
    params: list[LayerParams],
    width: int | None = None,
    height: int | None = None,
    metadata: dict[str, str] | None = None,
    expose: tuple[int, ...] = (),
) -> onnx.ModelProto:
    """Build the ONNX graph for `network` at width x height (default: the cfg's size).

    `expose` lists layers whose outputs become extra graph outputs named `layer<index>`, to
    check a layer's arithmetic on its own.
    """
    width = width or network.width
    height = height or network.height
    shapes = network.shapes(width, height)
    graph = GraphBuilder()
    outputs: list[str] = []
    heads: list[str] = []
    boxes = 0
    for layer, layer_params, shape in zip(network.layers, params, shapes, strict=True):
        sources = [INPUT_NAME if i < 0 else outputs[i] for i in layer.inputs]
        inputs = [shapes[i] if i >= 0 else (network.channels, height, width) for i in layer.inputs]
        outputs.append(layer.to_onnx(graph, sources, layer_params, inputs))
        if layer.is_head:
            heads.append(layer.decode(graph, outputs[-1], shape, width, height))
            boxes += layer.boxes(shape)

    if len(heads) == 1:
        graph.node("Identity", heads, OUTPUT_NAME)
    else:
        graph.node("Concat", heads, OUTPUT_NAME, axis=1)
    exposed = []
    for index in expose:
        graph.node("Identity", [outputs[index]], f"layer{index}")
        exposed.append(helper.make_tensor_value_info(f"layer{index}", TensorProto.FLOAT, None))
    images = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.FLOAT, ["batch", network.channels, height, width]
    )
    detections = helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.FLOAT, ["batch", boxes, 5 + network.classes]
    )
    onnx_graph = helper.make_graph(
        graph.nodes, "darknet", [images], [detections, *exposed], initializer=graph.initializers
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="yoloforge",
        producer_version=__version__,
    )
    model.ir_version = 9  # readable by every onnxruntime release that implements opset 18
    properties = {"width": str(width), "height": str(height), "letter_box": str(int(network.letter_box))}
    helper.set_model_props(model, {**properties, **(metadata or {})})
    return model
