"""TensorRT through Polygraphy: FP32, FP16, BF16 and entropy-calibrated INT8 engines.

Not run in this project's own environments: TensorRT's wheels come only from NVIDIA's package
index. Run it where `import tensorrt` works, e.g. NVIDIA's TensorRT container (README.md).
Polygraphy's loaders do the work: ONNX parser -> network, a builder config with one optimization
profile over batch 1..N, a timing cache per device reused across builds, an INT8 calibrator
with its calibration cache kept beside the engine, and the serialized engine as the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.backends.base import (
    Backend,
    BuildRequest,
    EngineFacts,
    Runner,
    calibration_batches,
    engine_stem,
    onnx_metadata,
)
from yoloforge.device import cuda_fingerprint

TIMING_CACHE = "tensorrt-timing.cache"


class _TrtRunner(Runner):
    def __init__(self, runner) -> None:
        self.runner = runner
        self.runner.activate()

    def infer(self, images: np.ndarray) -> np.ndarray:
        # Polygraphy reuses its output buffers between calls: copy before the next call.
        return self.runner.infer({"images": images})["detections"].copy()


class TensorRtBackend(Backend):
    name = "tensorrt"
    # Its builder times tactics (kernels) on the GPU.
    facts = EngineFacts(
        precisions=("fp32", "fp16", "bf16", "int8"),
        devices=("cuda",),
        extras=("tensorrt",),
        family="tensorrt",
        times_kernels=True,
    )

    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return (
                "tensorrt is not installed (pip install tensorrt polygraphy, or NVIDIA's TensorRT container)"
            )
        try:
            import polygraphy  # noqa: F401
        except ImportError as error:
            return f"polygraphy is not installed ({error})"
        if cuda_fingerprint() is None:
            return "no CUDA GPU is visible"
        return None

    def library_versions(self) -> dict[str, str]:
        import polygraphy
        import tensorrt

        return {"tensorrt": tensorrt.__version__, "polygraphy": polygraphy.__version__}

    def device_fingerprint(self) -> dict[str, Any]:
        return {**(cuda_fingerprint() or {}), **self.library_versions()}

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        from polygraphy.backend.trt import (
            Calibrator,
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxPath,
            Profile,
            SaveEngine,
        )

        metadata = onnx_metadata(request.onnx)
        height, width = int(metadata["height"]), int(metadata["width"])
        profile = Profile().add(
            "images",
            min=(1, 3, height, width),
            opt=(request.batch, 3, height, width),
            max=(request.batch, 3, height, width),
        )
        # One timing cache per engine folder, which is per device fingerprint: later builds
        # reuse measured tactics instead of timing them again.
        timing_cache = request.output.parent / TIMING_CACHE
        calibrator = None
        flags: dict[str, Any] = {"profile": f"batch 1..{request.batch}", "timing_cache": str(timing_cache)}
        if request.precision == "int8":
            calibration_cache = _calibration_cache_path(request)
            batches = calibration_batches(request, request.batch)
            calibrator = Calibrator(({"images": batch} for batch in batches), cache=str(calibration_cache))
            flags["calibration"] = f"entropy, {len(batches)} batches, cache {calibration_cache}"
        config = CreateConfig(
            tf32=False,  # FP32 means FP32; TF32 would be a precision of its own
            fp16=request.precision == "fp16",
            bf16=request.precision == "bf16",
            int8=request.precision == "int8",
            profiles=[profile],
            calibrator=calibrator,
            load_timing_cache=str(timing_cache) if timing_cache.exists() else None,
        )
        network = NetworkFromOnnxPath(str(request.onnx))
        engine = EngineFromNetwork(network, config=config, save_timing_cache=str(timing_cache))
        SaveEngine(engine, path=str(request.output))()
        return flags

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        return _TrtRunner(TrtRunner(EngineFromBytes(BytesFromPath(str(engine)))))


def _calibration_cache_path(request: BuildRequest) -> Path:
    return request.output.parent / f"{engine_stem(request)}.calibration.cache"
