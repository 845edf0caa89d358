"""ONNX Runtime on the CPU execution provider: the engine file is ORT's optimized model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends.base import Backend, BuildRequest, Runner
from yoloforge.device import cpu_fingerprint, cpu_threads


class _OrtRunner(Runner):
    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: images})[0]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32",)

    def unavailable_reason(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            return f"onnxruntime is not installed ({error})"
        return None

    def library_versions(self) -> dict[str, str]:
        import onnxruntime

        return {"onnxruntime": onnxruntime.__version__}

    def device_fingerprint(self) -> dict[str, Any]:
        return {**cpu_fingerprint(), **self.library_versions()}

    def _session_options(self):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = cpu_threads()
        options.inter_op_num_threads = 1
        return options

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        import onnxruntime

        options = self._session_options()
        # Extended, not all: layout-level rewrites are tied to this machine's kernels and the
        # sidecar's fingerprint already keeps the file on the machine it was built for.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.fspath(request.output)
        onnxruntime.InferenceSession(os.fspath(request.onnx), options, providers=["CPUExecutionProvider"])
        return {"graph_optimization_level": "extended", "provider": "CPUExecutionProvider"}

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        import onnxruntime

        options = self._session_options()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = onnxruntime.InferenceSession(os.fspath(engine), options, providers=["CPUExecutionProvider"])
        return _OrtRunner(session)
