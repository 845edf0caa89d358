"""[scale_channels]: an earlier layer's output scaled per channel by the previous layer's
[C, 1, 1] output (squeeze-and-excitation), then an activation."""

from __future__ import annotations

from dataclasses import dataclass

from yoloforge.darknet.layers.base import ParseContext, Shape
from yoloforge.darknet.layers.product import Product
from yoloforge.darknet.sections import Section


@dataclass
class ScaleChannels(Product):
    kind = "scale_channels"
    section_names = ("scale_channels",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> ScaleChannels:
        if section.get_int("scale_wh", 0):
            section.refuse("scale_wh=1: scaling by a spatial map is not supported")
        return super().parse(section, context)

    def output_shape(self, inputs: list[Shape]) -> Shape:
        if inputs[0][1:] != (1, 1):
            raise self.section.fail(
                f"the scales (layer {self.inputs[0]}) are {inputs[0][1:]}, not 1x1 per channel"
            )
        return inputs[1]
