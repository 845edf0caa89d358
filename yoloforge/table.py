"""The comparison table: one row per model x size x engine x precision x batch x scope."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from yoloforge.backends import baselines
from yoloforge.device import fingerprint_id
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output
from yoloforge.timing import STAGES

# The unoptimized reference each row is compared with, by the kind of device it ran on, as the
# engines declare it (the article's Darknet through OpenCV DNN on a CPU, PyTorch eager on a GPU).
BASELINES = baselines()
ROW = ["target", "model", "width", "height", "engine", "precision", "batch", "scope"]
ACCURACY_KEY = ["target", "model", "width", "height", "engine", "precision"]
STAGE_COLUMNS = [f"stage_{stage}_ms" for stage in STAGES]
# Two-sided 95%: a rerun's p50 falls in its row's rerun interval 19 times in 20, if the machine
# drifts during the rerun as it did during this run.
RERUN_Z = 1.96
# Round drift above which a run is flagged as noisy: twice what the default config gives on a quiet
# machine (docs/reading-results.md). At 0.2 and two rounds a row, a rerun interval spans x/1.48, so
# two engines less than about 2.2x apart have overlapping intervals and cannot be ranked.
DRIFT_WARNING = 0.2
# Reference boxes below which an agreement figure means little: with fewer than 100, one box found or
# missed moves recall by more than the gate's default 0.01 mAP drop.
MIN_REFERENCE_BOXES = 100
# Accuracy JSON keys that would collide with timing columns get this prefix.
ACCURACY_RENAMED = {"batch", "images", "images_source", "reference"}
ACCURACY_COLUMNS = [
    "accuracy_batch",
    "accuracy_images",
    "accuracy_images_source",
    "accuracy_reference",
    "reference_boxes",
    "coco_map50_95",
    "coco_map50",
    "agreement_precision",
    "agreement_recall",
    "agreement_map50",
    "non_finite_outputs",
    "accuracy_gate",
]
ACCURACY_NUMBERS = [
    column
    for column in ACCURACY_COLUMNS
    if column not in ("accuracy_images_source", "accuracy_reference", "accuracy_gate")
]
COLUMNS = [
    *ROW,
    "iterations",
    "rounds",
    "median_ms",
    "mean_ms",
    "std_ms",
    "min_ms",
    "p10_ms",
    "p90_ms",
    "p99_ms",
    "rerun_low_ms",
    "rerun_high_ms",
    "round_drift",
    *STAGE_COLUMNS,
    "ms_per_image",
    "images_per_second",
    "pipelined_images_per_second",
    "baseline",
    "speedup",
    "gflops_per_image",
    "achieved_tflops",
    "ceiling_tflops",
    "fraction_of_ceiling",
    "build_seconds",
    "build_wait_seconds",
    "engine_bytes",
    "threads",
    *ACCURACY_COLUMNS,
    "device",
    "device_kind",
    "device_name",
    "libraries",
    "git_commit",
    "git_dirty",
    "config_sha256",
    "weights_source",
    "weights_verified",
    "images_source",
    "image_formats",
    "unavailable",
]


def read_json(path: str | os.PathLike, what: str) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise YoloforgeError(f"unreadable {what}: {error}", path) from None
    if not isinstance(record, dict):
        raise YoloforgeError(f"{what} is not a JSON object", path)
    return record


def _timing_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """A bench (or unavailable) JSON -> one row per scope it holds."""
    record = read_json(path, "timing result")
    scopes = record.pop("scopes", None)
    if not scopes:
        raise YoloforgeError("timing result has no scopes (written by an older yoloforge?)", path)
    device = record.pop("device", None)
    if device:
        record["device"] = fingerprint_id(device)
        record["device_kind"] = device.get("kind")
        record["device_name"] = device.get("name")
        record["libraries"] = " ".join(f"{k}={v}" for k, v in sorted(record.pop("libraries", {}).items()))
    flops = record.pop("flops_per_image", None)
    record["gflops_per_image"] = flops / 1e9 if flops else None
    if isinstance(record.get("image_formats"), list):
        record["image_formats"] = " ".join(record["image_formats"])
    return [{**record, **scope} for scope in scopes]


def _accuracy_rows(files: list[str | os.PathLike]) -> pd.DataFrame:
    rows = []
    for path in files:
        record = read_json(path, "accuracy result")
        missing = [key for key in ACCURACY_KEY if key not in record]
        if missing:
            raise YoloforgeError(f"accuracy result lacks {', '.join(missing)}", path)
        rows.append({(f"accuracy_{k}" if k in ACCURACY_RENAMED else k): v for k, v in record.items()})
    frame = pd.DataFrame(rows, columns=[*ACCURACY_KEY, *ACCURACY_COLUMNS])
    duplicated = frame.duplicated(ACCURACY_KEY)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise YoloforgeError(
            "two accuracy results for " + " ".join(str(first[k]) for k in ACCURACY_KEY), files[0]
        )
    return frame[[*ACCURACY_KEY, *ACCURACY_COLUMNS]]


def _ceilings(files: list[str | os.PathLike]) -> dict[tuple[str, str, str], float]:
    """(target, device kind, precision) -> TFLOP/s each target's device probe measured.

    A probe's file is named TARGET.json (results/device/TARGET.json).
    """
    ceilings: dict[tuple[str, str, str], float] = {}
    targets = set()
    for path in files:
        target = Path(path).stem
        if target in targets:
            raise YoloforgeError(f"two device probes for target {target}", path)
        targets.add(target)
        record = read_json(path, "device probe").get("ceilings") or {}
        kind = (record.get("device") or {}).get("kind")
        for precision, figures in (record.get("precisions") or {}).items():
            if figures.get("agree", True):  # a probe whose timed stretches differ gives no fraction
                ceilings[(target, kind, precision)] = float(figures["tflops"])
    return ceilings


def _rerun_intervals(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row, where a rerun's p50 is expected: p50 x exp(+-RERUN_Z x drift x sqrt(2 / k)).

    drift is the target's round-to-round variation: the standard deviation of log round medians
    about their row's mean, pooled over every timed row of the target (k - 1 degrees of freedom
    for a row of k rounds), so one well-sampled estimate serves every row. A row's p50 pools k
    rounds, a rerun's too, hence sqrt(2 / k). Rows of fewer than two rounds give no estimate; a
    target with none has no intervals.
    """
    intervals = pd.DataFrame(
        np.nan, index=frame.index, columns=["rerun_low_ms", "rerun_high_ms", "round_drift"]
    )
    if "round_medians_ms" not in frame:
        return intervals
    rounds = frame["round_medians_ms"].map(
        lambda medians: np.log(medians) if isinstance(medians, list) else None
    )
    for _, members in frame.groupby("target"):
        logs = [
            rounds[index] for index in members.index if rounds[index] is not None and len(rounds[index]) > 1
        ]
        freedom = sum(len(values) - 1 for values in logs)
        if not freedom:
            continue
        drift = float(np.sqrt(sum(np.square(values - values.mean()).sum() for values in logs) / freedom))
        for index in members.index:
            if rounds[index] is None:
                continue
            half = RERUN_Z * drift * np.sqrt(2 / len(rounds[index]))
            median = frame.at[index, "median_ms"]
            intervals.loc[index] = [median * np.exp(-half), median * np.exp(half), drift]
    return intervals


