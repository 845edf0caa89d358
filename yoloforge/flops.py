"""Floating-point operations per image, counted from the ONNX graph (multiply-add = 2 FLOPs)."""

from __future__ import annotations

import math
import os

from yoloforge.errors import YoloforgeError


def onnx_flops_per_image(path: str | os.PathLike) -> int:
    """Convolutions: 2 * Cin/groups * kh * kw * Cout * Hout * Wout; MatMul/Gemm: 2 * M * K * N.

    Shapes come from ONNX shape inference; the batch dimension counts as 1. Element-wise layers,
    resizes and the detection head's activations are left out: they are a rounding error here.
    """
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(os.fspath(path)))
    except Exception as error:  # onnx raises several unrelated types for bad files
        raise YoloforgeError(f"cannot infer shapes of the ONNX graph ({error})", path) from None
    graph = model.graph
    shapes = {
        info.name: [dim.dim_value or 1 for dim in info.type.tensor_type.shape.dim]
        for info in (*graph.input, *graph.value_info, *graph.output)
    }
    shapes.update({tensor.name: list(tensor.dims) for tensor in graph.initializer})
    total = 0
    for node in graph.node:
        if node.op_type == "Conv":
            weight, output = shapes[node.input[1]], shapes[node.output[0]]
            # weight [Cout, Cin/groups, kh, kw]; output [N, Cout, Hout, Wout]
            total += 2 * math.prod(weight) * math.prod(output[2:])
        elif node.op_type in ("MatMul", "Gemm"):
            left, output = shapes[node.input[0]], shapes[node.output[0]]
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            inner = left[-2] if transposed else left[-1]
            total += 2 * inner * math.prod(output[1:] if len(output) > 2 else output)
    return total
