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
from yoloforge.summary import INTRODUCTION, Summary, summarize
from yoloforge.table import gate_fails, summary_table

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #eee; }
td:nth-child(-n+6) { text-align: left; }
figure { margin: 2em 0; }
figcaption { font-weight: bold; margin-bottom: 0.5em; }
.note { color: #555; font-size: 0.9em; }
.warning { background: #fff3cd; border-left: 4px solid #d9822b; padding: 0.4em 0.8em; }
#decision td, #decision th, #unavailable td, #unavailable th { text-align: left; }
#decision td.deploy { font-weight: bold; min-width: 10em; }
tr.fails td { background: #fde2e2; }
tr.fails td.accuracy { color: #a40000; font-weight: bold; }
"""
# Appended to the label of every row that fails the accuracy gate, in every plot.
FAIL_MARK = " [fails gate]"
FAIL_COLOR = "#a40000"


def _label(row: pd.Series, with_batch: bool = False) -> str:
    label = f"{row['model']} {row['width']}x{row['height']} {row['engine']} {row['precision']}"
    return f"{label} b{row['batch']}" if with_batch else label


def _failing(timed: pd.DataFrame) -> set[str]:
    """Labels (without batch) of the rows that fail the accuracy gate."""
    return {_label(row) for _, row in timed[gate_fails(timed)].iterrows()}


def _tick_labels(axis, positions, labels: list[str], failing: set[str], which: str = "y", **style) -> None:
    """Tick labels; those of failing rows carry FAIL_MARK, in red."""
    shown = [label + FAIL_MARK if label in failing else label for label in labels]
    if which == "y":
        axis.set_yticks(positions, shown, **style)
        ticks = axis.get_yticklabels()
    else:
        axis.set_xticks(positions, shown, **style)
        ticks = axis.get_xticklabels()
    for tick, label in zip(ticks, labels, strict=True):
        if label in failing:
            tick.set_color(FAIL_COLOR)


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _barh(labels: list[str], groups: dict[str, list[float]], xlabel: str, failing: set[str], errors=None):
    """Horizontal bars, one bar per label and group (scope); failing rows' bars hatched."""
    import matplotlib.pyplot as plt
    import numpy as np

    height = 0.8 / max(len(groups), 1)
    figure, axes = plt.subplots(figsize=(9, 1.2 + 0.3 * len(labels) * max(len(groups), 1)))
    positions = np.arange(len(labels))
    for index, (name, values) in enumerate(groups.items()):
        bars = axes.barh(
            positions + index * height,
            values,
            height,
            label=name,
            xerr=None if errors is None else errors[name],
            capsize=2,
        )
        for bar, label in zip(bars, labels, strict=True):
            if label in failing:
                bar.set_hatch("///")
                bar.set_edgecolor(FAIL_COLOR)
    _tick_labels(axes, positions + height * (len(groups) - 1) / 2, labels, failing)
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
    figure = _barh(labels, groups, "ms per image (p50; whiskers p10-p90; log scale)", _failing(timed), errors)
    figure.axes[0].set_xscale("log")  # engines differ by orders of magnitude
    return _svg(figure)


def speedup_plot(timed: pd.DataFrame) -> str:
    rows = _smallest_batch(timed)
    labels = sorted({_label(row) for _, row in rows.iterrows()})
    groups = {}
    for scope, part in rows.groupby("scope", sort=False):
        indexed = dict(zip(map(_label, (row for _, row in part.iterrows())), part["speedup"], strict=True))
        groups[scope] = [indexed.get(label, float("nan")) for label in labels]
    figure = _barh(
        labels, groups, "speedup: the baseline's p50 ms per image over the row's (x)", _failing(timed)
    )
    figure.axes[0].axvline(1, color="black", linewidth=0.8)
    return _svg(figure)


def batch_plot(timed: pd.DataFrame) -> str:
    import matplotlib.pyplot as plt

    failing = _failing(timed)
    scopes = list(dict.fromkeys(timed["scope"]))
    figure, axes = plt.subplots(1, len(scopes), figsize=(6 * len(scopes), 4.5), squeeze=False)
    for axis, scope in zip(axes[0], scopes, strict=True):
        for _, part in timed[timed["scope"] == scope].groupby(
            [timed["model"], timed["width"], timed["height"], timed["engine"], timed["precision"]]
        ):
            part = part.sort_values("batch")
            label = _label(part.iloc[0])
            fails = label in failing
            axis.plot(
                part["batch"],
                part["ms_per_image"],
                marker="x" if fails else "o",
                linestyle="--" if fails else "-",
                label=label + FAIL_MARK if fails else label,
            )
        axis.set_title(scope)
        axis.set_xlabel("batch")
        axis.set_ylabel("ms per image (p50)")
        axis.set_xticks(sorted(set(timed["batch"])))
        axis.grid(alpha=0.3)
    legend = axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    for text in legend.get_texts():
        if text.get_text().endswith(FAIL_MARK):
            text.set_color(FAIL_COLOR)
    return _svg(figure)


def distribution_plot(latencies: pd.DataFrame, failing: set[str]) -> str:
    import matplotlib.pyplot as plt

    scopes = list(dict.fromkeys(latencies["scope"]))
    keys = ["model", "width", "height", "engine", "precision", "batch"]
    rows = latencies[keys].drop_duplicates()
    labels = sorted({_label(row, with_batch=True) for _, row in rows.iterrows()})
    failing_batches = {_label(row, True) for _, row in rows.iterrows() if _label(row) in failing}
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
    _tick_labels(axes[0][0], range(len(labels)), labels, failing_batches)
    axes[0][0].invert_yaxis()
    return _svg(figure)


def pareto_front(points: pd.DataFrame, latency: str, metric: str) -> pd.Index:
    """Rows no other row beats on both latency (lower) and the metric (higher)."""
    front = []
    best = float("-inf")
    for index, row in points.sort_values([latency, metric], ascending=[True, False]).iterrows():
        if row[metric] > best:
            front.append(index)
            best = row[metric]
    return pd.Index(front)


def accuracy_plot(timed: pd.DataFrame) -> str:
    """One panel per model and size. Colour: engine x precision (legend); marker: gate pass (o) or
    fail (x). Only the Pareto front (no row both faster and more accurate) is labelled, so labels of
    the many rows that sit on top of each other (fp32 engines agreeing to 1.000) cannot pile up."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = _smallest_batch(timed[timed["scope"] == "model"])
    coco = rows["coco_map50_95"].notna().any()
    metric = "coco_map50_95" if coco else "agreement_map50"
    rows = rows[rows[metric].notna()]
    panels = list(dict.fromkeys(zip(rows["model"], rows["width"], rows["height"], strict=True)))
    engines = sorted(set(zip(rows["engine"], rows["precision"], strict=True)))
    colours = plt.get_cmap("tab20" if len(engines) > 10 else "tab10")
    figure, axes = plt.subplots(
        1, max(len(panels), 1), figsize=(4.2 * max(len(panels), 1) + 2.5, 4.2), squeeze=False
    )
    failing = gate_fails(rows)
    for axis, (model, width, height) in zip(axes[0], panels, strict=True):
        part = rows[(rows["model"] == model) & (rows["width"] == width) & (rows["height"] == height)]
        for index, row in part.iterrows():
            colour = colours(engines.index((row["engine"], row["precision"])) % colours.N)
            axis.scatter(
                row["ms_per_image"],
                row[metric],
                color=colour,
                marker="x" if failing[index] else "o",
                s=50,
                linewidths=2 if failing[index] else None,
            )
        front = pareto_front(part, "ms_per_image", metric)
        for rank, index in enumerate(front):
            row = part.loc[index]
            # The slowest point sits at the right edge: its label goes to its left, inside the panel.
            last = rank == len(front) - 1 and len(front) > 1
            axis.annotate(
                f"{row['engine']} {row['precision']}" + (FAIL_MARK if failing[index] else ""),
                (row["ms_per_image"], row[metric]),
                fontsize=7,
                color=FAIL_COLOR if failing[index] else "black",
                xytext=(-6 if last else 6, -12 if rank % 2 else 6),  # alternate below and above
                textcoords="offset points",
                ha="right" if last else "left",
            )
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 5, 7)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())  # a narrow log axis labels its minor ticks too
        axis.margins(x=0.15, y=0.1)
        axis.set_title(f"{model} {width}x{height}", fontsize=10)
        axis.set_xlabel(f"ms per image (model scope, p50, batch {part['batch'].min()})")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("COCO mAP@[.5:.95]" if coco else "mAP50 agreement with the reference")
    handles = [
        Line2D([], [], color=colours(i % colours.N), marker="o", linestyle="", label=f"{e} {p}")
        for i, (e, p) in enumerate(engines)
    ]
    handles += [
        Line2D([], [], color="gray", marker="o", linestyle="", label="passes the gate"),
        Line2D([], [], color="gray", marker="x", linestyle="", markeredgewidth=2, label="fails the gate"),
    ]
    axes[0][-1].legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _svg(figure)


def roofline_plot(timed: pd.DataFrame) -> str:
    """Each row's achieved TFLOP/s (model scope) under the measured ceilings of its device."""
    import matplotlib.pyplot as plt

    rows = timed[(timed["scope"] == "model") & timed["achieved_tflops"].notna()]
    labels = sorted({_label(row) for _, row in rows.iterrows()})
    figure, axis = plt.subplots(figsize=(max(6, 2 + 0.45 * len(labels)), 5))
    failing = gate_fails(rows)
    for colour, (batch, part) in enumerate(rows.groupby("batch")):
        for fails in (False, True):
            points = part[failing[part.index] == fails]
            if len(points):
                axis.scatter(
                    [labels.index(_label(row)) for _, row in points.iterrows()],
                    points["achieved_tflops"],
                    color=f"C{colour}",
                    marker="x" if fails else "o",
                    label=f"batch {batch}" + (FAIL_MARK if fails else ""),
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
    _tick_labels(axis, range(len(labels)), labels, _failing(rows), "x", rotation=60, ha="right", fontsize=8)
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
            (
                "plot-distribution",
                "Per-iteration latency distributions",
                distribution_plot(latencies, _failing(timed)),
            )
        )
    # A gate can pass with no figure to plot: a reference that found no boxes gives no agreement.
    scored = timed[timed["scope"].eq("model")][["coco_map50_95", "agreement_map50"]].notna().any(axis=None)
    if "accuracy_gate" in timed and scored:
        plots.append(("plot-accuracy", "Accuracy against latency", accuracy_plot(timed)))

    summary = summarize(table)
    shown = table[table["unavailable"].isna()]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>yoloforge benchmark</title>',
        f"<style>{STYLE}</style></head><body>",
        "<h1>yoloforge benchmark</h1>",
        f'<p class="note">{html.escape(_provenance(table))}</p>',
        *_summary_html(summary),
        "<h2>Comparison table</h2>",
        '<p class="note">p50 is the median over every timed iteration; p10-p90 is the spread of this'
        " run's iterations, pooled over rounds that each ran in a process of its own at a different"
        " time of the run. Rerun p50 95%: where a rerun's p50 lands 19 times in 20 if the machine"
        " drifts as it did during this run (the round-to-round drift of every row of the device,"
        " pooled); it says nothing of another machine or a busier moment"
        " (compare runs with <code>yoloforge compare</code>). Speedup: the p50 ms per image of the"
        " device's baseline (opencv-darknet fp32 on a CPU, torch-eager fp32 on a GPU) over the row's,"
        " same batch and scope; img/s is 1000 over ms/img, so its ratios are the speedups. Pipelined"
        " img/s (end to end): images per second when the stages overlap, a throughput, not a speedup."
        " Of ceiling: the row's TFLOP/s over the device's measured ceiling at its precision (a large"
        " 3x3 convolution, timed by <code>yoloforge device</code>). Rows in red fail the accuracy gate."
        " The full table, with every column, is benchmark.csv.</p>",
        _html_table(
            summary_table(shown),
            "benchmark-table",
            row_classes=["fails" if fails else "" for fails in gate_fails(shown)],
            cell_classes={"accuracy": "accuracy"},
        ),
    ]
    if len(summary.unavailable):
        parts += [
            "<h2>Unavailable here</h2>",
            '<p class="note">Engines and precisions that could not run on this device, left out of the'
            " table above.</p>",
            _html_table(summary.unavailable, "unavailable"),
        ]
    for plot_id, caption, svg in plots:
        parts.append(f'<figure id="{plot_id}"><figcaption>{html.escape(caption)}</figcaption>{svg}</figure>')
    parts.append("</body></html>")
    with atomic_output(output) as tmp:
        Path(tmp).write_text("\n".join(parts))
    return [plot_id for plot_id, _, _ in plots]


def _html_table(
    cells: pd.DataFrame,
    table_id: str,
    row_classes: list[str] | None = None,
    cell_classes: dict[str, str] | None = None,
) -> str:
    """A frame of text cells as an HTML table, with a class per row and per column where given."""
    cell_classes = cell_classes or {}
    classes = [cell_classes.get(str(column), "") for column in cells.columns]
    lines = [f'<table id="{table_id}"><thead><tr>']
    lines += [f"<th>{html.escape(str(column))}</th>" for column in cells.columns]
    lines.append("</tr></thead><tbody>")
    for index, values in enumerate(cells.itertuples(index=False)):
        row_class = row_classes[index] if row_classes else ""
        lines.append(f'<tr class="{row_class}">' if row_class else "<tr>")
        lines += [
            (f'<td class="{cls}">' if cls else "<td>") + html.escape(str(value)) + "</td>"
            for value, cls in zip(values, classes, strict=True)
        ]
        lines.append("</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def _summary_html(summary: Summary) -> list[str]:
    parts = ['<section id="summary">', "<h2>Which engine to deploy</h2>"]
    parts += [
        f'<p class="warning"><strong>Warning:</strong> {html.escape(text)}</p>' for text in summary.warnings()
    ]
    parts.append(f'<p class="note">{html.escape(INTRODUCTION)}</p>')
    if len(summary.decisions):
        parts.append(_html_table(summary.decisions, "decision", cell_classes={"deploy": "deploy"}))
    else:
        parts.append("<p>Nothing was timed.</p>")
    for title, notes in (
        ("Timing drift", summary.drift),
        ("What the accuracy figures rest on", summary.accuracy),
    ):
        if notes:
            parts.append(f"<h3>{title}</h3><ul>")
            parts += [
                f'<li class="warning">{html.escape(note.text)}</li>'
                if note.warning
                else f"<li>{html.escape(note.text)}</li>"
                for note in notes
            ]
            parts.append("</ul>")
    parts.append("</section>")
    return parts


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
