"""The comparison table: one row per model x size x engine x precision x batch x scope."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from yoloforge.device import fingerprint_id
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output

BASELINE_ENGINE = "opencv-darknet"  # the article's unoptimized Darknet row
KEY = ["model", "width", "height", "batch", "scope", "target"]
COLUMNS = [
    *KEY[:3],
    "engine",
    "precision",
    *KEY[3:],
    "iterations",
    "median_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "p90_ms",
    "ms_per_image",
    "images_per_second",
    "speedup",
    "build_seconds",
    "engine_bytes",
    "threads",
    "weights_source",
    "images_source",
    "device",
    "libraries",
    "unavailable",
]


def build_table(result_files: list[str | os.PathLike]) -> pd.DataFrame:
    rows = []
    for path in result_files:
        try:
            record = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise YoloforgeError(f"unreadable timing result: {error}", path) from None
        record.pop("latencies_ms", None)
        if "device" in record:
            record["device"] = fingerprint_id(record["device"])
            record["libraries"] = " ".join(f"{k}={v}" for k, v in sorted(record["libraries"].items()))
        rows.append(record)
    table = pd.DataFrame(rows).reindex(
        columns=sorted({*COLUMNS, *(k for r in rows for k in r)} - {"speedup"})
    )
    table["ms_per_image"] = table["median_ms"] / table["batch"]
    baseline = (
        table[table["engine"] == BASELINE_ENGINE]
        .set_index(KEY)["ms_per_image"]
        .rename("baseline_ms_per_image")
    )
    table = table.join(baseline, on=KEY)
    table["speedup"] = table["baseline_ms_per_image"] / table["ms_per_image"]
    return table[COLUMNS].sort_values(["target", "model", "width", "height", "batch", "engine", "precision"])


def write_table(table: pd.DataFrame, output: str | os.PathLike) -> None:
    with atomic_output(output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
