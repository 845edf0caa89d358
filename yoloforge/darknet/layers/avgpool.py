"""[avgpool]: Darknet's average pooling is always global: [C, H, W] -> [C, 1, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, ParseContext, Shape
from yoloforge.darknet.sections import Section


@dataclass
class Avgpool(Layer):
    kind = "avgpool"
    section_names = ("avgpool", "avg")

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Avgpool:
        channels = context.channels_of(context.previous)
        return cls(context.index, section, [context.previous], channels, channels)

    def output_shape(self, inputs: list[Shape]) -> Shape:
        return inputs[0][0], 1, 1

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        return graph.op("GlobalAveragePool", sources, self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return inputs[0].mean(axis=(2, 3), keepdims=True)
