"""Darknet .cfg files: the network they describe.

`Network` resolves what is independent of the input size (layer kinds, channels, parameter
counts); spatial shapes are resolved per input size by `Network.shapes`. Each layer kind is
declared in one module of yoloforge.darknet.layers; this module only walks the sections.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from yoloforge.darknet.layers import LAYER_KINDS
from yoloforge.darknet.layers.base import Layer, ParseContext, Shape
from yoloforge.darknet.sections import Section, parse_cfg_text
from yoloforge.errors import YoloforgeError

__all__ = ["Layer", "Network", "Section", "build_network", "load_cfg", "parse_cfg_text"]

NET_SECTIONS = ("net", "network")
# Darknet stretches the image to the input size unless [net] letter_box=1.
LETTER_BOX_VALUES = (0, 1)


@dataclass
class Network:
    path: str | None
    width: int
    height: int
    channels: int
    layers: list[Layer]
    classes: int
    letter_box: bool = False  # how the images were prepared in training: letterboxed or stretched

    @property
    def heads(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.is_head]

    @property
    def yolo_layers(self) -> list[Layer]:
        """The detection heads ([yolo] and [region]), in cfg order."""
        return self.heads

    def parameter_count(self) -> int:
        return sum(n for layer in self.layers for _, n in layer.parameter_counts())

    def shapes(self, width: int, height: int) -> list[Shape]:
        """(channels, height, width) of every layer's output for an input of width x height."""
        if width <= 0 or height <= 0 or width % 32 or height % 32:
            raise YoloforgeError(f"input size {width}x{height} is not a positive multiple of 32", self.path)
        stride_w, stride_h = self.largest_strides()
        if width % stride_w or height % stride_h:
            multiple = (
                f"{stride_w}" if stride_w == stride_h else f"{stride_w} (width) and {stride_h} (height)"
            )
            raise YoloforgeError(
                f"input size {width}x{height} is not a multiple of {multiple}, this network's largest stride",
                self.path,
            )
        return self._shape_pass(width, height)

    def largest_strides(self) -> tuple[int, int]:
        """How many times narrower and lower than the input the network's coarsest feature map is
        (32 for YOLOv3, 64 for P6, 128 for P7): an input's sides must be multiples of these, or
        the feature maps that a route or shortcut joins differ by a cell. Global pooling's 1x1
        output does not count."""
        probe = 4096
        shapes = self._shape_pass(probe, probe)
        return (
            max((probe // shape[2] for shape in shapes if shape[2] > 1), default=1),
            max((probe // shape[1] for shape in shapes if shape[1] > 1), default=1),
        )

    def _shape_pass(self, width: int, height: int) -> list[Shape]:
        shapes: list[Shape] = []
        for layer in self.layers:
            inputs = [shapes[i] if i >= 0 else (self.channels, height, width) for i in layer.inputs]
            try:
                shape = layer.output_shape(inputs)
            except YoloforgeError as error:
                raise YoloforgeError(f"{error.problem} at input {width}x{height}", self.path) from None
            if shape[1] <= 0 or shape[2] <= 0:
                raise layer.section.fail(f"output is empty at input {width}x{height}")
            shapes.append(shape)
        return shapes


class _Unparsed(Layer):
    """Stands for a layer that could not be parsed, so the layers after it can still be checked."""

    kind = "unparsed"


def _parse_layer(section: Section, context: ParseContext) -> Layer:
    kind = LAYER_KINDS.get(section.name)
    if kind is None:
        raise section.fail(f"unknown layer type [{section.name}]")
    return kind.parse(section, context)


def build_network(sections: list[Section], path: str | None = None) -> Network:
    """The network of parsed sections; one error lists every problem of every section."""
    if not sections or sections[0].name not in NET_SECTIONS:
        raise YoloforgeError("the first section must be [net]", path)
    net = sections[0]
    channels = net.get_int("channels", 3)
    if channels != 3:
        raise net.fail(f"channels={channels}: only 3-channel (RGB) networks are supported")
    letter_box = net.get_int("letter_box", 0)
    if letter_box not in LETTER_BOX_VALUES:
        net.refuse(f"letter_box={letter_box}: Darknet knows only 0 (stretch) and 1 (letterbox)")
    layers: list[Layer] = []
    unparsed: set[int] = set()
    problems: list[str] = list(net.problems)
    for section in sections[1:]:
        context = ParseContext(len(layers), [layer.out_channels for layer in layers], channels)
        try:
            layer = _parse_layer(section, context)
        except YoloforgeError as error:
            # A layer reading an unparsed one would only repeat its problem as a channel mismatch.
            if not (section.name in LAYER_KINDS and _reads_unparsed(section, context, unparsed)):
                problems.append(error.problem)
            unparsed.add(context.index)
            previous = context.channels_of(context.previous)
            layer = _Unparsed(context.index, section, [context.previous], previous, previous)
        problems.extend(section.problems)
        layers.append(layer)
    if problems:
        count = f"{len(problems)} problems: " if len(problems) > 1 else ""
        raise YoloforgeError(count + "; ".join(problems), path)
    classes = {layer.classes for layer in layers if layer.is_head}
    if len(classes) != 1:
        problem = (
            "detection heads disagree on classes"
            if classes
            else "the network has no [yolo] or [region] layer"
        )
        raise YoloforgeError(problem, path)
    width, height = net.get_int("width", 416), net.get_int("height", 416)
    return Network(path, width, height, channels, layers, classes.pop(), letter_box=letter_box == 1)


def _reads_unparsed(section: Section, context: ParseContext, unparsed: set[int]) -> bool:
    references = [context.previous]
    for key in ("layers", "from"):
        with contextlib.suppress(YoloforgeError):
            references += [context.resolve(section, i) for i in section.get_list(key, int, [])]
    return bool(unparsed.intersection(references))


def read_cfg_text(path: str | os.PathLike) -> str:
    """A cfg file's text, read as Darknet and OpenCV read it: as bytes, of which only the ASCII of
    sections and options matters. So a byte-order mark (Windows editors write one) is dropped,
    comments in any encoding are kept (as Latin-1 where they are not UTF-8), and lines end in \n
    whether the file was written with \r\n or \r."""
    path = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise YoloforgeError(f"cannot read cfg: {error.strerror}", path) from None
    if b"\0" in data:
        raise YoloforgeError("not a text cfg file", path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def load_cfg(path: str | os.PathLike) -> Network:
    path = os.fspath(path)
    return build_network(parse_cfg_text(read_cfg_text(path), path), path)
