"""[convolutional]: convolution, optional batch norm (folded into the kernel), activation.

Darknet options honoured: stride or stride_x/stride_y; `pad=1` pads by size/2 whatever
`padding=` says; groups; antialiasing=1/2 (the convolution runs at stride 1, then a fixed 3x3 or
2x2 blur with the layer's stride, as convolutional_layer.c builds it); flipped=1 (the kernel is
stored transposed, as load_convolutional_weights reads it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import (
    BATCHNORM_EPSILON,
    GraphBuilder,
    Layer,
    LayerParams,
    ParseContext,
    Shape,
    convolve,
    numpy_activation,
    onnx_activation,
    read_activation,
)
from yoloforge.darknet.sections import Section

# Options that change what a trained network computes at inference and have no exact ONNX form.
REFUSED = {
    "xnor": "XNOR binarization of inputs and weights is not supported",
    "binary": "binarized weights are not supported",
    "coordconv": "coordinate channels are not supported",
    "sway": "deformable kernels are not supported",
    "rotate": "deformable kernels are not supported",
    "stretch": "deformable kernels are not supported",
    "stretch_sway": "deformable kernels are not supported",
}
# Darknet's blur kernels for antialiasing=1 (3x3, pad 1) and antialiasing=2 (2x2, no pad).
BLUR_KERNELS = {1: np.outer([1, 2, 1], [1, 2, 1]) / 16, 2: np.full((2, 2), 1 / 4)}
# Heads: low objectness on most cells with a tail of confident ones (about 0.2% of boxes over
# 0.25), as trained detectors give, so NMS sees a realistic load.
HEAD_SPREAD = 0.5
VARIANCE_FLOOR = 0.05  # relative to the layer's median channel variance


@dataclass
class Convolutional(Layer):
    kind = "convolutional"
    section_names = ("convolutional", "conv")

    filters: int = 1
    size: int = 1
    stride_x: int = 1
    stride_y: int = 1
    padding: int = 0
    groups: int = 1
    batch_normalize: bool = False
    antialiasing: int = 0
    flipped: bool = False

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Convolutional:
        in_channels = context.channels_of(context.previous)
        size = section.get_int("size", 1)
        stride = section.get_int("stride", 1)
        stride_x = section.get_int("stride_x", -1)
        stride_y = section.get_int("stride_y", -1)
        padding = section.get_int("padding", 0)
        if section.get_int("pad", 0):
            padding = size // 2
        layer = cls(
            context.index,
            section,
            [context.previous],
            in_channels,
            in_channels,
            activation=read_activation(section, "logistic"),
            filters=section.get_int("filters", 1),
            size=size,
            stride_x=stride_x if stride_x >= 1 else stride,
            stride_y=stride_y if stride_y >= 1 else stride,
            padding=padding,
            groups=section.get_int("groups", 1),
            batch_normalize=bool(section.get_int("batch_normalize", 0)),
            antialiasing=section.get_int("antialiasing", 0),
            flipped=bool(section.get_int("flipped", 0)),
        )
        section.refuse_options(REFUSED)
        if section.has("share_index"):  # any value, 0 included, names a layer to share with
            section.refuse("share_index: weights shared with another layer are not supported")
        if size > 1 and section.get_int("dilation", 1) != 1:
            section.refuse("dilation other than 1 is not supported")
        if layer.antialiasing not in BLUR_KERNELS and layer.antialiasing != 0:
            section.refuse(f"antialiasing={layer.antialiasing}: Darknet knows only 0, 1 and 2")
        if min(layer.filters, size, layer.stride_x, layer.stride_y, layer.groups) <= 0:
            raise section.fail("filters, size, stride and groups must be positive")
        if padding < 0:
            raise section.fail(f"padding={padding} is negative")
        if in_channels % layer.groups or layer.filters % layer.groups:
            raise section.fail(
                f"groups={layer.groups} does not divide {in_channels} input channels"
                f" and {layer.filters} filters"
            )
        layer.out_channels = layer.filters
        return layer

    @property
    def convolution_stride(self) -> tuple[int, int]:
        """(y, x) stride of the convolution itself; with antialiasing the blur strides instead."""
        return (1, 1) if self.antialiasing else (self.stride_y, self.stride_x)

    def output_shape(self, inputs: list[Shape]) -> Shape:
        _, h, w = inputs[0]
        stride_y, stride_x = self.convolution_stride
        h = (h + 2 * self.padding - self.size) // stride_y + 1
        w = (w + 2 * self.padding - self.size) // stride_x + 1
        if self.antialiasing:
            blur = len(BLUR_KERNELS[self.antialiasing])
            pad = blur // 2 if blur == 3 else 0
            h = (h + 2 * pad - blur) // self.stride_y + 1
            w = (w + 2 * pad - blur) // self.stride_x + 1
        return self.out_channels, h, w

    def parameter_counts(self) -> list[tuple[str, int]]:
        counts = [("biases", self.filters)]
        if self.batch_normalize:
            counts += [("scales", self.filters), ("mean", self.filters), ("variance", self.filters)]
        counts.append(("weights", self.filters * self.fan_in))
        return counts

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.size * self.size

    def kernel(self, weights: np.ndarray) -> np.ndarray:
        """The [filters, channels/groups, size, size] kernel of the weights as stored in the file."""
        shape = (self.filters, self.in_channels // self.groups, self.size, self.size)
        if self.flipped:  # stored as a fan_in x filters matrix
            return np.asarray(weights).reshape(self.fan_in, self.filters).T.reshape(shape)
        return np.asarray(weights).reshape(shape)

    def stored_weights(self, kernel: np.ndarray) -> np.ndarray:
        """The inverse of `kernel`: how a [filters, ...] kernel is written to the file."""
        flat = kernel.reshape(self.filters, self.fan_in)
        return (flat.T if self.flipped else flat).reshape(-1)

    def folded(self, params: LayerParams) -> tuple[np.ndarray, np.ndarray]:
        """Kernel and bias with batch normalization folded in, in float64."""
        kernel = self.kernel(params["weights"]).astype(np.float64)
        bias = params["biases"].astype(np.float64)
        if self.batch_normalize:
            factor = params["scales"] / np.sqrt(params["variance"].astype(np.float64) + BATCHNORM_EPSILON)
            kernel = kernel * factor[:, None, None, None]
            bias = bias - params["mean"] * factor
        return kernel, bias

    def _blur_kernel(self) -> np.ndarray:
        blur = BLUR_KERNELS[self.antialiasing]
        return np.broadcast_to(blur, (self.filters, 1, *blur.shape)).astype(np.float32)

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        kernel, bias = self.folded(params)
        y = graph.op(
            "Conv",
            [
                sources[0],
                graph.constant(f"{self.name}_kernel", kernel.astype(np.float32)),
                graph.constant(f"{self.name}_bias", bias.astype(np.float32)),
            ],
            self.name,
            kernel_shape=[self.size, self.size],
            strides=list(self.convolution_stride),
            pads=[self.padding] * 4,
            group=self.groups,
        )
        y = onnx_activation(graph, self.activation, y, self.name)
        if not self.antialiasing:
            return y
        blur = self._blur_kernel()
        return graph.op(
            "Conv",
            [y, graph.constant(f"{self.name}_blur_kernel", np.ascontiguousarray(blur))],
            f"{self.name}_blur",
            kernel_shape=list(blur.shape[2:]),
            strides=[self.stride_y, self.stride_x],
            pads=[1 if blur.shape[2] == 3 else 0] * 4,
            group=self.filters,
        )

    def _finish(self, z: np.ndarray) -> np.ndarray:
        y = numpy_activation(self.activation, z)
        if self.antialiasing:
            blur = self._blur_kernel()
            y = convolve(
                y, blur, (self.stride_y, self.stride_x), 1 if blur.shape[2] == 3 else 0, self.filters
            )
        return y

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        kernel, bias = self.folded(params)
        z = convolve(inputs[0], kernel.astype(np.float32), self.convolution_stride, self.padding, self.groups)
        return self._finish(z + bias.astype(np.float32)[:, None, None])

    def synthesize(
        self,
        inputs: list[np.ndarray],
        rng: np.random.Generator,
        following: Layer | None,
        kernel_mean: float = 0.0,
    ) -> tuple[LayerParams, np.ndarray]:
        kernel = (
            rng.standard_normal(
                (self.filters, self.in_channels // self.groups, self.size, self.size), dtype=np.float32
            )
            + np.float32(kernel_mean if self.batch_normalize else 0.0)
        ) * np.float32(np.sqrt(2.0 / self.fan_in))
        z = convolve(inputs[0], kernel, self.convolution_stride, self.padding, self.groups)
        arrays: LayerParams = {}
        if self.batch_normalize:
            # The batch-norm statistics are the real statistics of the layer's input, so every
            # activation stays near unit scale, as in a trained network.
            mean = z.mean(axis=(0, 2, 3))
            # A channel nearly constant on the calibration images would amplify whatever varies
            # on other images; trained networks have no such channels either.
            variance = np.maximum(z.var(axis=(0, 2, 3)), VARIANCE_FLOOR * np.median(z.var(axis=(0, 2, 3))))
            scales = rng.uniform(0.5, 1.5, self.filters).astype(np.float32)
            biases = rng.normal(0, 0.1, self.filters).astype(np.float32)
            factor = scales / np.sqrt(variance + BATCHNORM_EPSILON)
            z = (z - mean[:, None, None]) * factor[:, None, None] + biases[:, None, None]
            arrays = {"scales": scales, "mean": mean, "variance": variance}
        else:
            # An unnormalized output layer: scale each filter to its target spread, which keeps
            # exp() of the box sizes in a trained range and a few boxes confident.
            biases = rng.normal(0, 0.1, self.filters).astype(np.float32)
            spreads = np.full(self.filters, HEAD_SPREAD, dtype=np.float32)
            if following is not None and following.is_head:
                following.head_logits(biases, spreads)
            gain = spreads / (z.std(axis=(0, 2, 3)) + 1e-6)
            kernel *= gain[:, None, None, None]
            z = z * gain[:, None, None] + biases[:, None, None]
        arrays["biases"] = biases
        arrays["weights"] = self.stored_weights(kernel)
        return arrays, self._finish(z)