def checkout_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The git commit of a checkout and whether its tree differs from it ("unknown" outside git)."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", "-C", os.fspath(directory), *args], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain"))}


def build_table(
    result_files: list[str | os.PathLike],
    accuracy_files: list[str | os.PathLike] = (),
    provenance: dict[str, Any] | None = None,
    device_files: list[str | os.PathLike] = (),
) -> pd.DataFrame:
    """Timing results (and optionally accuracy results and device probes) -> the comparison table.

    `provenance` (git_commit, git_dirty, config_sha256) is the same for every row. A row's ceiling
    is the one its target's probe measured at the row's precision on the kind of device the row ran
    on (a CPU engine on a GPU node has none); int8 rows and targets without a probe have none.
    """
    rows = [row for path in result_files for row in _timing_rows(path)]
    frame = pd.DataFrame(rows)
    table = frame.reindex(columns=COLUMNS)
    table[["rerun_low_ms", "rerun_high_ms", "round_drift"]] = _rerun_intervals(frame)
    for key, value in (provenance or {}).items():
        table[key] = value
    if accuracy_files:
        accuracy = _accuracy_rows(list(accuracy_files))
        table = table.drop(columns=ACCURACY_COLUMNS).merge(accuracy, on=ACCURACY_KEY, how="left")
        # Figures stay numbers when every value is missing (no annotations: no COCO mAP), so the
        # Parquet and CSV tables read back alike.
        for column in ACCURACY_NUMBERS:
            table[column] = pd.to_numeric(table[column]).astype(float)
    # A number even where no result counted FLOPs (every value None), as the figures from it are.
    table["gflops_per_image"] = pd.to_numeric(table["gflops_per_image"]).astype(float)
    table["ms_per_image"] = table["median_ms"] / table["batch"]
    # One images/s in every scope, from p50 as speedup is, so that their ratios agree; the
    # end-to-end pipelined throughput (stages overlapping) is a figure of its own.
    table["pipelined_images_per_second"] = table["images_per_second"].where(table["scope"] == "end-to-end")
    table["images_per_second"] = 1000 / table["ms_per_image"]
    table["achieved_tflops"] = table["gflops_per_image"] * table["images_per_second"] / 1e3
    ceilings = _ceilings(list(device_files))
    table["ceiling_tflops"] = pd.Series(
        [
            ceilings.get(key, float("nan"))
            for key in zip(table["target"], table["device_kind"], table["precision"], strict=True)
        ],
        index=table.index,
        dtype=float,
    )
    table["fraction_of_ceiling"] = table["achieved_tflops"] / table["ceiling_tflops"]
    table["baseline"] = table["device_kind"].map(lambda kind: " ".join(BASELINES.get(kind, ())) or None)
    same_device = ["target", "model", "width", "height", "batch", "scope", "device_kind", "device_name"]
    is_baseline = pd.Series(
        [
            BASELINES.get(kind) == (engine, precision)
            for kind, engine, precision in zip(
                table["device_kind"], table["engine"], table["precision"], strict=True
            )
        ],
        index=table.index,
        dtype=bool,
    )
    baseline = (
        table[is_baseline & table["median_ms"].notna()]
        .drop_duplicates(same_device)
        .set_index(same_device)["ms_per_image"]
        .rename("baseline_ms_per_image")
    )
    table = table.join(baseline, on=same_device)
    table["speedup"] = table["baseline_ms_per_image"] / table["ms_per_image"]
    return (
        table[COLUMNS]
        .sort_values(["target", "model", "width", "height", "batch", "scope", "engine", "precision"])
        .reset_index(drop=True)
    )


