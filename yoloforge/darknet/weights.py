"""Darknet .weights files: a small header, then every layer's float32 arrays in cfg order."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yoloforge.darknet.cfg import Network
from yoloforge.darknet.layers.base import LayerParams
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output


@dataclass(frozen=True)
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 0
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        # Darknet widened `seen` to 64 bits in format 0.2; later major/minor never went past 1000.
        return self.major * 10 + self.minor >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def size(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)

    def to_bytes(self) -> bytes:
        version = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        return version + np.array([self.seen], dtype="<u8" if self.seen_is_64bit else "<u4").tobytes()


def read_header(data: bytes, path: str) -> WeightsHeader:
    if len(data) < 12:
        raise YoloforgeError(f"too short for a Darknet weights header ({len(data)} bytes)", path)
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    header = WeightsHeader(major, minor, revision)
    if len(data) < header.size:
        raise YoloforgeError(f"too short for a Darknet weights header ({len(data)} bytes)", path)
    seen_dtype = "<u8" if header.seen_is_64bit else "<u4"
    seen = int(np.frombuffer(data[12 : header.size], dtype=seen_dtype)[0])
    return WeightsHeader(major, minor, revision, seen)


def read_weights(path: str | os.PathLike, network: Network) -> tuple[WeightsHeader, list[LayerParams]]:
    """Read every layer's arrays; the file must hold exactly the floats the cfg asks for."""
    path = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise YoloforgeError(f"cannot read weights: {error.strerror}", path) from None
    header = read_header(data, path)
    body = len(data) - header.size
    expected = network.parameter_count()
    cfg_name = os.path.basename(network.path or "the cfg")
    if body % 4:
        raise YoloforgeError(
            f"{body} bytes after the header is not a whole number of float32 values"
            f" (expected {expected} floats for {cfg_name})",
            path,
        )
    found = body // 4
    if found != expected:
        relation = "truncated" if found < expected else "has extra data"
        raise YoloforgeError(f"{relation}: expected {expected} floats for {cfg_name}, found {found}", path)
    floats = np.frombuffer(data, dtype="<f4", offset=header.size)
    params: list[LayerParams] = []
    offset = 0
    for layer in network.layers:
        arrays: LayerParams = {}
        for name, count in layer.parameter_counts():
            arrays[name] = floats[offset : offset + count]
            offset += count
        params.append(arrays)
    return header, params


def write_weights(
    path: str | os.PathLike, network: Network, params: list[LayerParams], header: WeightsHeader
) -> None:
    """Write arrays in Darknet order, checking each against the cfg; atomic."""
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        handle.write(header.to_bytes())
        for layer, arrays in zip(network.layers, params, strict=True):
            for name, count in layer.parameter_counts():
                array = np.ascontiguousarray(arrays[name], dtype="<f4").reshape(-1)
                if array.size != count:
                    raise YoloforgeError(
                        f"layer {layer.index} {name}: {array.size} values, cfg needs {count}", path
                    )
                handle.write(array.tobytes())
