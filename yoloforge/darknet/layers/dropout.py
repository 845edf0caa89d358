"""[dropout]: identity at inference (Darknet's forward_dropout_layer returns unless training)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, ParseContext, Shape
from yoloforge.darknet.sections import Section


@dataclass
class Dropout(Layer):
    kind = "dropout"
    section_names = ("dropout",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Dropout:
        channels = context.channels_of(context.previous)
        return cls(context.index, section, [context.previous], channels, channels)

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        return sources[0]

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return inputs[0]
