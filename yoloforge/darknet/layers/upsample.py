"""[upsample]: nearest-neighbour upsampling by an integer stride."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, ParseContext, Shape
from yoloforge.darknet.sections import Section


@dataclass
class Upsample(Layer):
    kind = "upsample"
    section_names = ("upsample",)

    stride: int = 2

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Upsample:
        channels = context.channels_of(context.previous)
        layer = cls(
            context.index,
            section,
            [context.previous],
            channels,
            channels,
            stride=section.get_int("stride", 2),
        )
        if layer.stride < 1:
            section.refuse(f"stride={layer.stride}: only upsampling by a positive stride is supported")
            layer.stride = 1
        if section.get_float("scale", 1.0) != 1.0:
            section.refuse(f"scale={section.get_str('scale', '')}: only scale=1 is supported")
        return layer

    def output_shape(self, inputs: list[Shape]) -> Shape:
        c, h, w = inputs[0]
        return c, h * self.stride, w * self.stride

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        scales = np.array([1, 1, self.stride, self.stride], dtype=np.float32)
        return graph.op(
            "Resize",
            [sources[0], "", graph.constant(f"{self.name}_scales", scales)],
            self.name,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return inputs[0].repeat(self.stride, axis=2).repeat(self.stride, axis=3)
