"""Our ONNX graph as a `torch.nn.Module` with every shape and attribute fixed at build time.

Only the operators the converter emits are supported. Constant inputs that steer an op (shapes,
split sizes, slice bounds, resize scales) are read once here as Python numbers, so `forward`
is straight-line tensor code that `torch.export` traces without guards on tensor values; the
only symbolic size left is the batch, which every Reshape keeps as -1.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from yoloforge.errors import YoloforgeError

# An op's maker gets the node, its attributes and a reader for constant inputs; it returns the
# function to run and the names of the inputs that stay tensors at run time.
Maker = Callable[[Any, dict[str, Any], Callable[[str], np.ndarray]], tuple[Callable[..., Any], list[str]]]


def _begin_end(pads: list[int]) -> tuple[list[int], list[int]]:
    """ONNX pads list every axis's begin, then every axis's end."""
    half = len(pads) // 2
    return pads[:half], pads[half:]


def _torch_pad(begin: list[int], end: list[int]) -> tuple[int, ...]:
    """F.pad's order: last axis first, begin before end."""
    return tuple(value for b, e in zip(reversed(begin), reversed(end), strict=True) for value in (b, e))


def _check_2d(node, attrs: dict[str, Any], kernel_rank: int) -> None:
    if kernel_rank != 2:
        raise ValueError(f"{node.op_type} over {kernel_rank} spatial axes (only 2)")
    if attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
        raise ValueError(f"{node.op_type} with auto_pad={attrs['auto_pad']!r}")


def _conv(node, attrs, const):
    _check_2d(node, attrs, const(node.input[1]).ndim - 2)
    begin, end = _begin_end(attrs.get("pads", [0, 0, 0, 0]))
    stride = attrs.get("strides", [1, 1])
    dilation = attrs.get("dilations", [1, 1])
    return _convolution(begin, end, stride, dilation, attrs.get("group", 1)), node.input


def _convolution(begin: list[int], end: list[int], stride, dilation, groups: int = 1):
    """conv2d(x, kernel, bias) with ONNX's pads; asymmetric ones as an explicit pad first."""
    import torch.nn.functional as F

    if begin == end:
        return lambda x, w, b=None: F.conv2d(x, w, b, stride, begin, dilation, groups)
    pad = _torch_pad(begin, end)
    return lambda x, w, b=None: F.conv2d(F.pad(x, pad), w, b, stride, 0, dilation, groups)


def _pool_settings(node, attrs) -> tuple[list[int], list[int], list[int], list[int], bool]:
    """A 2-D pool's kernel, strides, pads' begin and end, and ceil_mode."""
    kernel = attrs["kernel_shape"]
    _check_2d(node, attrs, len(kernel))
    if len(node.output) > 1 and node.output[1]:
        raise ValueError(f"{node.op_type} with an indices output")
    begin, end = _begin_end(attrs.get("pads", [0, 0, 0, 0]))
    return kernel, attrs.get("strides", [1, 1]), begin, end, bool(attrs.get("ceil_mode", 0))


def _symmetric_within(begin: list[int], end: list[int], kernel: list[int]) -> bool:
    """Whether torch's pools can pad by themselves: the same on both sides, at most half the kernel."""
    return begin == end and all(2 * pad <= size for pad, size in zip(begin, kernel, strict=True))


def _max_pool(node, attrs, const):
    import torch.nn.functional as F

    kernel, stride, begin, end, ceil = _pool_settings(node, attrs)
    dilation = attrs.get("dilations", [1, 1])
    if _symmetric_within(begin, end, kernel):
        return (lambda x: F.max_pool2d(x, kernel, stride, begin, dilation, ceil)), node.input[:1]
    # Darknet pads the extra row and column at the bottom and right; max_pool2d's own padding
    # is symmetric, so pad explicitly with -inf, which never wins a max.
    pad = _torch_pad(begin, end)
    return (
        lambda x: F.max_pool2d(F.pad(x, pad, value=float("-inf")), kernel, stride, 0, dilation, ceil)
    ), node.input[:1]