# The columns of the readable (markdown, report) table, with their headers.
SUMMARY = {
    "model": "model",
    "size": "size",
    "engine": "engine",
    "precision": "precision",
    "batch": "batch",
    "scope": "scope",
    "median_ms": "p50 ms",
    "p99_ms": "p99 ms",
    "spread": "p10-p90 ms",
    "rerun": "rerun p50 95% ms",
    "ms_per_image": "ms/img",
    "images_per_second": "img/s",
    "pipelined_images_per_second": "pipelined img/s",
    "speedup": "speedup",
    "achieved_tflops": "TFLOP/s",
    "fraction_of_ceiling": "of ceiling",
    "pre_post": "decode+pre / post ms",
    "accuracy": "accuracy",
    "device_name": "device",
}


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return str(value)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """The timed rows of the comparison table as text cells, the columns people read first.

    Unavailable rows are left out (summary.unavailable_engines lists them with their reasons).
    """
    table = table[table["unavailable"].isna()]
    cells = pd.DataFrame(index=table.index)
    for column in ("model", "engine", "precision", "batch", "scope", "device_name"):
        cells[column] = table[column].map(_number)
    cells["size"] = [f"{w}x{h}" for w, h in zip(table["width"], table["height"], strict=True)]
    for column in (
        "median_ms",
        "p99_ms",
        "ms_per_image",
        "images_per_second",
        "pipelined_images_per_second",
        "speedup",
        "achieved_tflops",
    ):
        cells[column] = table[column].map(_number)
    cells["fraction_of_ceiling"] = table["fraction_of_ceiling"].map(_fraction_cell)
    for cell, low_column, high_column in (
        ("spread", "p10_ms", "p90_ms"),
        ("rerun", "rerun_low_ms", "rerun_high_ms"),
    ):
        cells[cell] = [
            f"{_number(low)}-{_number(high)}" if low == low else ""
            for low, high in zip(table[low_column], table[high_column], strict=True)
        ]
    cells["pre_post"] = [
        f"{_number(decode + pre)} / {_number(post)}" if post == post else ""
        for decode, pre, post in zip(
            table["stage_decode_ms"], table["stage_preprocess_ms"], table["stage_postprocess_ms"], strict=True
        )
    ]
    cells["accuracy"] = [_accuracy_cell(row) for _, row in table.iterrows()]
    return cells[list(SUMMARY)].rename(columns=SUMMARY)


def gate_passes(table: pd.DataFrame) -> pd.Series:
    """Rows whose accuracy result passes the gate (False where there is none)."""
    return table["accuracy_gate"].astype("string").str.startswith("pass").fillna(False).astype(bool)


def gate_fails(table: pd.DataFrame) -> pd.Series:
    """Rows whose accuracy result fails the gate (False where there is none)."""
    return table["accuracy_gate"].notna() & ~gate_passes(table)


def _present(value: Any) -> bool:
    return value is not None and value == value


def accuracy_figure(row: pd.Series) -> str:
    """The gated accuracy figure and what it rests on: COCO mAP on the annotated images, else the
    agreement mAP@0.5 on the reference's boxes (flagged when they are too few to mean much)."""
    if _present(row.get("coco_map50_95")):
        return f"COCO mAP {_number(row['coco_map50_95'])} on {_number(row['accuracy_images'])} images"
    boxes = row.get("reference_boxes")
    if not _present(boxes):
        return f"agreement mAP50 {_number(row['agreement_map50'])} (reference boxes not recorded)"
    few = " (too few)" if boxes < MIN_REFERENCE_BOXES else ""
    return f"agreement mAP50 {_number(row['agreement_map50'])} on {int(boxes)} reference boxes{few}"


