"""Where an input file came from, kept in a JSON sidecar (`<file>.json`) written beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from yoloforge.errors import YoloforgeError
from yoloforge.files import write_json


def provenance_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.json")


def read_provenance(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar's record, or {} when the file has none (a user-supplied file, say)."""
    sidecar = provenance_path(path)
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise YoloforgeError(f"provenance is not valid JSON: {error.msg}", sidecar) from None


def write_provenance(path: str | os.PathLike, **record: Any) -> None:
    write_json(provenance_path(path), record)
