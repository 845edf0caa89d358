"""The answer a run gives: per model, size, batch and scope, which engine x precision to deploy and
how sure that is, with what the answer rests on (drift, reference boxes) and what could not run.

Every "x faster" here is the speedup's definition: the ratio of two rows' p50 ms per image, same
model, size, batch and scope. Its range takes each row's rerun interval at the end least (and most)
favourable to the ratio.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from yoloforge.files import atomic_output
from yoloforge.table import (
    DRIFT_WARNING,
    MIN_REFERENCE_BOXES,
    _number,
    gate_passes,
    markdown_table,
)

GROUP = ["target", "model", "width", "height", "batch", "scope"]
NO_INTERVAL = "unknown: no rerun interval (one round a row)"


@dataclass
class Note:
    text: str
    warning: bool = False


@dataclass
class Summary:
    """The decision table (text cells), notes on drift and accuracy, and the engines that did not run."""

    decisions: pd.DataFrame
    drift: list[Note] = field(default_factory=list)
    accuracy: list[Note] = field(default_factory=list)
    unavailable: pd.DataFrame = field(default_factory=pd.DataFrame)

    def warnings(self) -> list[str]:
        """Each drift warning, and one for every accuracy figure that rests on too few boxes."""
        warnings = [note.text for note in self.drift if note.warning]
        few = [note.text.split(":")[0] for note in self.accuracy if note.warning]
        if few:
            warnings.append(
                f"the accuracy figures of {', '.join(few)} rest on fewer than {MIN_REFERENCE_BOXES}"
                " reference boxes, too few to mean much: one box found or missed moves them by more than"
                " the gate allows. Score more images, or sizes and weights where the model finds objects."
            )
        return warnings


def _name(row: pd.Series) -> str:
    return f"{row['engine']} {row['precision']}"


def _has_interval(row: pd.Series) -> bool:
    return row["rerun_low_ms"] == row["rerun_low_ms"] and row["rerun_high_ms"] == row["rerun_high_ms"]


def confidence(faster: pd.Series, slower: pd.Series) -> str:
    """How sure it is that `faster` is faster than `slower`, in words that follow from their rerun
    intervals: clear when they do not overlap (the margin's range lies above 1x), else within noise
    (a rerun may well rank them the other way)."""
    if not (_has_interval(faster) and _has_interval(slower)):
        return NO_INTERVAL
    if faster["rerun_high_ms"] < slower["rerun_low_ms"]:
        return "clear: intervals do not overlap"
    return f"within noise of {_name(slower)}: intervals overlap"


def margin(faster: pd.Series, slower: pd.Series) -> str:
    """'1.32x over NAME (1.10-1.55x)': the speedup of `faster` over `slower` and its range."""
    ratio = slower["ms_per_image"] / faster["ms_per_image"]
    text = f"{ratio:.2f}x over {_name(slower)}"
    if _has_interval(faster) and _has_interval(slower):
        low = slower["rerun_low_ms"] / faster["rerun_high_ms"]
        high = slower["rerun_high_ms"] / faster["rerun_low_ms"]
        text += f" ({low:.2f}-{high:.2f}x)"
    return text


def _latency(row: pd.Series) -> str:
    text = _number(row["ms_per_image"])
    if _has_interval(row):
        batch = row["batch"]
        text += f" ({_number(row['rerun_low_ms'] / batch)}-{_number(row['rerun_high_ms'] / batch)})"
    return text


def _decide(group: pd.DataFrame) -> dict[str, str]:
    """One decision row: the fastest deployable row of one model, size, batch and scope. Deployable
    rows pass the accuracy gate; where no row has an accuracy result, the decision is on speed alone
    and says so."""
    checked = bool(group["accuracy_gate"].notna().any())
    timed = group[group["median_ms"].notna()].sort_values("ms_per_image")
    deployable = timed[gate_passes(timed)] if checked else timed
    columns = [
        "deploy",
        "p50 ms/img (rerun 95%)",
        "p99 ms/img",
        "over the next",
        "over the baseline",
        "confidence",
    ]
    cells = dict.fromkeys(columns, "")
    if deployable.empty:
        cells["deploy"] = "none: no timed row passes the accuracy gate"
    else:
        chosen = deployable.iloc[0]
        cells["deploy"] = _name(chosen) + ("" if checked else " (accuracy not measured)")
        cells["p50 ms/img (rerun 95%)"] = _latency(chosen)
        cells["p99 ms/img"] = _number(chosen["p99_ms"] / chosen["batch"])
        if len(deployable) > 1:
            runner_up = deployable.iloc[1]
            cells["over the next"] = margin(chosen, runner_up)
            cells["confidence"] = confidence(chosen, runner_up)
        else:
            cells["confidence"] = "only row that passes the gate" if checked else "only row timed"
        # The baseline of the chosen row's kind of device, as its speedup has it.
        baseline = timed[
            (timed["engine"] + " " + timed["precision"]).eq(chosen["baseline"])
            & timed["device_kind"].eq(chosen["device_kind"])
        ]
        if chosen["baseline"] == _name(chosen):
            cells["over the baseline"] = "is the baseline"
        elif len(baseline):
            cells["over the baseline"] = margin(chosen, baseline.iloc[0])
        else:
            cells["over the baseline"] = "baseline not timed"
    faster = timed if deployable.empty else timed[timed["ms_per_image"] < deployable["ms_per_image"].iloc[0]]
    reference = deployable.iloc[0] if len(deployable) else None
    cells["faster, not deployable"] = "; ".join(
        _name(row)
        + ("" if reference is None else f" ({reference['ms_per_image'] / row['ms_per_image']:.2f}x faster)")
        + (": fails the gate" if isinstance(row["accuracy_gate"], str) else ": no accuracy result")
        for _, row in faster.iterrows()
    )
    return cells


def decisions(table: pd.DataFrame) -> pd.DataFrame:
    """Per target (when several), model, size, batch and scope: the decision as text cells."""
    rows = []
    timed = table[table["median_ms"].notna()]
    # The model scope first: it is the engine's own speed, end to end adds the image pipeline.
    order = timed.assign(scope_rank=timed["scope"].ne("model"))
    keys = order[[*GROUP, "scope_rank"]].drop_duplicates()
    keys = keys.sort_values(["target", "model", "width", "height", "scope_rank", "batch"])[GROUP]
    for target, model, width, height, batch, scope in keys.itertuples(index=False):
        group = table[
            (table["target"] == target)
            & (table["model"] == model)
            & (table["width"] == width)
            & (table["height"] == height)
            & (table["batch"] == batch)
            & (table["scope"] == scope)
        ]
        cells = {
            "target": target,
            "model": model,
            "size": f"{width}x{height}",
            "batch": str(batch),
            "scope": scope,
            **_decide(group),
        }
        rows.append(cells)
    frame = pd.DataFrame(rows)
    if table["target"].nunique() <= 1:
        frame = frame.drop(columns="target", errors="ignore")
    return frame


def drift_notes(table: pd.DataFrame) -> list[Note]:
    """Each target's round drift, with a warning where it is far above a quiet machine's."""
    notes = []
    timed = table[table["median_ms"].notna()]
    for target, rows in timed.groupby("target"):
        device = ", ".join(str(name) for name in rows["device_name"].dropna().unique()) or "unknown device"
        counts = sorted({int(r) for r in rows["rounds"].dropna()})
        rounds = "-".join(map(str, counts))
        drift = rows["round_drift"].dropna()
        where = f"{target} ({device})" + (
            f", {rounds} round{'' if counts == [1] else 's'} a row" if counts else ""
        )
        if drift.empty:
            notes.append(
                Note(
                    f"{where}: no round drift, so no rerun intervals and no confidence in any ranking."
                    " Time each row in two or more rounds (timing.rounds) to know how far a rerun moves.",
                    warning=True,
                )
            )
            continue
        value = float(drift.iloc[0])
        text = f"{where}: round drift {value:.3f}"
        if value > DRIFT_WARNING:
            notes.append(
                Note(
                    f"{text}, far above a quiet machine's (warning above {DRIFT_WARNING}): the machine was"
                    " busy or changed speed during the run, so intervals are wide and close engines cannot"
                    " be ranked. Rerun on a quiet machine.",
                    warning=True,
                )
            )
        else:
            notes.append(Note(f"{text}: quiet (a run is flagged as noisy above {DRIFT_WARNING})."))
    return notes


def accuracy_notes(table: pd.DataFrame) -> list[Note]:
    """Per model and size, what its accuracy figures rest on, with a warning when too few boxes."""
    notes = []
    scored = table[table["accuracy_gate"].notna()]
    for (model, width, height), rows in scored.groupby(["model", "width", "height"]):
        row = rows.iloc[0]
        where = f"{model} {width}x{height}"
        images = f"{_number(row['accuracy_images'])} images"
        boxes = rows["reference_boxes"].dropna()
        if boxes.empty:
            notes.append(
                Note(f"{where}: {images}; reference box count not recorded (an older accuracy result).")
            )
        else:
            coco = f"COCO mAP on {images}; " if row["coco_map50_95"] == row["coco_map50_95"] else ""
            few = boxes.min() < MIN_REFERENCE_BOXES
            notes.append(
                Note(
                    f"{where}: {coco}agreement on {int(boxes.min())} reference boxes over {images}"
                    + (f" (too few: under {MIN_REFERENCE_BOXES})." if few else "."),
                    warning=few,
                )
            )
    return notes


def unavailable_engines(table: pd.DataFrame) -> pd.DataFrame:
    """The rows that could not run, one line per target, engine, precision and reason."""
    rows = table[table["unavailable"].notna()]
    lines = []
    for (target, engine, precision, reason), part in rows.groupby(
        ["target", "engine", "precision", "unavailable"], sort=True
    ):
        models = ", ".join(
            dict.fromkeys(
                f"{m} {w}x{h}" for m, w, h in zip(part["model"], part["width"], part["height"], strict=True)
            )
        )
        lines.append(
            {
                "target": target,
                "engine": f"{engine} {precision}",
                "reason": reason,
                "rows": f"{len(part)} ({models})",
            }
        )
    frame = pd.DataFrame(lines, columns=["target", "engine", "reason", "rows"])
    if table["target"].nunique() <= 1:
        frame = frame.drop(columns="target")
    return frame


def summarize(table: pd.DataFrame) -> Summary:
    return Summary(decisions(table), drift_notes(table), accuracy_notes(table), unavailable_engines(table))


INTRODUCTION = (
    "Per model, size, batch and scope: the fastest engine x precision that passes the accuracy gate,"
    " its p50 ms per image with the rerun interval (where a rerun's p50 lands 19 times in 20), and how"
    ' much faster it is than the next passing row and than the device\'s baseline. "x faster" is'
    " always the ratio of p50 ms per image (the table's speedup), its range from the two rows' rerun"
    " intervals. Confidence: clear when the intervals of the chosen row and the next do not overlap"
    " (the range lies above 1x), else within noise."
)


def summary_markdown(summary: Summary) -> str:
    parts = ["# Which engine to deploy", "", INTRODUCTION, ""]
    for warning in summary.warnings():
        parts += [f"**Warning:** {warning}", ""]
    parts.append(markdown_table(summary.decisions) if len(summary.decisions) else "Nothing was timed.\n")
    parts += ["## Timing drift", "", *(f"- {note.text}" for note in summary.drift), ""]
    if summary.accuracy:
        parts += [
            "## What the accuracy figures rest on",
            "",
            *(f"- {note.text}" for note in summary.accuracy),
        ]
        parts.append("")
    if len(summary.unavailable):
        parts += ["## Unavailable here", "", markdown_table(summary.unavailable)]
    return "\n".join(parts).rstrip("\n") + "\n"


def write_summary(table: pd.DataFrame, output: str | os.PathLike | None = None) -> str:
    """The summary of `table` as markdown, written to `output` when given; returns the text."""
    text = summary_markdown(summarize(table))
    if output:
        with atomic_output(output) as tmp:
            tmp.write_text(text)
    return text
