"""What [scale_channels] and [sam] share: the previous layer's output times one earlier layer's
(`from=`), broadcast as ONNX's Mul, then an activation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import (
    GraphBuilder,
    Layer,
    LayerParams,
    ParseContext,
    Shape,
    numpy_activation,
    onnx_activation,
    read_elementwise_activation,
)
from yoloforge.darknet.sections import Section


@dataclass
class Product(Layer):
    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Product:
        sources = section.get_list("from", int)
        if len(sources) != 1:
            raise section.fail(f"{cls.kind} needs exactly one layer in from=")
        source = context.resolve(section, sources[0])
        previous, channels = context.channels_of(context.previous), context.channels_of(source)
        if channels != previous:
            raise section.fail(
                f"multiplies layer {source} ({channels} channels) by the previous layer's {previous}"
            )
        return cls(
            context.index,
            section,
            [context.previous, source],
            previous,
            channels,
            activation=read_elementwise_activation(section),
        )

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        y = graph.op("Mul", [sources[1], sources[0]], self.name)
        return onnx_activation(graph, self.activation, y, self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return numpy_activation(self.activation, inputs[1] * inputs[0])
