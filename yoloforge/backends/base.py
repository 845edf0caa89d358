"""The interface every engine backend implements, and the engine sidecar that guards reuse."""

from __future__ import annotations

import json
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file, write_json


@dataclass
class BuildRequest:
    """Everything a backend may need to build one engine file."""

    onnx: Path
    precision: str
    batch: int
    output: Path
    cfg: Path | None = None
    weights: Path | None = None
    calibration: list[Path] = field(default_factory=list)


class Runner(ABC):
    """A loaded engine: `infer` takes float32 images [N, 3, H, W] and returns `detections`."""

    @abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None:
        """Wait for queued device work; host backends finish inside `infer`."""
        return None


class Backend(ABC):
    name: str
    precisions: tuple[str, ...]
    device_kind: str = "cpu"

    def unavailable_reason(self) -> str | None:
        """None when this backend can run here, else why not (a missing library, say)."""
        return None

    @abstractmethod
    def library_versions(self) -> dict[str, str]: ...

    @abstractmethod
    def device_fingerprint(self) -> dict[str, Any]: ...

    @abstractmethod
    def _build(self, request: BuildRequest) -> dict[str, Any]:
        """Write the engine to request.output; return build flags for the sidecar."""

    @abstractmethod
    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner: ...

    def build(self, request: BuildRequest) -> dict[str, Any]:
        """Build the engine file and its sidecar; the file appears whole or not at all."""
        if request.precision not in self.precisions:
            raise YoloforgeError(
                f"{self.name} has no {request.precision} mode (it has {', '.join(self.precisions)})",
                request.onnx,
            )
        reason = self.unavailable_reason()
        if reason:
            raise YoloforgeError(f"{self.name} is unavailable: {reason}", request.output)
        start = time.perf_counter()
        with atomic_output(request.output) as partial:
            flags = self._build(replace(request, output=partial))
            engine_sha256 = sha256_file(partial)
            engine_bytes = partial.stat().st_size
        sidecar = {
            "model": onnx_metadata(request.onnx),
            "backend": self.name,
            "precision": request.precision,
            "batch": request.batch,
            "onnx_sha256": sha256_file(request.onnx),
            "engine_sha256": engine_sha256,
            "engine_bytes": engine_bytes,
            "device": self.device_fingerprint(),
            "libraries": self.library_versions(),
            "build_flags": flags,
            "build_seconds": time.perf_counter() - start,
        }
        write_json(sidecar_path(request.output), sidecar)
        return sidecar

    def load(self, engine: str | os.PathLike) -> Runner:
        engine = Path(engine)
        sidecar = read_sidecar(engine)
        if sidecar.get("backend") != self.name:
            raise YoloforgeError(f"engine was built by {sidecar.get('backend')}, not {self.name}", engine)
        if sidecar.get("device") != self.device_fingerprint():
            raise YoloforgeError(
                "engine was built for another device or library version"
                f" ({sidecar.get('device')}); rebuild it here",
                engine,
            )
        if sha256_file(engine) != sidecar.get("engine_sha256"):
            raise YoloforgeError("engine file does not match the checksum in its sidecar", engine)
        return self._load(engine, sidecar)


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The converter's record of what the ONNX file was made from (cfg, size, weights source)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}.json")


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(engine)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise YoloforgeError("engine has no sidecar JSON; build it with `yoloforge build`", engine) from None
    except json.JSONDecodeError as error:
        raise YoloforgeError(f"engine sidecar is not valid JSON: {error.msg}", path) from None
