"""What the detection heads ([yolo], [region]) share: their input layout and row order.

A head's input is [N, anchors * (box_entries + 1 + classes), H, W] (4 box entries, 8 for
[gaussian_yolo]'s box and its uncertainties, then objectness and the classes); its rows of
`detections` are ordered by grid row, grid column, then anchor, as OpenCV's Darknet reader orders
them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from yoloforge.darknet.layers.base import GraphBuilder, Layer, LayerParams, Shape
from yoloforge.darknet.sections import Section

OBJECTNESS_BIAS = -4.0
OBJECTNESS_SPREAD = 1.0
CLASS_BIAS = -2.0


@dataclass
class DetectionHead(Layer):
    is_head = True
    box_entries: ClassVar[int] = 4

    anchors: list[tuple[float, float]] = field(default_factory=list)
    classes: int = 0

    @staticmethod
    def read_anchors(section: Section) -> list[tuple[float, float]]:
        anchors = section.get_list("anchors", float)
        if len(anchors) % 2:
            raise section.fail("anchors must come in width,height pairs")
        return list(zip(anchors[::2], anchors[1::2], strict=True))

    @property
    def attributes(self) -> int:
        """Input channels per anchor."""
        return self.box_entries + 1 + self.classes

    def check_input(self) -> None:
        expected = len(self.anchors) * self.attributes
        if self.classes <= 0:
            raise self.section.fail(f"classes={self.classes} is not positive")
        if self.in_channels != expected:
            raise self.section.fail(
                f"expects {expected} input channels ({len(self.anchors)} anchors x"
                f" ({self.box_entries + 1} + {self.classes} classes)), the previous layer gives"
                f" {self.in_channels}"
            )

    def boxes(self, shape: Shape) -> int:
        return shape[1] * shape[2] * len(self.anchors)

    def rows(self, graph: GraphBuilder, x: str, shape: Shape, parts: list[int]) -> list[str]:
        """The input as rows [N, boxes, attributes], split along the attributes into `parts`."""
        _, grid_h, grid_w = shape
        attributes = self.attributes
        split = graph.reshape(
            x, [-1, len(self.anchors), attributes, grid_h, grid_w], f"{self.name}_by_anchor"
        )
        cells_first = graph.op("Transpose", [split], f"{self.name}_cells_first", perm=[0, 3, 4, 1, 2])
        rows = graph.reshape(cells_first, [-1, self.boxes(shape), attributes], f"{self.name}_rows")
        sizes = graph.constant(f"{self.name}_split_sizes", np.array(parts))
        return graph.node("Split", [rows, sizes], f"{self.name}_parts", outputs=len(parts), axis=2)

    def cells(self, shape: Shape) -> np.ndarray:
        """[boxes, 2] grid column and row of every row."""
        _, grid_h, grid_w = shape
        cell_y, cell_x, _ = np.meshgrid(
            np.arange(grid_h), np.arange(grid_w), np.arange(len(self.anchors)), indexing="ij"
        )
        return np.stack([cell_x.reshape(-1), cell_y.reshape(-1)], axis=1).astype(np.float64)

    def per_row(self, values: np.ndarray, shape: Shape) -> np.ndarray:
        """[anchors, k] values repeated for every cell: [1, boxes, k] float32."""
        return np.tile(values, (shape[1] * shape[2], 1))[None].astype(np.float32)

    def affine(
        self, graph: GraphBuilder, x: str, gain: np.ndarray, offset: np.ndarray | None, name: str
    ) -> str:
        y = graph.op("Mul", [x, graph.constant(f"{name}_gain", gain.astype(np.float32))], f"{name}_scaled")
        if offset is None:
            return y
        return graph.op("Add", [y, graph.constant(f"{name}_offset", offset.astype(np.float32))], name)

    def forward(self, inputs: list[np.ndarray], params: LayerParams) -> np.ndarray:
        return inputs[0]  # decoding does not feed later layers

    def to_onnx(
        self, graph: GraphBuilder, sources: list[str], params: LayerParams, inputs: list[Shape]
    ) -> str:
        return sources[0]

    def head_logits(self, biases: np.ndarray, spreads: np.ndarray) -> None:
        per_anchor = (len(self.anchors), self.attributes)
        objectness = self.box_entries
        biases.reshape(per_anchor)[:, objectness] = OBJECTNESS_BIAS
        biases.reshape(per_anchor)[:, objectness + 1 :] = CLASS_BIAS
        spreads.reshape(per_anchor)[:, objectness] = OBJECTNESS_SPREAD
