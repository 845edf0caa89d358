"""ONNX Runtime on its CPU execution provider; the engine file is the optimized model.

FP16 converts the graph's weights and arithmetic to float16 (inputs and outputs stay float32);
INT8 is static QDQ quantization calibrated on the calibration images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends.base import Backend, BuildRequest, EngineFacts, Runner, calibration_batches
from yoloforge.device import cpu_threads, idle_threads_sleep


class _OrtRunner(Runner):
    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


class _CalibrationReader:
    """onnxruntime.quantization's CalibrationDataReader protocol over our calibration batches."""

    def __init__(self, batches: list[np.ndarray], input_name: str) -> None:
        self.feeds = iter([{input_name: batch} for batch in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    facts = EngineFacts(
        precisions=("fp32", "fp16", "int8"),
        devices=("cpu",),
        extras=("onnxruntime",),
        family="onnxruntime",
        reference_rank=2,
    )

    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            return f"onnxruntime is not installed ({error})"
        return None

    def library_versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def _session(self, model: str | bytes, optimized_path: Path | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        options.inter_op_num_threads = 1
        if idle_threads_sleep():
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if optimized_path is None:
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        else:
            # Extended, not all: layout rewrites would tie the file to this machine's kernels
            # more than its sidecar's fingerprint says.
            options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = os.fspath(optimized_path)
        return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def _quantize(self, request: BuildRequest, output: Path) -> dict[str, Any]:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        batches = calibration_batches(request)
        quantize_static(
            os.fspath(request.onnx),
            os.fspath(output),
            _CalibrationReader(batches, "images"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # The in-graph box decode (sigmoid, exp, affine maps) stays in float: quantizing it
            # would coarsen every box coordinate for no speed.
            op_types_to_quantize=["Conv", "MaxPool", "Resize", "Concat", "Add"],
            nodes_to_exclude=_decode_nodes(request.onnx),
        )
        return {
            "quantization": "static QDQ, per-channel int8 weights, uint8 activations, MinMax",
            "calibration_images": len(batches),
        }

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        import onnx

        flags: dict[str, Any] = {"provider": "CPUExecutionProvider", "graph_optimization_level": "extended"}
        with tempfile.TemporaryDirectory() as scratch:
            source = request.onnx
            if request.precision == "fp16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                source = Path(scratch) / "fp16.onnx"
                onnx.save(convert_float_to_float16(onnx.load(request.onnx), keep_io_types=True), source)
                flags["conversion"] = "float16 weights and arithmetic, float32 input and output"
            elif request.precision == "int8":
                source = Path(scratch) / "int8.onnx"
                flags.update(self._quantize(request, source))
            self._session(os.fspath(source), optimized_path=request.output)
        return flags

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        return _OrtRunner(self._session(os.fspath(engine)))


def _decode_nodes(onnx_path: Path) -> list[str]:
    """Names of the nodes of the in-graph YOLO decode (the converter names them layer*_yolo_*)."""
    import onnx

    graph = onnx.load(onnx_path, load_external_data=False).graph
    return [node.name for node in graph.node if "_yolo" in node.name]
