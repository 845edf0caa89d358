"""Darknet .cfg files: the section parser and the network they describe.

Parsing keeps every key, known or not, with the line it came from, so errors can point at it.
`Network` resolves what is independent of the input size (layer kinds, channels, parameter
counts); spatial shapes are resolved per input size by `Network.shapes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from yoloforge.errors import YoloforgeError

SECTION_ALIASES = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "shortcut": "shortcut",
    "route": "route",
    "upsample": "upsample",
    "maxpool": "maxpool",
    "max": "maxpool",
    "yolo": "yolo",
}
ACTIVATIONS = ("leaky", "linear", "mish", "swish", "logistic", "relu")


@dataclass
class Section:
    """One `[name]` block of a cfg file: its options as written, and where it starts."""

    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    def _fail(self, problem: str) -> YoloforgeError:
        return YoloforgeError(f"line {self.line} [{self.name}]: {problem}", self.path)

    def _convert(self, key: str, raw: str, kind: type):
        try:
            return kind(raw)
        except ValueError:
            raise self._fail(f"{key}={raw!r} is not a valid {kind.__name__}") from None

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self._fail(f"missing required key {key!r}")
            return default
        return self._convert(key, self.options[key], int)

    def get_float(self, key: str, default: float) -> float:
        if key not in self.options:
            return default
        return self._convert(key, self.options[key], float)

    def get_str(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def get_list(self, key: str, kind: type, default: list | None = None) -> list:
        if key not in self.options:
            if default is None:
                raise self._fail(f"missing required key {key!r}")
            return default
        items = [item.strip() for item in self.options[key].split(",") if item.strip()]
        return [self._convert(key, item, kind) for item in items]


def parse_cfg_text(text: str, path: str | None = None) -> list[Section]:
    """Split cfg text into sections; `#` and `;` start comments; keys keep their raw string value."""
    sections: list[Section] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise YoloforgeError(f"line {number}: malformed section header {line!r}", path)
            sections.append(Section(name=line[1:-1].strip().lower(), line=number, path=path))
            continue
        if "=" not in line:
            raise YoloforgeError(f"line {number}: expected key=value, found {line!r}", path)
        if not sections:
            raise YoloforgeError(f"line {number}: option {line!r} before any [section]", path)
        key, value = line.split("=", 1)
        sections[-1].options[key.strip()] = value.strip()
    return sections


@dataclass
class Layer:
    """One layer of the network with what the converter and the weights reader need to know."""

    index: int
    kind: str
    section: Section
    in_channels: int
    out_channels: int
    inputs: list[int]  # indices of the layers whose outputs this layer reads

    # convolutional
    filters: int = 0
    size: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    batch_normalize: bool = False
    activation: str = "linear"
    # route
    route_groups: int = 1
    route_group_id: int = 0
    # yolo
    anchors: list[tuple[float, float]] = field(default_factory=list)
    classes: int = 0
    scale_x_y: float = 1.0

    def parameter_counts(self) -> list[tuple[str, int]]:
        """The arrays this layer reads from a weights file, in file order, with their lengths."""
        if self.kind != "convolutional":
            return []
        counts = [("biases", self.filters)]
        if self.batch_normalize:
            counts += [("scales", self.filters), ("mean", self.filters), ("variance", self.filters)]
        fan_in = self.in_channels // self.groups * self.size * self.size
        counts.append(("weights", self.filters * fan_in))
        return counts


@dataclass
class Network:
    path: str | None
    width: int
    height: int
    channels: int
    layers: list[Layer]
    classes: int

    @property
    def yolo_layers(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == "yolo"]

    def parameter_count(self) -> int:
        return sum(n for layer in self.layers for _, n in layer.parameter_counts())

    def shapes(self, width: int, height: int) -> list[tuple[int, int, int]]:
        """(channels, height, width) of every layer's output for an input of width x height."""
        if width <= 0 or height <= 0 or width % 32 or height % 32:
            raise YoloforgeError(f"input size {width}x{height} is not a positive multiple of 32", self.path)
        shapes: list[tuple[int, int, int]] = []
        for layer in self.layers:
            c, h, w = shapes[layer.inputs[0]] if layer.inputs[0] >= 0 else (self.channels, height, width)
            if layer.kind == "convolutional":
                h = (h + 2 * layer.padding - layer.size) // layer.stride + 1
                w = (w + 2 * layer.padding - layer.size) // layer.stride + 1
            elif layer.kind == "maxpool":
                h = (h + layer.padding - layer.size) // layer.stride + 1
                w = (w + layer.padding - layer.size) // layer.stride + 1
            elif layer.kind == "upsample":
                h, w = h * layer.stride, w * layer.stride
            elif layer.kind == "route":
                sizes = {shapes[i][1:] for i in layer.inputs}
                if len(sizes) != 1:
                    raise layer.section._fail(
                        f"routed layers {layer.inputs} have different sizes {sorted(sizes)}"
                        f" at input {width}x{height}"
                    )
            elif layer.kind == "shortcut" and shapes[layer.inputs[1]][1:] != (h, w):
                raise layer.section._fail(
                    f"shortcut from layer {layer.inputs[1]} has size {shapes[layer.inputs[1]][1:]},"
                    f" expected {(h, w)} at input {width}x{height}"
                )
            if h <= 0 or w <= 0:
                raise layer.section._fail(f"output is empty at input {width}x{height}")
            shapes.append((layer.out_channels, h, w))
        return shapes


def _resolve_index(section: Section, index: int, reference: int, count: int) -> int:
    resolved = reference + index if index < 0 else index
    if not 0 <= resolved < count:
        raise section._fail(f"refers to layer {index}, which does not exist (layer {reference})")
    return resolved


