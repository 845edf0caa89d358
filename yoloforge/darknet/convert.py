"""The `convert` step: cfg + weights -> checked, simplified ONNX file."""

from __future__ import annotations

import logging
import os

import onnx

from yoloforge.darknet.cfg import load_cfg
from yoloforge.darknet.onnx_export import export_onnx
from yoloforge.darknet.weights import read_weights
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file
from yoloforge.provenance import read_provenance

log = logging.getLogger(__name__)


def parse_size(text: str) -> tuple[int, int]:
    """'416' -> (416, 416); '416x256' -> (416, 256) as width x height."""
    parts = text.lower().split("x")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) <= 0 or any(v % 32 for v in values):
        raise ValueError(f"size {text!r} is not WIDTH or WIDTHxHEIGHT with multiples of 32")
    return values[0], values[1]


def simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    # The converter's equivalence is tested against OpenCV; onnxsim's own random-input check
    # would double the conversion time on large models for no extra assurance.
    simplified, _ = onnxsim.simplify(model, check_n=0)
    return simplified


def convert(
    cfg: str | os.PathLike,
    weights: str | os.PathLike,
    output: str | os.PathLike,
    size: tuple[int, int] | None = None,
    run_simplifier: bool = True,
) -> onnx.ModelProto:
    network = load_cfg(cfg)
    _, params = read_weights(weights, network)
    width, height = size or (network.width, network.height)
    network.shapes(width, height)  # size errors before any work
    provenance = read_provenance(weights)
    metadata = {
        "cfg": os.path.basename(os.fspath(cfg)),
        "weights_sha256": sha256_file(weights),
        "weights_source": provenance.get("source", "unknown"),
        # Whether a sha256 from the config verified the weights ("no": fetched without one). Words,
        # not booleans: the CSV table reads back as the Parquet one does.
        "weights_verified": {True: "yes", False: "no"}.get(provenance.get("verified"), "unknown"),
    }
    model = export_onnx(network, params, width, height, metadata)
    onnx.checker.check_model(model, full_check=True)
    if run_simplifier:
        try:
            model = simplify(model)
        except ImportError as error:
            raise YoloforgeError(
                f"onnxsim, which simplifies the graph every engine is built from, is not installed"
                f" ({error}); install it, or convert with --no-simplify",
                output,
            ) from None
    with atomic_output(output) as tmp:
        onnx.save(model, tmp)
    log.info("wrote %s (%dx%d, %d classes)", output, width, height, network.classes)
    return model
