"""[sam]: spatial attention (Scaled-YOLOv4's P7, yolov4-sam): the previous layer's output times an
earlier layer's output of the same shape, element by element, then an activation (sam_layer.c)."""

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
class SpatialAttention(Layer):
    kind = "sam"
    section_names = ("sam",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> SpatialAttention:
        sources = section.get_list("from", int)
        if len(sources) != 1:
            raise section.fail("sam needs exactly one layer in from=")
        source = context.resolve(section, sources[0])
        channels = context.channels_of(context.previous)
        if context.channels_of(source) != channels:
            raise section.fail(
                f"multiplies layer {source} ({context.channels_of(source)} channels)"
                f" by the previous layer's {channels} channels"
            )
        return cls(
            context.index,
            section,
            [context.previous, source],
            channels,
            channels,
            activation=read_elementwise_activation(section),
        )

    def output_shape(self, inputs: list[Shape]) -> Shape:
        if inputs[1] != inputs[0]:
            raise self.section.fail(
                f"layer {self.inputs[1]} has size {inputs[1][1:]}, the previous layer {inputs[0][1:]}"
            )
        return inputs[0]

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        y = graph.op("Mul", [sources[0], sources[1]], self.name)
        return onnx_activation(graph, self.activation, y, self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return numpy_activation(self.activation, inputs[0] * inputs[1])
