"""Engine backends behind one interface; heavy libraries are imported only when used."""

from __future__ import annotations

from yoloforge.backends.base import Backend, BuildRequest, Runner, read_sidecar
from yoloforge.backends.onnxruntime_cpu import OnnxRuntimeBackend
from yoloforge.backends.opencv_darknet import OpenCvDarknetBackend
from yoloforge.errors import YoloforgeError

BACKENDS: dict[str, type[Backend]] = {
    backend.name: backend for backend in (OnnxRuntimeBackend, OpenCvDarknetBackend)
}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise YoloforgeError(f"unknown engine {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


def availability() -> dict[str, str | None]:
    """Each engine's reason it cannot run here, or None where it can."""
    return {name: backend().unavailable_reason() for name, backend in BACKENDS.items()}


__all__ = ["BACKENDS", "Backend", "BuildRequest", "Runner", "availability", "get_backend", "read_sidecar"]
