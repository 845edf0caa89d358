"""Activation ranges for 8-bit engines: the largest magnitude each fused chain's input reaches on
the calibration images, measured once by the FP32 model and kept in a calibration cache.

As TensorRT's calibration cache, the file sits in the engine folder, outside the build's declared
outputs, so a rebuild (another batch size, a deleted engine) reuses it; it names the ONNX file's
sha256 and the images it was measured on, and is measured again when either differs.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from yoloforge.backends.base import BuildRequest, calibration_batches, engine_stem
from yoloforge.files import sha256_file, write_json

log = logging.getLogger(__name__)

METHOD = "max-abs per tensor, FP32 model"


def cache_path(request: BuildRequest) -> Path:
    """One cache per model, size and precision in the engine folder, shared by its batch sizes."""
    return request.output.parent / f"{re.sub(r'-b[0-9]+$', '', engine_stem(request))}.calibration.json"


def cached_activation_ranges(request: BuildRequest, device: str) -> tuple[dict[str, float], dict[str, Any]]:
    """(chain name -> input range, what the build records: the cache and whether it was reused)."""
    path = cache_path(request)
    key = {
        "onnx_sha256": sha256_file(request.onnx),
        "images": sorted(image.name for image in request.calibration),
        "method": METHOD,
    }
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("ranges"), dict):
        log.info("calibration cache reused: %s", path)
        return cached["ranges"], {"calibration_cache": str(path), "calibration": "cache reused"}
    ranges = activation_ranges(request, device)
    write_json(path, {"key": key, "ranges": ranges})
    log.info("calibration measured on %d images, cache written: %s", len(request.calibration), path)
    return ranges, {
        "calibration_cache": str(path),
        "calibration": f"measured on {len(request.calibration)} images",
    }


def activation_ranges(request: BuildRequest, device: str) -> dict[str, float]:
    """Chain name -> the largest |input| of that chain over the request's calibration images."""
    import torch

    from yoloforge.backends.torch_graph import chain_in_torch, onnx_module

    ranges: dict[str, float] = {}

    def recording(chain):
        run = chain_in_torch(chain)

        def recorded(x, *arguments):
            ranges[chain.name] = max(ranges.get(chain.name, 0.0), float(x.abs().max()))
            return run(x, *arguments)

        return recorded

    module = onnx_module(request.onnx, fuse=recording).to(device)
    with torch.inference_mode():
        for batch in calibration_batches(request, batch=8):
            module(torch.from_numpy(batch).to(device))
    return ranges
