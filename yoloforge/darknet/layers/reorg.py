"""[reorg] and [reorg3d]: space to depth by `stride`.

[reorg] as the original Darknet computes it for yolov2 (and as AlexeyAB's fork keeps it as its
reorg_old layer, and OpenCV's Darknet reader does): reorg_cpu(input, w, h, c, stride, forward=0)
reads the [C, H, W] input as [C/stride^2, H*stride, W*stride], moves each stride x stride offset
to the channels, and the [C, H, W] result is read as [C*stride^2, H/stride, W/stride]; yolov2's
published weights were trained with this order.

[reorg3d] (AlexeyAB's reorg layer, yolov4-sam-mish-csp-reorg-bfm) passes the output sizes to the
same function instead, which makes it a plain space to depth: output channel
(dy * stride + dx) * C + c holds input channel c at offset (dy, dx), as ONNX's SpaceToDepth.
OpenCV's reader does not know it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, ParseContext, Shape
from yoloforge.darknet.sections import Section


@dataclass
class Reorg(Layer):
    kind = "reorg"
    section_names = ("reorg",)

    stride: int = 2
    # Whether the input's channels are read in groups of stride^2 ([reorg]'s order).
    groups_channels: ClassVar[bool] = True

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Reorg:
        channels = context.channels_of(context.previous)
        stride = section.get_int("stride", 1)
        if stride <= 0:
            raise section.fail(f"stride={stride} is not positive")
        if cls.groups_channels and channels % (stride * stride):
            raise section.fail(f"{channels} input channels are not divisible by stride^2={stride * stride}")
        if section.get_int("reverse", 0):
            section.refuse("reverse=1 (depth to space) is not supported")
        return cls(
            context.index, section, [context.previous], channels, channels * stride * stride, stride=stride
        )

    def output_shape(self, inputs: list[Shape]) -> Shape:
        _, h, w = inputs[0]
        if h % self.stride or w % self.stride:
            raise self.section.fail(f"input size {w}x{h} is not a multiple of stride={self.stride}")
        return self.out_channels, h // self.stride, w // self.stride

    def _split_shape(self, shape: Shape) -> list[int]:
        c, h, w = shape
        s = self.stride
        return [-1, c // (s * s), h, s, w, s]

    PERMUTATION = (0, 3, 5, 1, 2, 4)  # (n, c, y, dy, x, dx) -> (n, dy, dx, c, y, x)

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        c, h, w = self.output_shape(inputs)
        split = graph.reshape(sources[0], self._split_shape(inputs[0]), f"{self.name}_split")
        moved = graph.op("Transpose", [split], f"{self.name}_move", perm=list(self.PERMUTATION))
        return graph.reshape(moved, [-1, c, h, w], self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        x = inputs[0]
        c, h, w = self.output_shape([x.shape[1:]])
        return x.reshape(self._split_shape(x.shape[1:])).transpose(self.PERMUTATION).reshape(-1, c, h, w)


@dataclass
class Reorg3d(Reorg):
    kind = "reorg3d"
    section_names = ("reorg3d",)
    groups_channels = False

    def _split_shape(self, shape: Shape) -> list[int]:
        c, h, w = shape
        s = self.stride
        return [-1, c, h // s, s, w // s, s]
