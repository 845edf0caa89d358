"""The Darknet layer kinds: each module of this package declares one (see base.py).

A new kind is one new module here with a `Layer` subclass that sets `section_names`; the cfg
parser, the weights reader and writer, the ONNX writer and the synthetic weights find it here.
"""

from __future__ import annotations

import importlib
import pkgutil

from yoloforge.darknet.layers.base import Layer


def _kinds() -> dict[str, type[Layer]]:
    kinds: dict[str, type[Layer]] = {}
    for module in pkgutil.iter_modules(__path__):
        for value in vars(importlib.import_module(f"{__name__}.{module.name}")).values():
            if isinstance(value, type) and issubclass(value, Layer) and "section_names" in vars(value):
                kinds.update(dict.fromkeys(value.section_names, value))
    return kinds


LAYER_KINDS: dict[str, type[Layer]] = _kinds()  # section name -> kind
