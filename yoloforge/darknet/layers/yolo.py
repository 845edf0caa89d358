"""[yolo]: YOLOv3/v4 heads (logistic box centres scaled by scale_x_y, exp sizes) and, with
new_coords=1 (Scaled-YOLOv4, YOLOv7), heads whose convolution already applied the logistic:
centres x * scale_x_y - (scale_x_y - 1) / 2, sizes (2x)^2 times the anchor (yolo_layer.c)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, ParseContext, Shape
from yoloforge.darknet.layers.head import DetectionHead
from yoloforge.darknet.sections import Section

log = logging.getLogger(__name__)


@dataclass
class Yolo(DetectionHead):
    kind = "yolo"
    section_names = ("yolo",)

    scale_x_y: float = 1.0
    new_coords: bool = False

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> Yolo:
        channels = context.channels_of(context.previous)
        pairs = cls.read_anchors(section)
        mask = section.get_list("mask", int, list(range(len(pairs))))
        if any(not 0 <= m < len(pairs) for m in mask):
            raise section.fail(f"mask {mask} refers to anchors outside the {len(pairs)} given")
        declared = section.get_int("num", len(pairs))
        if max(mask, default=0) >= declared:
            # Darknet reads only `num` anchors and indexes past them (cspx-p7-mish of the zoo).
            log.warning(
                "%s: line %d [%s]: mask %s names anchors beyond num=%d, where Darknet reads past"
                " its anchors; using the %d listed",
                section.path,
                section.line,
                section.name,
                mask,
                declared,
                len(pairs),
            )
        new_coords = section.get_int("new_coords", 0)
        if new_coords not in (0, 1):
            section.refuse(f"new_coords={new_coords}: Darknet knows only 0 and 1")
        layer = cls(
            context.index,
            section,
            [context.previous],
            channels,
            channels,
            anchors=[pairs[m] for m in mask],
            classes=section.get_int("classes", 20),
            scale_x_y=section.get_float("scale_x_y", 1.0),
            new_coords=new_coords == 1,
        )
        layer.check_input()
        return layer

    def decode(self, graph: GraphBuilder, source: str, shape: Shape, width: int, height: int) -> str:
        _, grid_h, grid_w = shape
        xy, wh, scores = self.rows(graph, source, shape, [2, 2, 1 + self.classes])
        grid_size = np.array([grid_w, grid_h], dtype=np.float64)
        scale = self.scale_x_y
        xy_offset = ((self.cells(shape) - (scale - 1) / 2) / grid_size)[None]
        anchors = np.array(self.anchors, dtype=np.float64) / np.array([width, height])
        if self.new_coords:
            wh = graph.op("Mul", [wh, wh], f"{self.name}_wh_squared")
            anchors = anchors * 4
        else:
            xy = graph.op("Sigmoid", [xy], f"{self.name}_xy_sigmoid")
            wh = graph.op("Exp", [wh], f"{self.name}_wh_exp")
            scores = graph.op("Sigmoid", [scores], f"{self.name}_scores")
        xy = self.affine(graph, xy, (scale / grid_size)[None, None], xy_offset, f"{self.name}_xy")
        wh = self.affine(graph, wh, self.per_row(anchors, shape), None, f"{self.name}_wh")
        return graph.op("Concat", [xy, wh, scores], f"{self.name}_out", axis=2)