def _fraction_cell(fraction: float) -> str:
    if fraction != fraction:
        return ""
    # The ceiling is a measured convolution, not the hardware's peak: an engine may beat it.
    return f"{_number(100 * fraction)}%" + (
        " (faster than the ceiling's convolution)" if fraction > 1 else ""
    )


def _accuracy_cell(row: pd.Series) -> str:
    gate = row["accuracy_gate"]
    if not _present(gate):
        return ""
    if str(gate).startswith("pass"):
        return f"pass: {accuracy_figure(row)}"
    return f"FAIL: {accuracy_figure(row)}; {str(gate).removeprefix('fail: ')}"


def markdown_table(cells: pd.DataFrame) -> str:
    """A frame of text cells -> a GitHub markdown table."""

    def line(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    rows = [line(list(cells.columns)), line(["---"] * len(cells.columns))]
    rows += [line(list(values)) for values in cells.itertuples(index=False)]
    return "\n".join(rows) + "\n"


def write_table(
    table: pd.DataFrame,
    output: str | os.PathLike,
    parquet: str | os.PathLike | None = None,
    markdown: str | os.PathLike | None = None,
) -> None:
    """The table as CSV (every column), optionally Parquet (typed) and markdown (the summary)."""
    with atomic_output(output) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4g")
    if parquet:
        with atomic_output(parquet) as tmp:
            table.to_parquet(tmp, index=False)
    if markdown:
        with atomic_output(markdown) as tmp:
            tmp.write_text(markdown_table(summary_table(table)))


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """A benchmark table written by write_table (CSV or Parquet), with every column of COLUMNS."""
    try:
        table = pd.read_parquet(path) if Path(path).suffix == ".parquet" else pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise YoloforgeError(f"unreadable benchmark table: {error}", path) from None
    missing = [column for column in [*ROW, "median_ms"] if column not in table]
    if missing:
        raise YoloforgeError(f"not a benchmark table (no {', '.join(missing)} column)", path)
    if "sequential_images_per_second" in table:
        # Tables written before images/s had one definition held the pipelined throughput in
        # images_per_second on end-to-end rows.
        table["pipelined_images_per_second"] = table["images_per_second"].where(
            table["scope"] == "end-to-end"
        )
        table["images_per_second"] = 1000 / table["ms_per_image"]
    return table.reindex(columns=[*COLUMNS, *(c for c in table.columns if c not in COLUMNS)])


def compare_tables(first: pd.DataFrame, second: pd.DataFrame) -> pd.DataFrame:
    """Two runs side by side (two devices, two commits): rows both timed, with B/A ratios, and
    whether B's p50 lies inside A's p10-p90 and inside A's rerun interval ("true"/"false"; "" where
    A has none)."""
    columns = [
        *ROW,
        "median_ms",
        "p10_ms",
        "p90_ms",
        "rerun_low_ms",
        "rerun_high_ms",
        "images_per_second",
        "device_name",
        "git_commit",
    ]
    merged = first.reindex(columns=columns).merge(
        second.reindex(columns=columns), on=ROW, suffixes=("_a", "_b")
    )
    merged = merged[merged["median_ms_a"].notna() & merged["median_ms_b"].notna()]
    cells = pd.DataFrame(index=merged.index)
    for column in ("model", "engine", "precision", "batch", "scope"):
        cells[column] = merged[column].map(_number)
    cells.insert(1, "size", [f"{w}x{h}" for w, h in zip(merged["width"], merged["height"], strict=True)])
    for run in ("a", "b"):
        cells[f"{run.upper()} p50 ms"] = merged[f"median_ms_{run}"].map(_number)
        cells[f"{run.upper()} p10-p90"] = [
            f"{_number(low)}-{_number(high)}"
            for low, high in zip(merged[f"p10_ms_{run}"], merged[f"p90_ms_{run}"], strict=True)
        ]
    cells["B/A latency"] = (merged["median_ms_b"] / merged["median_ms_a"]).map(lambda v: f"{v:.3f}")
    cells["B/A img/s"] = (merged["images_per_second_b"] / merged["images_per_second_a"]).map(
        lambda v: f"{v:.3f}"
    )
    for cell, low, high in (
        ("b_p50_in_a_spread", "p10_ms_a", "p90_ms_a"),
        ("b_p50_in_a_rerun", "rerun_low_ms_a", "rerun_high_ms_a"),
    ):
        inside = merged["median_ms_b"].between(merged[low], merged[high])
        cells[cell] = inside.map({True: "true", False: "false"}).where(merged[low].notna(), "")
    return cells.reset_index(drop=True)
