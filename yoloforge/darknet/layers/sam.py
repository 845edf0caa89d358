"""[sam]: spatial attention (Scaled-YOLOv4's P7, yolov4-sam): the previous layer's output times an
earlier layer's output of the same shape, element by element, then an activation (sam_layer.c)."""

from __future__ import annotations

from dataclasses import dataclass

from yoloforge.darknet.layers.base import Shape
from yoloforge.darknet.layers.product import Product


@dataclass
class SpatialAttention(Product):
    kind = "sam"
    section_names = ("sam",)

    def output_shape(self, inputs: list[Shape]) -> Shape:
        if inputs[1] != inputs[0]:
            raise self.section.fail(
                f"layer {self.inputs[1]} has size {inputs[1][1:]}, the previous layer {inputs[0][1:]}"
            )
        return inputs[0]
