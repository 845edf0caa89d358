"""[region]: YOLOv2 heads (region_layer.c): logistic box centres and objectness, exp sizes times
anchors given in grid cells, softmax over the classes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, ParseContext, Shape
from yoloforge.darknet.layers.head import DetectionHead
from yoloforge.darknet.sections import Section


@dataclass
class Region(DetectionHead):
    kind = "region"
    section_names = ("region",)

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Region:
        channels = context.channels_of(context.previous)
        pairs = cls.read_anchors(section)
        number = section.get_int("num", 1)
        if number != len(pairs):
            raise section.fail(f"num={number} but {len(pairs)} anchors are given")
        if section.get_int("coords", 4) != 4:
            section.refuse(f"coords={section.get_int('coords', 4)}: only 4 box coordinates are supported")
        if section.get_int("softmax", 0) != 1:
            section.refuse("softmax=0: only class probabilities by softmax are supported")
        for key in ("tree", "map"):
            if section.has(key):
                section.refuse(f"{key}={section.get_str(key, '')}: hierarchical classes are not supported")
        layer = cls(
            context.index,
            section,
            [context.previous],
            channels,
            channels,
            anchors=pairs,
            classes=section.get_int("classes", 20),
        )
        layer.check_input()
        return layer

    def decode(self, graph: GraphBuilder, source: str, shape: Shape, width: int, height: int) -> str:
        _, grid_h, grid_w = shape
        xy, wh, objectness, classes = self.rows(graph, source, shape, [2, 2, 1, self.classes])
        grid_size = np.array([grid_w, grid_h], dtype=np.float64)
        xy = graph.op("Sigmoid", [xy], f"{self.name}_xy_sigmoid")
        xy = self.affine(
            graph, xy, (1 / grid_size)[None, None], (self.cells(shape) / grid_size)[None], f"{self.name}_xy"
        )
        wh = graph.op("Exp", [wh], f"{self.name}_wh_exp")
        anchors = np.array(self.anchors, dtype=np.float64) / grid_size
        wh = self.affine(graph, wh, self.per_row(anchors, shape), None, f"{self.name}_wh")
        objectness = graph.op("Sigmoid", [objectness], f"{self.name}_objectness")
        classes = graph.op("Softmax", [classes], f"{self.name}_classes", axis=2)
        return graph.op("Concat", [xy, wh, objectness, classes], f"{self.name}_out", axis=2)
