"""OpenVINO on the CPU; the engine file is the compiled model, exported.

FP32 pins the inference precision to f32 (on CPUs with BF16 units OpenVINO otherwise computes
in bf16 by default); BF16 asks for bf16 where the CPU has it; INT8 is NNCF post-training
quantization calibrated on the calibration images.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends.base import Backend, BuildRequest, EngineFacts, Runner, calibration_batches
from yoloforge.device import cpu_threads

INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}


class _OpenVinoRunner(Runner):
    def __init__(self, compiled) -> None:
        self.request = compiled.create_infer_request()

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.request.infer({0: images})[0].copy()


class OpenVinoBackend(Backend):
    name = "openvino"
    facts = EngineFacts(
        precisions=("fp32", "bf16", "int8"), devices=("cpu",), extras=("openvino",), family="openvino"
    )

    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        try:
            import openvino
        except ImportError as error:
            return f"openvino is not installed ({error})"
        if precision == "int8":
            try:
                import nncf  # noqa: F401
            except ImportError as error:
                return f"nncf, needed for INT8, is not installed ({error})"
        if precision == "bf16":
            capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in capabilities:
                return "this CPU has no BF16 support"
        return None

    def library_versions(self) -> dict[str, str]:
        import openvino

        return {"openvino": openvino.get_version()}

    def _config(self, precision: str) -> dict[str, str]:
        return {
            "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
            "INFERENCE_NUM_THREADS": str(cpu_threads()),
        }

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        import openvino

        core = openvino.Core()
        model = openvino.convert_model(os.fspath(request.onnx))
        flags: dict[str, Any] = {"config": self._config(request.precision)}
        if request.precision == "int8":
            import nncf

            batches = calibration_batches(request)
            model = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
            flags["quantization"] = f"NNCF post-training, {len(batches)} calibration images"
        compiled = core.compile_model(model, "CPU", self._config(request.precision))
        stream = compiled.export_model()
        request.output.write_bytes(stream.getvalue() if isinstance(stream, io.BytesIO) else stream)
        return flags

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        import openvino

        # The precision hint is not part of the exported blob: without it again, OpenVINO would
        # run an f32 engine in bf16 on CPUs that have BF16 units.
        with open(engine, "rb") as handle:
            compiled = openvino.Core().import_model(
                io.BytesIO(handle.read()), "CPU", sidecar["build_flags"]["config"]
            )
        return _OpenVinoRunner(compiled)
