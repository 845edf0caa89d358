"""The HTML report: the comparison table and its plots in one self-contained file (inline SVG)."""

from __future__ import annotations

import html
import io
import os
from pathlib import Path
from typing import Any

import pandas as pd

from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output
from yoloforge.table import summary_table

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; }
td:nth-child(-n+6) { text-align: left; }
figure { margin: 2em 0; }
figcaption { font-weight: bold; margin-bottom: 0.5em; }
.note { color: #555; font-size: 0.9em; }
"""


def _label(row: pd.Series, with_batch: bool = False) -> str:
    label = f"{row['model']} {row['width']}x{row['height']} {row['engine']} {row['precision']}"
    return f"{label} b{row['batch']}" if with_batch else label


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _barh(labels: list[str], groups: dict[str, list[float]], xlabel: str, errors=None):
    """Horizontal bars, one bar per label and group (scope)."""
    import matplotlib.pyplot as plt
    import numpy as np

    height = 0.8 / max(len(groups), 1)
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.3 * len(labels) * max(len(groups), 1)))
    positions = np.arange(len(labels))
    for index, (name, values) in enumerate(groups.items()):
        axes.barh(
            positions + index * height,
            values,
            height,
            label=name,
            xerr=None if errors is None else errors[name],
            capsize=2,
        )
    axes.set_yticks(positions + height * (len(groups) - 1) / 2, labels)
    axes.invert_yaxis()
    axes.set_xlabel(xlabel)
    axes.legend(loc="best")
    axes.grid(axis="x", alpha=0.3)
    return figure


def _smallest_batch(timed: pd.DataFrame) -> pd.DataFrame:
    return timed[timed["batch"] == timed["batch"].min()]


def latency_plot(timed: pd.DataFrame) -> str:
    rows = _smallest_batch(timed)
    labels = sorted({_label(row) for _, row in rows.iterrows()})
    groups, errors = {}, {}
    for scope, part in rows.groupby("scope", sort=False):
        indexed = {_label(row): row for _, row in part.iterrows()}
        batch = part["batch"].iloc[0]
        medians = [indexed[label]["ms_per_image"] if label in indexed else float("nan") for label in labels]
        low = [
            (indexed[label]["median_ms"] - indexed[label]["p10_ms"]) / batch if label in indexed else 0
            for label in labels
        ]
        high = [
            (indexed[label]["p90_ms"] - indexed[label]["median_ms"]) / batch if label in indexed else 0
            for label in labels
        ]
        groups[f"{scope} (batch {batch})"] = medians
        errors[f"{scope} (batch {batch})"] = [low, high]
    figure = _barh(labels, groups, "ms per image (p50; whiskers p10-p90; log scale)", errors)
    figure.axes[0].set_xscale("log")  # engines differ by orders of magnitude
    return _svg(figure)


def speedup_plot(timed: pd.DataFrame) -> str:
    rows = _smallest_batch(timed)
    labels = sorted({_label(row) for _, row in rows.iterrows()})
    groups = {}
    for scope, part in rows.groupby("scope", sort=False):
        indexed = dict(zip(map(_label, (row for _, row in part.iterrows())), part["speedup"], strict=True))
        groups[scope] = [indexed.get(label, float("nan")) for label in labels]
    figure = _barh(labels, groups, "speedup over the device's baseline (x)")
    figure.axes[0].axvline(1, color="black", linewidth=0.8)
    return _svg(figure)


def batch_plot(timed: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    scopes = list(dict.fromkeys(timed["scope"]))
    figure, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.5), squeeze=False)
    for axis, scope in zip(axes[0], scopes, strict=True):
        for label, part in timed[timed["scope"] == scope].groupby(
            [timed["model"], timed["width"], timed["height"], timed["engine"], timed["precision"]]
        ):
            part = part.sort_values("batch")
            axis.plot(part["batch"], part["ms_per_image"], marker="o", label=" ".join(map(str, label)))
        axis.set_title(scope)
        axis.set_xlabel("batch")
        axis.set_ylabel("ms per image (p50)")
        axis.set_xticks(sorted(set(timed["batch"])))
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _svg(figure)


def distribution_plot(latencies: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    scopes = list(dict.fromkeys(latencies["scope"]))
    keys = ["model", "width", "height", "engine", "precision", "batch"]
    labels = sorted({_label(row, with_batch=True) for _, row in latencies[keys].drop_duplicates().iterrows()})
    figure, axes = plt.subplots(
        1, len(scopes), figsize=(6 * len(scopes), 1.2 + 0.35 * len(labels)), squeeze=False, sharey=True
    )
    for axis, scope in zip(axes[0], scopes, strict=True):
        part = latencies[latencies["scope"] == scope]
        series = {
            _label(dict(zip(keys, key, strict=True)), True): g["latency_ms"] for key, g in part.groupby(keys)
        }
        present = [label for label in labels if label in series]
        axis.boxplot(
            [series[label] for label in present],
            positions=[labels.index(label) for label in present],
            orientation="horizontal",
            whis=(1, 99),
            sym=".",
        )
        axis.set_xscale("log")
        axis.set_title(scope)
        axis.set_xlabel("ms per iteration (box p25-p75, whiskers p1-p99)")
        axis.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(labels)), labels)
    axes[0][0].invert_yaxis()
    return _svg(figure)


def accuracy_plot(timed: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    rows = _smallest_batch(timed[timed["scope"] == "model"])
    coco = rows["coco_map50_95"].notna().any()
    metric = "coco_map50_95" if coco else "agreement_map50"
    rows = rows[rows[metric].notna()]
    figure, axis = plt.subplots(figsize=(8, 5))
    for gate, part in rows.groupby(rows["accuracy_gate"].astype(str).str.startswith("pass")):
        axis.scatter(
            part["ms_per_image"],
            part[metric],
            marker="o" if gate else "x",
            label="gate pass" if gate else "gate fail",
        )
    for _, row in rows.iterrows():
        axis.annotate(
            _label(row),
            (row["ms_per_image"], row[metric]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    axis.set_xlabel(f"ms per image (model scope, p50, batch {rows['batch'].min() if len(rows) else ''})")
    axis.set_ylabel("COCO mAP@[.5:.95]" if coco else "mAP50 agreement with the reference")
    axis.grid(alpha=0.3)
    axis.legend()
    return _svg(figure)


def roofline_plot(timed: pd.DataFrame) -> str:
    """Each row's achieved TFLOP/s (model scope) under the measured ceilings of its device."""
    import matplotlib.pyplot as plt

    rows = timed[(timed["scope"] == "model") & timed["achieved_tflops"].notna()]
    labels = sorted({_label(row) for _, row in rows.iterrows()})
    figure, axis = plt.subplots(figsize=(max(6, 2 + 0.45 * len(labels)), 5))
    for batch, part in rows.groupby("batch"):
        axis.scatter(
            [labels.index(_label(row)) for _, row in part.iterrows()],
            part["achieved_tflops"],
            label=f"batch {batch}",
        )
    ceilings = (
        rows[rows["ceiling_tflops"].notna()]
        .drop_duplicates(["device_name", "precision"])
        .sort_values("ceiling_tflops", ascending=False)
    )
    several = ceilings["device_name"].nunique() > 1
    # Labelled in the legend, not on the lines: FP16 and BF16 ceilings lie too close for text.
    styles = ["--", ":", "-.", (0, (6, 2, 1, 2, 1, 2))]
    for index, (_, row) in enumerate(ceilings.iterrows()):
        device = f" ({row['device_name']})" if several else ""
        axis.axhline(
            row["ceiling_tflops"],
            color="dimgray",
            linestyle=styles[index % len(styles)],
            linewidth=1.2,
            label=f"{row['precision'].upper()} ceiling {row['ceiling_tflops']:.3g} TFLOP/s{device}",
        )
    axis.set_yscale("log")  # CPU engines reach a thousandth of a GPU's ceiling
    axis.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    axis.set_ylabel("achieved TFLOP/s (model scope, p50)")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _svg(figure)


def read_latencies(files: list[str | os.PathLike]) -> pd.DataFrame:
    frames = []
    for path in files:
        try:
            frames.append(pd.read_parquet(path))
        except (OSError, ValueError) as error:
            raise YoloforgeError(f"unreadable latencies: {error}", path) from None
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_report(
    table: pd.DataFrame, latency_files: list[str | os.PathLike], output: str | os.PathLike
) -> list[str]:
    """Write the self-contained HTML report; return the ids of the plots it holds."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: small files, selectable labels
    matplotlib.rcParams["svg.hashsalt"] = "yoloforge"  # stable element ids between runs

    timed = table[table["median_ms"].notna()]
    plots: list[tuple[str, str, str]] = []
    if len(timed):
        plots += [
            ("plot-latency", "Latency per image by engine and precision", latency_plot(timed)),
            ("plot-speedup", "Speedup over the baseline of the same device", speedup_plot(timed)),
            ("plot-batch", "Latency per image against batch size", batch_plot(timed)),
        ]
    if (timed["scope"].eq("model") & timed["achieved_tflops"].notna()).any():
        plots.append(
            ("plot-roofline", "Achieved TFLOP/s against the device's measured ceilings", roofline_plot(timed))
        )
    latencies = read_latencies(latency_files)
    if len(latencies):
        plots.append(
            ("plot-distribution", "Per-iteration latency distributions", distribution_plot(latencies))
        )
    if "accuracy_gate" in timed and timed["accuracy_gate"].notna().any():
        plots.append(("plot-accuracy", "Accuracy against latency", accuracy_plot(timed)))

    provenance = _provenance(table)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>yoloforge benchmark</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>yoloforge benchmark</h1>",
        f'<p class="note">{html.escape(provenance)}</p>',
        "<h2>Comparison table</h2>",
        '<p class="note">p50 is the median over every timed iteration; p10-p90 is the spread of this'
        " run's iterations, pooled over rounds that each ran in a process of its own at a different"
        " time of the run. Rerun p50 95%: where a rerun's p50 lands 19 times in 20 if the machine"
        " drifts as it did during this run (the round-to-round drift of every row of the device,"
        " pooled); it says nothing of another machine or a busier moment"
        " (compare runs with <code>yoloforge compare</code>). Speedup: ms per image of the device's baseline"
        " (opencv-darknet fp32 on a CPU, torch-eager fp32 on a GPU) over the row's. Of ceiling: the row's"
        " TFLOP/s over the device's measured ceiling at its precision (a large 3x3 convolution, timed"
        " by <code>yoloforge device</code>). The full table,"
        " with every column, is benchmark.csv.</p>",
        summary_table(table).to_html(index=False, table_id="benchmark-table", na_rep="", escape=True),
    ]
    for plot_id, caption, svg in plots:
        parts.append(f'<figure id="{plot_id}"><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>')
    parts.append("</body></html>")
    with atomic_output(output) as tmp:
        Path(tmp).write_text("\n".join(parts))
    return [plot_id for plot_id, _, _ in plots]


def _provenance(table: pd.DataFrame) -> str:
    def values(column: str) -> str:
        present = [str(v) for v in dict.fromkeys(table[column].dropna())] if column in table else []
        return ", ".join(present) or "unknown"

    dirty: Any = table["git_dirty"].dropna().iloc[0] if table["git_dirty"].notna().any() else None
    commit = values("git_commit") + (" (uncommitted changes)" if dirty else "")
    return (
        f"Devices: {values('device_name')}. Workflow commit: {commit}. Config sha256:"
        f" {values('config_sha256')}. Weights: {values('weights_source')}. Images: {values('images_source')}."
    )