def _average_pool(node, attrs, const):
    import torch
    import torch.nn.functional as F

    kernel, stride, begin, end, ceil = _pool_settings(node, attrs)
    if attrs.get("dilations", [1, 1]) != [1, 1]:
        raise ValueError(f"AveragePool with dilations {attrs['dilations']}")
    with_pads = bool(attrs.get("count_include_pad", 0))
    if _symmetric_within(begin, end, kernel):
        return (lambda x: F.avg_pool2d(x, kernel, stride, begin, ceil, with_pads)), node.input[:1]
    if ceil:
        raise ValueError("AveragePool with ceil_mode and asymmetric pads")
    pad = _torch_pad(begin, end)
    if with_pads:
        return (lambda x: F.avg_pool2d(F.pad(x, pad), kernel, stride)), node.input[:1]

    def average(x):
        # The mean over the pixels inside the image only: the windows' sums over theirs counted.
        inside = F.pad(torch.ones_like(x[:1, :1]), pad)
        return F.avg_pool2d(F.pad(x, pad), kernel, stride) / F.avg_pool2d(inside, kernel, stride)

    return average, node.input[:1]


def _global_average_pool(node, attrs, const):
    return (lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)), node.input


def _reduce_mean(node, attrs, const):
    # Since opset 18 the axes are an input; before, an attribute.
    axes = const(node.input[1]).tolist() if len(node.input) > 1 and node.input[1] else attrs.get("axes", [])
    keep = bool(attrs.get("keepdims", 1))
    if not axes and attrs.get("noop_with_empty_axes", 0):
        return (lambda x: x), node.input[:1]
    return (lambda x: x.mean(dim=tuple(axes) if axes else None, keepdim=keep)), node.input[:1]


def _pad(node, attrs, const):
    import torch.nn.functional as F

    mode = attrs.get("mode", b"constant")
    if mode != b"constant":
        raise ValueError(f"Pad in mode {mode.decode()} (only constant)")
    # Since opset 11 the pads and the value are inputs; before, attributes.
    inputs = list(node.input) + [""] * (4 - len(node.input))
    pads = const(inputs[1]).tolist() if inputs[1] else attrs["pads"]
    value = float(const(inputs[2]).reshape(-1)[0]) if inputs[2] else float(attrs.get("value", 0.0))
    axes = const(inputs[3]).tolist() if inputs[3] else None
    begin, end = _begin_end(pads)

    def pad(x):
        chosen = [axis % x.dim() for axis in axes] if axes else list(range(x.dim()))
        full_begin, full_end = [0] * x.dim(), [0] * x.dim()
        for axis, before, after in zip(chosen, begin, end, strict=True):
            full_begin[axis], full_end[axis] = before, after
        return F.pad(x, _torch_pad(full_begin, full_end), value=value)

    return pad, inputs[:1]


def _resize(node, attrs, const):
    import torch.nn.functional as F

    settings = (
        attrs.get("mode", b"nearest"),
        attrs.get("coordinate_transformation_mode", b"half_pixel"),
        attrs.get("nearest_mode", b"round_prefer_floor"),
    )
    inputs = list(node.input) + [""] * (4 - len(node.input))
    if settings != (b"nearest", b"asymmetric", b"floor") or not inputs[2] or inputs[3]:
        raise ValueError(f"Resize other than nearest/asymmetric/floor by scales ({settings}, {inputs})")
    scales = const(inputs[2]).tolist()
    if scales[:2] != [1, 1] or any(s != int(s) or s < 1 for s in scales[2:]):
        raise ValueError(f"Resize by scales {scales} (only whole-number spatial scales)")
    # With a whole-number scale s, asymmetric/floor takes source pixel floor(i / s) for output
    # pixel i, and so does nearest-exact, floor((i + 0.5) / s), since (r + 0.5) / s < 1 for every
    # remainder r < s; it stays exact in float arithmetic, as the fraction is at least 0.5 / s
    # away from a whole number. One kernel, in the input's memory format.
    factors = tuple(float(s) for s in scales[2:])
    return (lambda x: F.interpolate(x, scale_factor=factors, mode="nearest-exact")), inputs[:1]


