"""Engine backends behind one interface; heavy libraries are imported only when used.

Each backend class declares its facts (EngineFacts) once; the config schema's engine parts, the
workflow's build resources, the table's baselines, the accuracy reference and the CLI's choices
are derived here from those declarations (docs/extending.md).
"""

from __future__ import annotations

from typing import Any

from yoloforge.backends.base import (
    DEVICE_KINDS,
    OPTION_TYPES,
    PRECISIONS,
    Backend,
    BuildOption,
    BuildRequest,
    EngineFacts,
    Runner,
    read_sidecar,
)
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
# The baseline's precision: the unoptimized reference every row's speedup is measured against.
BASELINE_PRECISION = "fp32"
ENGINES_SCHEMA = "workflow/schemas/engines.schema.yaml"


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise YoloforgeError(f"unknown engine {name!r}; known: {', '.join(sorted(BACKENDS))}") from None


def facts(engine: str) -> EngineFacts:
    return BACKENDS[engine].facts


def baselines() -> dict[str, tuple[str, str]]:
    """Device kind -> the (engine, precision) every row on that kind of device is compared with."""
    return {
        kind: (name, BASELINE_PRECISION)
        for name, backend in BACKENDS.items()
        for kind in backend.facts.baseline_on
    }


def reference_engines() -> tuple[str, ...]:
    """The accuracy reference implementations, in order of preference."""
    ranked = {name: backend.facts.reference_rank for name, backend in BACKENDS.items()}
    return tuple(sorted((name for name, rank in ranked.items() if rank is not None), key=ranked.get))


def build_times_kernels(engine: str, options: dict[str, Any]) -> bool:
    """Whether building `engine` with these config options times kernels on the device."""
    return facts(engine).builds_time_kernels(options)


def build_holds_device(engine: str, options: dict[str, Any]) -> bool:
    """Whether building `engine` with these config options needs the device from start to end;
    builds that time kernels but compile off the device overlap, serialized by the device lock."""
    return facts(engine).builds_hold_device(options)


def _option_description(option: BuildOption) -> str:
    default = option.default
    if isinstance(default, dict):
        text = ", ".join(f"{_json_text(value)} on {kind}" for kind, value in default.items())
    else:
        text = _json_text(default)
    return f"{option.help} (default: {text})"


def _json_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def engines_schema() -> dict[str, Any]:
    """The config schema's engine parts (engines, engine_options) from the declared facts; the
    workflow's config schema refers to these, written to ENGINES_SCHEMA by `yoloforge schema`."""
    names = list(BACKENDS)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$defs": {
            "engines": {
                "type": "object",
                "propertyNames": {"enum": list(names)},
                "properties": {
                    name: {
                        "type": "array",
                        "uniqueItems": True,
                        "items": {"enum": list(backend.facts.precisions)},
                    }
                    for name, backend in BACKENDS.items()
                },
            },
            "engine_options": {
                "type": "object",
                "propertyNames": {"enum": list(names)},
                "properties": {
                    name: {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            key: {
                                "type": OPTION_TYPES[option.type],
                                "description": _option_description(option),
                            }
                            for key, option in backend.facts.options.items()
                        },
                    }
                    for name, backend in BACKENDS.items()
                },
            },
        },
    }


def engines_schema_text() -> str:
    import yaml

    header = (
        "# Generated from the engines' declared facts (yoloforge/backends, docs/extending.md) by\n"
        f"#   python -m yoloforge schema --output {ENGINES_SCHEMA}\n"
        "# Edit the facts, not this file: a test checks that the two agree.\n"
    )
    return header + yaml.safe_dump(engines_schema(), sort_keys=False, default_flow_style=None, width=100)


__all__ = [
    "BACKENDS",
    "BASELINE_PRECISION",
    "DEVICE_KINDS",
    "ENGINES_SCHEMA",
    "PRECISIONS",
    "Backend",
    "BuildOption",
    "BuildRequest",
    "EngineFacts",
    "Runner",
    "baselines",
    "build_holds_device",
    "build_times_kernels",
    "engines_schema",
    "engines_schema_text",
    "facts",
    "get_backend",
    "read_sidecar",
    "reference_engines",
]
