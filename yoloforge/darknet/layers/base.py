"""What every Darknet layer kind declares, and the helpers the kinds share.

A kind is one subclass of `Layer` in one module of this package. It declares, in one place:
- `parse`: how it reads its cfg section (refusing what it cannot convert);
- `output_shape`: its (channels, height, width) for the shapes of its inputs;
- `parameter_counts`: the float32 arrays it reads from a weights file, in file order;
- `to_onnx`: the ONNX nodes that compute it;
- `forward` (NumPy, float32) and `synthesize`: what synthetic weights are calibrated with.
A detection head also declares `decode` (its rows of the `detections` output) and `head_logits`
(the roles of the raw outputs of the convolution before it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import helper, numpy_helper

from yoloforge.darknet.sections import Section

LayerParams = dict[str, np.ndarray]
Shape = tuple[int, int, int]  # channels, height, width

LEAKY_SLOPE = 0.1
# Batch norm at inference is (x - mean) / sqrt(variance + 1e-6), as OpenCV's Darknet reader
# computes it. Darknet forks differ (pjreddie: sqrt(variance) + 1e-6; AlexeyAB: sqrt(variance +
# 1e-5)); the three agree to 1e-4 relative wherever the variance is above 1e-2, as in trained weights.
BATCHNORM_EPSILON = 1e-6


class GraphBuilder:
    """Collects ONNX nodes and initializers; names are unique per layer by construction."""

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

    def slice_channels(self, x: str, start: int, end: int, name: str) -> str:
        return self.op(
            "Slice",
            [
                x,
                self.constant(f"{name}_start", np.array([start])),
                self.constant(f"{name}_end", np.array([end])),
                self.constant(f"{name}_axis", np.array([1])),
            ],
            name,
        )

    def reshape(self, x: str, shape: list[int], name: str) -> str:
        return self.op("Reshape", [x, self.constant(f"{name}_shape", np.array(shape))], name)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# Each activation Darknet names, as (ONNX nodes, NumPy). Darknet falls back to relu for a name it
# does not know; the converter refuses it instead.
def _onnx_swish(graph: GraphBuilder, x: str, name: str) -> str:
    return graph.op("Mul", [x, graph.op("Sigmoid", [x], f"{name}_gate")], name)


ACTIVATIONS: dict[str, tuple[Callable[[GraphBuilder, str, str], str], Callable[[np.ndarray], np.ndarray]]] = {
    "linear": (lambda graph, x, name: x, lambda x: x),
    "leaky": (
        lambda graph, x, name: graph.op("LeakyRelu", [x], name, alpha=LEAKY_SLOPE),
        lambda x: np.where(x > 0, x, LEAKY_SLOPE * x),
    ),
    "relu": (lambda graph, x, name: graph.op("Relu", [x], name), lambda x: np.maximum(x, 0)),
    "logistic": (lambda graph, x, name: graph.op("Sigmoid", [x], name), _sigmoid),
    "tanh": (lambda graph, x, name: graph.op("Tanh", [x], name), np.tanh),
    "mish": (lambda graph, x, name: graph.op("Mish", [x], name), lambda x: x * np.tanh(np.logaddexp(0, x))),
    "swish": (_onnx_swish, lambda x: x / (1 + np.exp(-x))),
}


def onnx_activation(graph: GraphBuilder, activation: str, x: str, name: str) -> str:
    return ACTIVATIONS[activation][0](graph, x, f"{name}_{activation}")


def numpy_activation(activation: str, x: np.ndarray) -> np.ndarray:
    return ACTIVATIONS[activation][1](x)


def read_activation(section: Section, default: str) -> str:
    activation = section.get_str("activation", default)
    if activation not in ACTIVATIONS:
        section.refuse(f"unknown activation {activation!r} (supported: {', '.join(ACTIVATIONS)})")
        return "linear"
    return activation


def read_elementwise_activation(section: Section) -> str:
    """The activation of a layer that multiplies outputs ([sam], [scale_channels]): Darknet
    applies it with activate_array, which computes swish and mish as 0 (they are layer-level
    activations of [convolutional] and [shortcut] only), so those are refused."""
    activation = read_activation(section, "linear")
    if activation in ("swish", "mish"):
        section.refuse(f"activation={activation}: Darknet computes it as 0 after this layer")
    return activation


def sliding_windows(
    x: np.ndarray, size: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int], fill=0.0
) -> np.ndarray:
    """[N, C, out_h, out_w, size_h, size_w] windows of x padded by (top, left, bottom, right)."""
    top, left, bottom, right = pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=fill)
    return sliding_window_view(padded, size, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]


def convolve(
    x: np.ndarray, kernel: np.ndarray, stride: tuple[int, int], padding: int, groups: int
) -> np.ndarray:
    """Grouped 2-D convolution in NumPy; stride is (y, x)."""
    batch = x.shape[0]
    filters, group_channels, size, _ = kernel.shape
    windows = sliding_windows(x, (size, size), stride, (padding,) * 4)
    out_h, out_w = windows.shape[2:4]
    per_group = filters // groups
    outputs = []
    for group in range(groups):
        columns = windows[:, group * group_channels : (group + 1) * group_channels]
        columns = columns.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, -1)
        weights = kernel[group * per_group : (group + 1) * per_group].reshape(per_group, -1)
        outputs.append((columns @ weights.T).reshape(batch, out_h, out_w, per_group))
    return np.concatenate(outputs, axis=3).transpose(0, 3, 1, 2)


@dataclass
class ParseContext:
    """What a kind may know while parsing: its index and the channels of the layers before it."""

    index: int
    channels: list[int]  # out channels of layers 0 .. index-1
    input_channels: int  # of the network's input

    @property
    def previous(self) -> int:
        return self.index - 1

    def channels_of(self, layer: int) -> int:
        return self.input_channels if layer < 0 else self.channels[layer]

    def resolve(self, section: Section, reference: int) -> int:
        """A `layers=`/`from=` value (relative if negative) -> an absolute layer index."""
        resolved = self.index + reference if reference < 0 else reference
        if not 0 <= resolved < self.index:
            raise section.fail(f"refers to layer {reference}, which does not exist (layer {self.index})")
        return resolved


@dataclass
class Layer:
    """One layer of the network; each Darknet layer kind is a subclass (see the module docstring)."""

    index: int
    section: Section
    inputs: list[int]  # indices of the layers whose outputs this layer reads; -1 is the image
    in_channels: int  # of inputs[0]
    out_channels: int
    activation: str = "linear"

    kind: ClassVar[str]
    section_names: ClassVar[tuple[str, ...]]
    is_head: ClassVar[bool] = False

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Layer:
        """Read the section; raise section.fail() for what stops parsing, section.refuse() the rest."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return f"layer{self.index}_{self.kind}"

    def output_shape(self, inputs: list[Shape]) -> Shape:
        """The output's (channels, height, width); the default keeps the first input's size."""
        return (self.out_channels, *inputs[0][1:])

    def parameter_counts(self) -> list[tuple[str, int]]:
        """The arrays this layer reads from a weights file, in file order, with their lengths."""
        return []

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        raise NotImplementedError

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        raise NotImplementedError

    def synthesize(
        self,
        inputs: list[np.ndarray],
        rng: np.random.Generator,
        following: Layer | None,
        kernel_mean: float = 0.0,
    ) -> tuple[LayerParams, np.ndarray]:
        """Synthetic parameters calibrated on `inputs`, and the output they give; `kernel_mean`
        is a common part of every normalized kernel (see synthetic.synthetic_params)."""
        return {}, self.forward(inputs, {})

    # Detection heads only (is_head), which also have a `classes` field.
    def decode(self, graph: GraphBuilder, source: str, shape: Shape, width: int, height: int) -> str:
        raise NotImplementedError

    def boxes(self, shape: Shape) -> int:
        raise NotImplementedError

    def head_logits(self, biases: np.ndarray, spreads: np.ndarray) -> None:
        """Set the bias and spread of each raw output of the convolution feeding this head."""
        raise NotImplementedError
