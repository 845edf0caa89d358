"""[scale_channels]: an earlier layer's output scaled per channel by the previous layer's
[C, 1, 1] output (squeeze-and-excitation), then an activation."""

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
class ScaleChannels(Layer):
    kind = "scale_channels"
    section_names = ("scale_channels",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> ScaleChannels:
        sources = section.get_list("from", int)
        if len(sources) != 1:
            raise section.fail("scale_channels needs exactly one layer in from=")
        source = context.resolve(section, sources[0])
        if section.get_int("scale_wh", 0):
            section.refuse("scale_wh=1: scaling by a spatial map is not supported")
        channels = context.channels_of(source)
        if context.channels_of(context.previous) != channels:
            raise section.fail(
                f"scales layer {source} ({channels} channels)"
                f" by {context.channels_of(context.previous)} values"
            )
        return cls(
            context.index,
            section,
            [context.previous, source],
            context.channels_of(context.previous),
            channels,
            activation=read_elementwise_activation(section),
        )

    def output_shape(self, inputs: list[Shape]) -> Shape:
        if inputs[0][1:] != (1, 1):
            raise self.section.fail(
                f"the scales (layer {self.inputs[0]}) are {inputs[0][1:]}, not 1x1 per channel"
            )
        return inputs[1]

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        y = graph.op("Mul", [sources[1], sources[0]], self.name)
        return onnx_activation(graph, self.activation, y, self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return numpy_activation(self.activation, inputs[1] * inputs[0])