def _reshape(node, attrs, const):
    shape = const(node.input[1]).tolist()
    if attrs.get("allowzero", 0) or 0 in shape:
        raise ValueError(f"Reshape to {shape} with a zero dimension")
    return (lambda x: x.reshape(shape)), node.input[:1]


def _slice(node, attrs, const):
    starts, ends = const(node.input[1]).tolist(), const(node.input[2]).tolist()
    axes = const(node.input[3]).tolist() if len(node.input) > 3 and node.input[3] else range(len(starts))
    steps = const(node.input[4]).tolist() if len(node.input) > 4 and node.input[4] else [1] * len(starts)
    if min(steps) < 1:
        raise ValueError(f"Slice with steps {steps}")
    index: dict[int, slice] = {
        axis: slice(start, end, step)
        for axis, start, end, step in zip(axes, starts, ends, steps, strict=True)
    }

    def take(x):
        chosen = {axis % x.dim(): part for axis, part in index.items()}  # ONNX allows negative axes
        return x[tuple(chosen.get(axis, slice(None)) for axis in range(x.dim()))]

    return take, node.input[:1]


def _split(node, attrs, const):
    import torch

    axis = attrs.get("axis", 0)
    # The sizes: an input since opset 13, an attribute before; or, since opset 18, equal parts.
    if len(node.input) > 1 and node.input[1]:
        sizes = const(node.input[1]).tolist()
    elif "split" in attrs:
        sizes = list(attrs["split"])
    else:
        parts = attrs.get("num_outputs", len(node.output))
        # Parts of ceil(size / parts), the last one smaller where the size does not divide.
        return (lambda x: torch.split(x, -(-x.shape[axis] // parts), dim=axis)), node.input[:1]
    return (lambda x: torch.split(x, sizes, dim=axis)), node.input[:1]


def _concat(node, attrs, const):
    import torch

    axis = attrs["axis"]
    return (lambda *xs: torch.cat(xs, dim=axis)), node.input


def _transpose(node, attrs, const):
    perm = attrs.get("perm")
    return (lambda x: x.permute(perm if perm else list(reversed(range(x.dim()))))), node.input


def _elementwise(function_name: str) -> Maker:
    """A torch function of the same name and the same (numpy) broadcasting as the ONNX op."""

    def make(node, attrs, const):
        import torch

        return getattr(torch, function_name), node.input

    return make


def _pow(node, attrs, const):
    import torch

    exponent = node.input[1]
    try:
        value = const(exponent)
    except ValueError:
        return torch.pow, node.input
    if value.size != 1:
        return torch.pow, node.input
    # A constant exponent as a number: the result keeps the base's type, as ONNX's does.
    number = float(value.reshape(-1)[0])
    return (lambda x: torch.pow(x, number)), node.input[:1]


def _softmax(node, attrs, const):
    import torch

    axis = attrs.get("axis", -1)
    return (lambda x: torch.softmax(x, dim=axis)), node.input


def _leaky_relu(node, attrs, const):
    import torch.nn.functional as F

    slope = attrs.get("alpha", 0.01)
    return (lambda x: F.leaky_relu(x, slope)), node.input


def _mish(node, attrs, const):
    import torch.nn.functional as F

    return F.mish, node.input


def _identity(node, attrs, const):
    return (lambda x: x), node.input


OPS: dict[str, Maker] = {
    "Add": _elementwise("add"),
    "AveragePool": _average_pool,
    "Concat": _concat,
    "Conv": _conv,
    "Div": _elementwise("div"),
    "Exp": _elementwise("exp"),
    "GlobalAveragePool": _global_average_pool,
    "Identity": _identity,
    "LeakyRelu": _leaky_relu,
    "MaxPool": _max_pool,
    "Mish": _mish,
    "Mul": _elementwise("mul"),
    "Pad": _pad,
    "Pow": _pow,
    "ReduceMean": _reduce_mean,
    "Relu": _elementwise("relu"),
    "Reshape": _reshape,
    "Resize": _resize,
    "Sigmoid": _elementwise("sigmoid"),
    "Slice": _slice,
    "Softmax": _softmax,
    "Split": _split,
    "Sub": _elementwise("sub"),
    "Tanh": _elementwise("tanh"),
    "Transpose": _transpose,
}
# Ops whose meaning changed at an opset: files of older opsets that use them are refused
# (Softmax before 13 normalized over every axis from `axis` on, not over `axis` alone).
SINCE_OPSET = {"Softmax": 13}


@dataclass(frozen=True)
class ConvChain:
    """A Conv node with the activation and the residual addition that follow it (those whose
    input is the chain's output alone): what an engine can run as one fused kernel. The fused
    function takes (x, kernel, bias), plus the residual operand where `residual`."""

    name: str
    stride: tuple[int, int]
    pre_padding: tuple[int, int]
    post_padding: tuple[int, int]
    dilation: tuple[int, int]
    activation: str | None  # a value of CHAIN_ACTIVATIONS or "swish"; "relu" has negative_slope
    negative_slope: float
    residual: bool


# The activations a chain takes in, by the op type of their (first) node. swish is Darknet's
# x * logistic(x): in the graph, Sigmoid and a Mul of its input and output.
CHAIN_ACTIVATIONS = {
    "Relu": "relu",
    "LeakyRelu": "relu",
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "Mish": "mish",
}


def activate(activation: str, y, negative_slope: float = 0.0):
    """A chain's activation of `y`, in the torch operations the unfused module runs."""
    import torch
    import torch.nn.functional as F

    if activation == "relu":
        return F.leaky_relu(y, negative_slope)
    if activation == "swish":
        return torch.mul(y, torch.sigmoid(y))
    return {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "mish": F.mish}[activation](y)


# Makes the fused function of a chain.
Fuser = Callable[[ConvChain], Callable[..., Any]]


def chain_in_torch(chain: ConvChain) -> Callable[..., Any]:
    """The chain in separate torch operations, as the unfused module runs it: what a fused
    implementation must equal."""
    convolve = _convolution(list(chain.pre_padding), list(chain.post_padding), chain.stride, chain.dilation)

    def run(x, kernel, bias, residual=None):
        y = convolve(x, kernel, bias)
        if chain.activation:
            y = activate(chain.activation, y, chain.negative_slope)
        return y if residual is None else y + residual

    return run


def _activation_after(nodes: list, last: int, output: str, uses: Counter):
    """The activation that nodes[last]'s `output` goes through next, as (name, negative slope,
    its output, its last node's index); None where the next nodes are no activation of it alone."""
    from onnx import helper

    follower = nodes[last + 1] if last + 1 < len(nodes) else None
    if follower is None or list(follower.input) != [output]:
        return None
    kind = CHAIN_ACTIVATIONS.get(follower.op_type)
    if kind is None:
        return None
    after = nodes[last + 2] if last + 2 < len(nodes) else None
    if (
        kind == "sigmoid"
        and uses[output] == 2
        and after is not None
        and after.op_type == "Mul"
        and sorted(after.input) == sorted([output, follower.output[0]])
        and uses[follower.output[0]] == 1
    ):
        return "swish", 0.0, after.output[0], last + 2
    if uses[output] != 1:
        return None
    slope = 0.0
    if follower.op_type == "LeakyRelu":
        alpha = [helper.get_attribute_value(a) for a in follower.attribute if a.name == "alpha"]
        slope = float(alpha[0]) if alpha else 0.01
    return kind, slope, follower.output[0], last + 1


def _conv_chain(nodes: list, index: int, uses: Counter, fuse_residual: bool, shapes: dict[str, tuple]):
    """The chain that starts at Conv nodes[index], its tensor inputs and its last node's index;
    None for a convolution no chain covers (grouped, bias-less, auto_pad). `shapes` are the
    tensors' inferred shapes: a residual is added inside the chain only where its shape is the
    chain output's (an Add may broadcast; a fused kernel's output has the convolution's shape)."""
    from onnx import helper

    conv = nodes[index]
    attrs = {attribute.name: helper.get_attribute_value(attribute) for attribute in conv.attribute}
    if attrs.get("group", 1) != 1 or len(conv.input) < 3 or not conv.input[2]:
        return None
    if attrs.get("auto_pad", b"NOTSET") != b"NOTSET":
        return None

    output, last, inputs = conv.output[0], index, list(conv.input[:3])
    activation, slope = None, 0.0
    found = _activation_after(nodes, last, output, uses)
    if found is not None:
        activation, slope, output, last = found
    follower = nodes[last + 1] if last + 1 < len(nodes) else None
    residual = (
        fuse_residual
        and follower is not None
        and uses[output] == 1
        and follower.op_type == "Add"
        and list(follower.input).count(output) == 1
    )
    if residual:
        other = next(name for name in follower.input if name != output)
        residual = shapes.get(other) is not None and shapes.get(other) == shapes.get(conv.output[0])
    if residual:
        inputs.append(other)
        last += 1
    begin, end = _begin_end(attrs.get("pads", [0, 0, 0, 0]))
    chain = ConvChain(
        name=conv.name,
        stride=tuple(attrs.get("strides", (1, 1))),
        pre_padding=tuple(begin),
        post_padding=tuple(end),
        dilation=tuple(attrs.get("dilations", (1, 1))),
        activation=activation,
        negative_slope=slope,
        residual=residual,
    )
    return chain, inputs, last


def _known_shapes(model) -> dict[str, tuple]:
    """Every tensor's shape that ONNX shape inference determines fully (a named dimension, such as
    the batch, counts as determined: tensors with the same name there have the same size)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            continue
        dims = tuple(dim.dim_value or dim.dim_param or None for dim in tensor.shape.dim)
        if None not in dims:
            shapes[value.name] = dims
    return shapes


def _pad_conv_channels(node, constants: dict[str, np.ndarray], multiple: int) -> tuple[int, int] | None:
    """Zero-pad the weights (and bias) of Conv `node` in `constants` to input and output channel
    counts that are multiples of `multiple`; return (input channels added, output channels to
    keep) for _padded, or None where nothing needed padding. Zero weights on zero channels add
    nothing to any sum, so the outputs are unchanged; but tensor-core kernels want aligned
    channels, and YOLO's 3-channel input and 255-channel heads otherwise fall back to slow ones,
    as a kernel profile showed."""
    weight = constants[node.input[1]]
    kernels, channels = weight.shape[:2]
    groups = next((attr.i for attr in node.attribute if attr.name == "group"), 1)
    add_k, add_c = -kernels % multiple, -channels % multiple
    if groups != 1 or not (add_k or add_c):
        return None
    constants[node.input[1]] = np.pad(weight, [(0, add_k), (0, add_c), (0, 0), (0, 0)])
    if len(node.input) > 2 and node.input[2]:
        constants[node.input[2]] = np.pad(constants[node.input[2]], (0, add_k))
    return add_c, kernels


def onnx_module(path: str | os.PathLike, channel_multiple: int = 1, fuse: Fuser | None = None):
    """Build the module for the ONNX file at `path`; one input image tensor, one output tensor.

    With `channel_multiple` > 1, every convolution runs on weights zero-padded to channel counts
    of that multiple (_pad_conv_channels), with the same results. With `fuse`, each ConvChain
    runs as the one function `fuse` makes for it."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(os.fspath(path))
    graph = model.graph
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    inputs = [value.name for value in graph.input if value.name not in constants]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise YoloforgeError(
            f"the graph has inputs {inputs} and {len(graph.output)} outputs; expected one of each", path
        )

    def const(name: str) -> np.ndarray:
        if name not in constants:
            raise ValueError(f"input {name!r} is computed at run time, not a constant")
        return constants[name]

    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    nodes = list(graph.node)
    # Every use of a tensor as an input, the graph's output counted as one.
    uses = Counter(name for node in nodes for name in node.input) + Counter(v.name for v in graph.output)
    shapes = _known_shapes(model) if fuse is not None else {}
    steps = []
    index = 0
    while index < len(nodes):
        node = nodes[index]
        index += 1
        if fuse is not None and node.op_type == "Conv":
            fused = _fused_step(nodes, index - 1, uses, constants, shapes, channel_multiple, fuse)
            if fused is not None:
                step, last = fused
                steps.append(step)
                index = last + 1
                continue
        if node.op_type not in OPS or node.domain not in ("", "ai.onnx"):
            raise YoloforgeError(
                f"the torch engines do not support ONNX op {node.op_type} ({node.name})", path
            )
        if opset < SINCE_OPSET.get(node.op_type, 0):
            raise YoloforgeError(
                f"the torch engines do not support {node.op_type} of opset {opset} ({node.name});"
                f" only from opset {SINCE_OPSET[node.op_type]} on",
                path,
            )
        attrs = {attribute.name: helper.get_attribute_value(attribute) for attribute in node.attribute}
        try:
            function, tensor_inputs = OPS[node.op_type](node, attrs, const)
        except ValueError as error:
            raise YoloforgeError(f"the torch engines do not support {node.name}: {error}", path) from None
        padding = _pad_conv_channels(node, constants, channel_multiple) if node.op_type == "Conv" else None
        if padding:
            function = _padded(function, *padding)
        steps.append((function, [name for name in tensor_inputs if name], list(node.output)))

    used = {name for _, names, _ in steps for name in names if name in constants}
    kept = {name: constants[name] for name in sorted(used)}
    dims = next(value for value in graph.input if value.name == inputs[0]).type.tensor_type.shape.dim
    image_shape = tuple(dim.dim_value for dim in dims[1:])
    return _module_class()(steps, kept, inputs[0], graph.output[0].name, image_shape).eval()


def _fused_step(
    nodes: list,
    index: int,
    uses: Counter,
    constants: dict,
    shapes: dict[str, tuple],
    channel_multiple: int,
    fuse: Fuser,
):
    """The module step of the chain at Conv nodes[index] and its last node's index, or None."""
    conv = nodes[index]
    weight = constants.get(conv.input[1])
    if weight is None or weight.ndim != 4:
        return None
    # A residual of the unpadded channel count cannot be added to padded outputs inside the chain.
    outputs_padded = channel_multiple > 1 and weight.shape[0] % channel_multiple != 0
    found = _conv_chain(nodes, index, uses, not outputs_padded, shapes)
    if found is None:
        return None
    chain, inputs, last = found
    function = fuse(chain)
    padding = _pad_conv_channels(conv, constants, channel_multiple)
    if padding:
        function = _padded(function, *padding)
    return (function, inputs, list(nodes[last].output)), last


def _padded(convolve: Callable[..., Any], input_channels: int, output_channels: int) -> Callable[..., Any]:
    """`convolve` on `input_channels` more zero input channels, keeping the first `output_channels`."""
    import torch.nn.functional as F

    def padded(x, *weights):
        if input_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, input_channels))
        return convolve(x, *weights)[:, :output_channels]

    return padded


@functools.cache
def _module_class():
    import torch

    class OnnxGraphModule(torch.nn.Module):
        """Runs the ONNX nodes in their (topological) file order over a name -> tensor table."""

        def __init__(
            self,
            steps: list,
            constants: dict[str, np.ndarray],
            input_name: str,
            output_name: str,
            image_shape: tuple[int, ...],
        ) -> None:
            super().__init__()
            self.steps = steps
            self.input_name = input_name
            self.output_name = output_name
            # Everything but the batch is fixed; the AOT engine compiles for exactly this shape.
            self.image_shape = image_shape
            # Buffers, so `.to(device, dtype)` moves and casts the weights with the module.
            self.buffer_of: dict[str, str] = {}
            for index, (name, value) in enumerate(constants.items()):
                self.register_buffer(f"constant{index}", torch.from_numpy(value.copy()))
                self.buffer_of[name] = f"constant{index}"

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            values = {name: getattr(self, buffer) for name, buffer in self.buffer_of.items()}
            values[self.input_name] = images
            for function, input_names, output_names in self.steps:
                result = function(*(values[name] for name in input_names))
                if len(output_names) == 1:
                    values[output_names[0]] = result
                else:
                    values.update(zip(output_names, result, strict=True))
            return values[self.output_name]

    return OnnxGraphModule
