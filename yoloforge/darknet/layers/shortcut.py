"""[shortcut]: the previous layer's output plus one or more earlier layers' outputs, then an
activation. As Darknet's shortcut_multilayer_cpu computes it, a source with other channels than
the previous layer adds into the channels both have; the output keeps the previous layer's
channels (extra channels of the previous layer pass unchanged, extra ones of a source are unused).
"""

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
    read_activation,
)
from yoloforge.darknet.sections import Section


@dataclass
class Shortcut(Layer):
    kind = "shortcut"
    section_names = ("shortcut",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Shortcut:
        sources = [context.resolve(section, i) for i in section.get_list("from", int)]
        if not sources:
            raise section.fail("shortcut from no layer")
        if section.get_str("weights_type", "none") != "none":
            section.refuse(
                f"weights_type={section.get_str('weights_type', '')}: weighted shortcuts are not supported"
            )
        channels = context.channels_of(context.previous)
        return cls(
            context.index,
            section,
            [context.previous, *sources],
            channels,
            channels,
            activation=read_activation(section, "linear"),
        )

    def output_shape(self, inputs: list[Shape]) -> Shape:
        for source, shape in zip(self.inputs[1:], inputs[1:], strict=True):
            if shape[1:] != inputs[0][1:]:
                raise self.section.fail(
                    f"shortcut from layer {source} has size {shape[1:]}, expected {inputs[0][1:]}"
                )
        return inputs[0]

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        y, channels = sources[0], inputs[0][0]
        for position, (source, shape) in enumerate(zip(sources[1:], inputs[1:], strict=True)):
            name = f"{self.name}_{position}" if len(sources) > 2 else self.name
            if shape[0] > channels:
                source = graph.slice_channels(source, 0, channels, f"{name}_common")
            if shape[0] >= channels:
                y = graph.op("Add", [y, source], name)
                continue
            common = graph.slice_channels(y, 0, shape[0], f"{name}_common")
            rest = graph.slice_channels(y, shape[0], channels, f"{name}_rest")
            y = graph.op("Concat", [graph.op("Add", [common, source], f"{name}_add"), rest], name, axis=1)
        return onnx_activation(graph, self.activation, y, self.name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        y = inputs[0].copy()
        for source in inputs[1:]:
            common = min(y.shape[1], source.shape[1])
            y[:, :common] += source[:, :common]
        return numpy_activation(self.activation, y)
