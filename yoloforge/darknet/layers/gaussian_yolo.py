"""[gaussian_yolo]: Gaussian YOLOv3 heads (gaussian_yolo_layer.c), whose box carries an uncertainty
per coordinate. Per anchor the input holds x, its uncertainty, y, its uncertainty, w, its, h, its,
objectness and the classes. Centres and uncertainties are logistic (centres scaled by scale_x_y),
sizes exp times the anchor. Darknet scores a class objectness x class x (1 - the mean of the four
uncertainties); the row's objectness here is objectness x (1 - that mean), so the contract's
score (objectness x class) is Darknet's."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, ParseContext, Shape
from yoloforge.darknet.layers.yolo import Yolo
from yoloforge.darknet.sections import Section


@dataclass
class GaussianYolo(Yolo):
    kind = "gaussian_yolo"
    section_names = ("gaussian_yolo",)
    box_entries = 8

    @classmethod
    def parse(cls, section: Section, context: ParseContext) -> GaussianYolo:
        point = section.get_str("yolo_point", "center")
        if point != "center":
            section.refuse(f"yolo_point={point}: only boxes given by their centre are supported")
        if section.get_int("new_coords", 0):
            section.refuse("new_coords: Gaussian heads have no such option")
        return super().parse(section, context)

    def decode(self, graph: GraphBuilder, source: str, shape: Shape, width: int, height: int) -> str:
        _, grid_h, grid_w = shape
        parts = self.rows(graph, source, shape, [1] * 9 + [self.classes])
        x, x_spread, y, y_spread, w, w_spread, h, h_spread, objectness, classes = parts
        grid_size = np.array([grid_w, grid_h], dtype=np.float64)
        scale = self.scale_x_y
        xy = graph.op("Concat", [x, y], f"{self.name}_xy_logits", axis=2)
        xy = graph.op("Sigmoid", [xy], f"{self.name}_xy_sigmoid")
        xy_offset = ((self.cells(shape) - (scale - 1) / 2) / grid_size)[None]
        xy = self.affine(graph, xy, (scale / grid_size)[None, None], xy_offset, f"{self.name}_xy")
        wh = graph.op("Concat", [w, h], f"{self.name}_wh_logits", axis=2)
        wh = graph.op("Exp", [wh], f"{self.name}_wh_exp")
        anchors = np.array(self.anchors, dtype=np.float64) / np.array([width, height])
        wh = self.affine(graph, wh, self.per_row(anchors, shape), None, f"{self.name}_wh")
        # 1 - the mean of the uncertainties, as an affine map of their sum (Adds: the ONNX
        # contract has no reduction over a slice of the last axis).
        total = None
        for name, spread in zip("xywh", (x_spread, y_spread, w_spread, h_spread), strict=True):
            spread = graph.op("Sigmoid", [spread], f"{self.name}_{name}_uncertainty")
            total = spread if total is None else graph.op("Add", [total, spread], f"{self.name}_{name}_sum")
        certainty = self.affine(graph, total, np.array(-0.25), np.array(1.0), f"{self.name}_certainty")
        objectness = graph.op("Sigmoid", [objectness], f"{self.name}_objectness_sigmoid")
        objectness = graph.op("Mul", [objectness, certainty], f"{self.name}_objectness")
        classes = graph.op("Sigmoid", [classes], f"{self.name}_classes")
        return graph.op("Concat", [xy, wh, objectness, classes], f"{self.name}_out", axis=2)