def build_network(sections: list[Section], path: str | None = None) -> Network:
    if not sections or SECTION_ALIASES.get(sections[0].name) != "net":
        raise YoloforgeError("the first section must be [net]", path)
    net = sections[0]
    channels = net.get_int("channels", 3)
    if channels != 3:
        raise net._fail(f"channels={channels}: only 3-channel (RGB) networks are supported")
    layers: list[Layer] = []
    out_channels: list[int] = []
    for section in sections[1:]:
        kind = SECTION_ALIASES.get(section.name)
        if kind is None or kind == "net":
            raise section._fail(f"unknown layer type [{section.name}]")
        index = len(layers)
        previous = index - 1
        in_channels = out_channels[previous] if previous >= 0 else channels
        layer = Layer(index, kind, section, in_channels, in_channels, [previous])
        if kind == "convolutional":
            layer.filters = section.get_int("filters", 1)
            layer.size = section.get_int("size", 1)
            layer.stride = section.get_int("stride", 1)
            pad = section.get_int("pad", 0)
            layer.padding = section.get_int("padding", layer.size // 2 if pad else 0)
            layer.groups = section.get_int("groups", 1)
            layer.batch_normalize = bool(section.get_int("batch_normalize", 0))
            layer.activation = section.get_str("activation", "logistic")
            if section.get_int("dilation", 1) != 1:
                raise section._fail("dilation other than 1 is not supported")
            if layer.filters <= 0 or layer.size <= 0 or layer.stride <= 0 or layer.groups <= 0:
                raise section._fail("filters, size, stride and groups must be positive")
            if layer.padding < 0:
                raise section._fail(f"padding={layer.padding} is negative")
            if in_channels % layer.groups or layer.filters % layer.groups:
                raise section._fail(
                    f"groups={layer.groups} does not divide {in_channels} input channels"
                    f" and {layer.filters} filters"
                )
            layer.out_channels = layer.filters
        elif kind == "shortcut":
            sources = section.get_list("from", int)
            if len(sources) != 1:
                raise section._fail("shortcut from several layers is not supported")
            source = _resolve_index(section, sources[0], index, index)
            if out_channels[source] != in_channels:
                raise section._fail(
                    f"shortcut adds layer {source} ({out_channels[source]} channels)"
                    f" to {in_channels} channels"
                )
            if section.get_str("weights_type", "none") != "none":
                raise section._fail("weighted shortcuts are not supported")
            layer.inputs = [previous, source]
            layer.activation = section.get_str("activation", "linear")
        elif kind == "route":
            layer.inputs = [_resolve_index(section, i, index, index) for i in section.get_list("layers", int)]
            if not layer.inputs:
                raise section._fail("route with no layers")
            layer.route_groups = section.get_int("groups", 1)
            layer.route_group_id = section.get_int("group_id", 0)
            if not 0 <= layer.route_group_id < layer.route_groups:
                raise section._fail(f"group_id={layer.route_group_id} is outside groups={layer.route_groups}")
            for source in layer.inputs:
                if out_channels[source] % layer.route_groups:
                    raise section._fail(
                        f"layer {source} has {out_channels[source]} channels,"
                        f" not divisible into {layer.route_groups} groups"
                    )
            layer.out_channels = sum(out_channels[i] // layer.route_groups for i in layer.inputs)
        elif kind == "upsample":
            layer.stride = section.get_int("stride", 2)
            if layer.stride < 1 or section.get_float("scale", 1.0) != 1.0:
                raise section._fail("only upsampling by a positive stride with scale=1 is supported")
        elif kind == "maxpool":
            layer.stride = section.get_int("stride", 1)
            layer.size = section.get_int("size", layer.stride)
            layer.padding = section.get_int("padding", layer.size - 1)
            if layer.size <= 0 or layer.stride <= 0 or layer.padding < 0:
                raise section._fail("size and stride must be positive, padding non-negative")
        elif kind == "yolo":
            layer.classes = section.get_int("classes", 20)
            if layer.classes <= 0:
                raise section._fail(f"classes={layer.classes} is not positive")
            anchors = section.get_list("anchors", float)
            if len(anchors) % 2:
                raise section._fail("anchors must come in width,height pairs")
            pairs = list(zip(anchors[::2], anchors[1::2], strict=True))
            mask = section.get_list("mask", int, list(range(len(pairs))))
            if any(not 0 <= m < len(pairs) for m in mask):
                raise section._fail(f"mask {mask} refers to anchors outside the {len(pairs)} given")
            layer.anchors = [pairs[m] for m in mask]
            layer.scale_x_y = section.get_float("scale_x_y", 1.0)
            if section.get_int("new_coords", 0):
                raise section._fail("new_coords=1 is not supported")
            expected = len(mask) * (5 + layer.classes)
            if in_channels != expected:
                raise section._fail(
                    f"expects {expected} input channels ({len(mask)} anchors x (5 + {layer.classes}"
                    f" classes)), the previous layer gives {in_channels}"
                )
        if layer.activation not in ACTIVATIONS:
            raise section._fail(f"unknown activation {layer.activation!r}")
        layers.append(layer)
        out_channels.append(layer.out_channels)
    classes = {layer.classes for layer in layers if layer.kind == "yolo"}
    if len(classes) != 1:
        problem = "yolo layers disagree on classes" if classes else "the network has no [yolo] layer"
        raise YoloforgeError(problem, path)
    width, height = net.get_int("width", 416), net.get_int("height", 416)
    return Network(path, width, height, channels, layers, classes.pop())


def load_cfg(path: str | os.PathLike) -> Network:
    path = os.fspath(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise YoloforgeError(f"cannot read cfg: {error.strerror}", path) from None
    except UnicodeDecodeError:
        raise YoloforgeError("not a text cfg file", path) from None
    return build_network(parse_cfg_text(text, path), path)
