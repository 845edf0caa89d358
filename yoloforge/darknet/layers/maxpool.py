"""[maxpool]: max pooling, Darknet-style (padding defaults to size-1, the odd row and column of
padding go to the bottom and right); stride or stride_x/stride_y."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import (
    GraphBuilder,
    Layer,
    LayerParams,
    ParseContext,
    Shape,
    sliding_windows,
)
from yoloforge.darknet.sections import Section

REFUSED = {
    "maxpool_depth": "pooling across channels is not supported",
    "antialiasing": "antialiased max pooling is not supported",
}


@dataclass
class Maxpool(Layer):
    kind = "maxpool"
    section_names = ("maxpool", "max")

    size: int = 1
    stride_x: int = 1
    stride_y: int = 1
    padding: int = 0

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Maxpool:
        channels = context.channels_of(context.previous)
        stride = section.get_int("stride", 1)
        size = section.get_int("size", stride)
        layer = cls(
            context.index,
            section,
            [context.previous],
            channels,
            channels,
            size=size,
            stride_x=section.get_int("stride_x", stride),
            stride_y=section.get_int("stride_y", stride),
            padding=section.get_int("padding", size - 1),
        )
        section.refuse_options(REFUSED)
        if min(layer.size, layer.stride_x, layer.stride_y) <= 0 or layer.padding < 0:
            raise section.fail("size and stride must be positive, padding non-negative")
        if layer.pads[2] >= layer.size:
            raise section.fail(f"padding={layer.padding} is too large for size={layer.size}")
        return layer

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right): Darknet offsets the window by -padding/2."""
        before = self.padding // 2
        after = self.padding - before
        return before, before, after, after

    def output_shape(self, inputs: list[Shape]) -> Shape:
        c, h, w = inputs[0]
        return (
            c,
            (h + self.padding - self.size) // self.stride_y + 1,
            (w + self.padding - self.size) // self.stride_x + 1,
        )

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        top, left, bottom, right = self.pads
        return graph.op(
            "MaxPool",
            sources,
            self.name,
            kernel_shape=[self.size, self.size],
            strides=[self.stride_y, self.stride_x],
            pads=[top, left, bottom, right],
        )

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        windows = sliding_windows(
            inputs[0], (self.size, self.size), (self.stride_y, self.stride_x), self.pads, fill=-np.inf
        )
        return windows.max(axis=(4, 5))
