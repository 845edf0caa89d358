"""[route]: concatenation of earlier layers' outputs along channels, optionally of one channel
group of each (groups/group_id, as in CSP blocks)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, ParseContext, Shape
from yoloforge.darknet.sections import Section


@dataclass
class Route(Layer):
    kind = "route"
    section_names = ("route",)

    groups: int = 1
    group_id: int = 0

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Route:
        inputs = [context.resolve(section, i) for i in section.get_list("layers", int)]
        if not inputs:
            raise section.fail("route with no layers")
        groups, group_id = section.get_int("groups", 1), section.get_int("group_id", 0)
        if groups <= 0 or not 0 <= group_id < groups:
            raise section.fail(f"group_id={group_id} is outside groups={groups}")
        for source in inputs:
            if context.channels_of(source) % groups:
                raise section.fail(
                    f"layer {source} has {context.channels_of(source)} channels,"
                    f" not divisible into {groups} groups"
                )
        out_channels = sum(context.channels_of(i) // groups for i in inputs)
        return cls(
            context.index,
            section,
            inputs,
            context.channels_of(inputs[0]),
            out_channels,
            groups=groups,
            group_id=group_id,
        )

    def output_shape(self, inputs: list[Shape]) -> Shape:
        sizes = {shape[1:] for shape in inputs}
        if len(sizes) != 1:
            raise self.section.fail(f"routed layers {self.inputs} have different sizes {sorted(sizes)}")
        return self.out_channels, *inputs[0][1:]

    def _group(self, channels: int) -> tuple[int, int]:
        width = channels // self.groups
        return width * self.group_id, width * (self.group_id + 1)

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        parts = []
        for source, index, shape in zip(sources, self.inputs, inputs, strict=True):
            if self.groups == 1:
                parts.append(source)
            else:
                parts.append(
                    graph.slice_channels(source, *self._group(shape[0]), f"{self.name}_{index}_group")
                )
        return parts[0] if len(parts) == 1 else graph.op("Concat", parts, self.name, axis=1)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        parts = []
        for source in inputs:
            start, end = self._group(source.shape[1])
            parts.append(source[:, start:end])
        return np.concatenate(parts, axis=1)
