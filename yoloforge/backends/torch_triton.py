"""BatchedNms's suppression matrix as one Triton kernel, for CUDA devices where Triton imports.

Built from tensors, the matrix is a dozen passes over [N, k, k] (IoU arithmetic in float32,
gathers from boxes to candidates, the class test, the triangle, the cast): most of NMS's device
time at large batches. The kernel computes each entry once, in registers, with
the same float32 operations in the same order, so that an IoU at the threshold rounds as the
tensor version's (and the host's) does; multiply-adds are not fused for that reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import triton
import triton.language as tl

if TYPE_CHECKING:
    import torch

BLOCK = 64


@triton.jit
def _matrix_kernel(xyxy, areas, classes, output, count, iou_threshold, BLOCK: tl.constexpr):
    image = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    columns = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    in_rows = rows < count
    in_columns = columns < count
    boxes = xyxy + image * count * 4
    x1 = tl.load(boxes + rows * 4 + 0, mask=in_rows, other=0.0)[:, None]
    y1 = tl.load(boxes + rows * 4 + 1, mask=in_rows, other=0.0)[:, None]
    x2 = tl.load(boxes + rows * 4 + 2, mask=in_rows, other=0.0)[:, None]
    y2 = tl.load(boxes + rows * 4 + 3, mask=in_rows, other=0.0)[:, None]
    other_x1 = tl.load(boxes + columns * 4 + 0, mask=in_columns, other=0.0)[None, :]
    other_y1 = tl.load(boxes + columns * 4 + 1, mask=in_columns, other=0.0)[None, :]
    other_x2 = tl.load(boxes + columns * 4 + 2, mask=in_columns, other=0.0)[None, :]
    other_y2 = tl.load(boxes + columns * 4 + 3, mask=in_columns, other=0.0)[None, :]
    width = tl.maximum(tl.minimum(x2, other_x2) - tl.maximum(x1, other_x1), 0.0)
    height = tl.maximum(tl.minimum(y2, other_y2) - tl.maximum(y1, other_y1), 0.0)
    intersection = width * height
    area = tl.load(areas + image * count + rows, mask=in_rows, other=0.0)[:, None]
    other_area = tl.load(areas + image * count + columns, mask=in_columns, other=0.0)[None, :]
    union = (area + other_area) - intersection
    # 0/0 is NaN, which exceeds no threshold, as the tensor version's does not.
    overlapping = (intersection / union) > iou_threshold
    row_class = tl.load(classes + image * count + rows, mask=in_rows, other=-1)[:, None]
    column_class = tl.load(classes + image * count + columns, mask=in_columns, other=-2)[None, :]
    suppresses = overlapping & (row_class == column_class) & (columns[None, :] > rows[:, None])
    where = output + image * count * count + rows[:, None] * count + columns[None, :]
    tl.store(where, suppresses.to(tl.float16), mask=in_rows[:, None] & in_columns[None, :])


def suppression_matrix(xyxy: torch.Tensor, classes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Candidates' boxes [N, k, 4] (float32) and classes [N, k] -> [N, k, k] float16: 1 where
    candidate i overlaps the later candidate j of its class by more than the threshold."""
    import torch

    count, candidates = classes.shape
    xyxy = xyxy.contiguous()
    # Once per candidate here, not once per pair in the kernel.
    areas = (xyxy[..., 2] - xyxy[..., 0]).clamp(min=0) * (xyxy[..., 3] - xyxy[..., 1]).clamp(min=0)
    areas = areas.contiguous()
    output = torch.empty((count, candidates, candidates), device=xyxy.device, dtype=torch.float16)
    grid = (count, triton.cdiv(candidates, BLOCK), triton.cdiv(candidates, BLOCK))
    _matrix_kernel[grid](
        xyxy,
        areas,
        classes.contiguous(),
        output,
        candidates,
        iou_threshold,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )
    return output
