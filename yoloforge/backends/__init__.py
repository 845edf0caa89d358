"""Engine backends behind one interface; heavy libraries are imported only when used."""

from __future__ import annotations

from yoloforge.backends.base import Backend, BuildRequest, Runner, read_sidecar
from yoloforge.backends.cudnn_fused import CudnnFusedBackend
from yoloforge.backends.onnxruntime_cpu import OnnxRuntimeBackend
from yoloforge.backends.opencv_darknet import OpenCvDarknetBackend
from yoloforge.backends.openvino_cpu import OpenVinoBackend
from yoloforge.backends.tensorrt_polygraphy import TensorRtBackend
from yoloforge.backends.torch_backend import TorchAotiBackend, TorchEagerBackend
from yoloforge.errors import YoloforgeError

BACKENDS: dict[str, type[Backend]] = {
    backend.name: backend
    for backend in (
        TensorRtBackend,
        OnnxRuntimeBackend,
        OpenVinoBackend,
        TorchEagerBackend,
        TorchAotiBackend,
        CudnnFusedBackend,
        OpenCvDarknetBackend,
    )
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise YoloforgeError(f"unknown engine {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


__all__ = ["BACKENDS", "Backend", "BuildRequest", "Runner", "get_backend", "read_sidecar"]
