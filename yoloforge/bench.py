"""A bench's records: one timing round of an engine, the pooling of a bench's rounds, and the row
of an engine that cannot run on a target. Each is a result JSON (the table reads one row per
scope from it) with, for timed rows, every iteration's latencies beside it as Parquet.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from yoloforge.errors import YoloforgeError
from yoloforge.timing import SCOPES, TimingBudget, bench_round, pool_rounds

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# What every round of one bench shares; pooling refuses rounds that differ in any of these.
SAME_IN_EVERY_ROUND = (
    "model",
    "width",
    "height",
    "engine",
    "precision",
    "batch",
    "target",
    "device",
    "rounds",
)
# Columns that name a row, copied onto every latency of it.
ROW_KEYS = ("model", "width", "height", "engine", "precision", "batch")


@dataclass(frozen=True)
class Round:
    """Which round of which bench: the engine file, the images it is timed on, and the budget of
    the whole bench (split over its rounds)."""

    engine: str
    engine_file: Path
    images: Path
    model: str
    batch: int = 1
    rotate: int = 4  # distinct input batches
    budget: TimingBudget = TimingBudget()
    index: int = 0
    target: str = "local"
    onnx: Path | None = None  # refuse the engine unless it was built from this ONNX file
    fingerprint: str | None = None  # refuse the engine unless it was built for this device id


def latencies_path(result: str | os.PathLike) -> Path:
    """The Parquet file of every iteration's latencies, beside its result JSON."""
    return Path(os.fspath(result).removesuffix(".json") + ".parquet")


def time_round(spec: Round) -> tuple[dict[str, Any], pd.DataFrame]:
    """Load the engine and time one round of its bench: the result record (its scopes' summaries,
    the row's keys and provenance) and every iteration's latencies, each tagged with the row."""
    from yoloforge.backends import get_backend, read_sidecar
    from yoloforge.datasets import image_set_source
    from yoloforge.device import cpu_threads, fingerprint_id
    from yoloforge.device_lock import DEVICE_LOCK
    from yoloforge.images import image_paths, letterboxes, preprocessed_batches

    if not 0 <= spec.index < spec.budget.rounds:
        raise YoloforgeError(
            f"round {spec.index} of {spec.budget.rounds}: rounds count from 0", spec.engine_file
        )
    backend = get_backend(spec.engine)
    sidecar = read_sidecar(spec.engine_file)
    built_for = fingerprint_id(sidecar.get("device", {}))
    if spec.fingerprint and built_for != spec.fingerprint:
        raise YoloforgeError(
            f"engine was built for device {built_for}, but lies in the folder of {spec.fingerprint};"
            " engines are never moved between device folders",
            spec.engine_file,
        )
    width, height = int(sidecar["model"]["width"]), int(sidecar["model"]["height"])
    if "unavailable" in sidecar:
        row = unavailable_row(
            sidecar["unavailable"],
            model=spec.model,
            width=width,
            height=height,
            engine=spec.engine,
            precision=sidecar["precision"],
            batch=spec.batch,
            target=spec.target,
        )
        return {**row, "rounds": spec.budget.rounds, "round": spec.index}, no_latencies()
    verified = backend.verify(spec.engine_file, spec.onnx)
    clock = time.perf_counter()
    paths = image_paths(spec.images)[: spec.batch * spec.rotate]
    letterbox = letterboxes(sidecar["model"], spec.engine_file)
    batches = preprocessed_batches(paths, width, height, spec.batch, spec.rotate, letterbox)
    encoded = [path.read_bytes() for path in paths]  # read before timing: file I/O is not timed
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    # Where a round's time goes besides the timing budget.
    phases = {"inputs": time.perf_counter() - clock}
    # The device is taken only once the inputs are ready: a bad engine or image set fails without
    # waiting for it, and preparing inputs never keeps another job's timing waiting.
    with DEVICE_LOCK.held():
        clock = time.perf_counter()
        runner = backend.load(spec.engine_file, verified=verified)
        phases["load"] = time.perf_counter() - clock
        clock = time.perf_counter()
        scopes, latencies = bench_round(
            runner, batches, encoded, width, height, spec.batch, spec.budget.per_round(), spec.index
        )
        phases["timing"] = time.perf_counter() - clock
    log.info("round %d: %s", spec.index, ", ".join(f"{name} {spent:.1f}s" for name, spent in phases.items()))
    result = {
        "model": spec.model,
        "width": width,
        "height": height,
        "engine": spec.engine,
        "precision": sidecar["precision"],
        "batch": spec.batch,
        "target": spec.target,
        "threads": cpu_threads(),
        "rounds": spec.budget.rounds,
        "round_started": [started],
        "round_seconds": [{name: round(seconds, 3) for name, seconds in phases.items()}],
        "scopes": scopes,
        "flops_per_image": sidecar.get("flops_per_image"),
        "build_seconds": sidecar["build_seconds"],
        # Part of build_seconds: builds that ran side by side waited for each other's timing.
        "build_wait_seconds": sidecar.get("device_wait_seconds"),
        "engine_bytes": sidecar["engine_bytes"],
        "weights_source": sidecar["model"].get("weights_source", "unknown"),
        "weights_verified": sidecar["model"].get("weights_verified", "unknown"),
        "images_source": image_set_source(spec.images),
        "image_formats": sorted({path.suffix.lower().lstrip(".") for path in paths}),
        "device": sidecar["device"],
        "libraries": sidecar["libraries"],
    }
    for key in ROW_KEYS:
        latencies[key] = result[key]
    return result, latencies


def no_latencies() -> pd.DataFrame:
    """The latencies of a row that cannot run: none, in the columns timed rows have."""
    import pandas as pd

    return pd.DataFrame(columns=["scope", "round", "iteration", "latency_ms", *ROW_KEYS])


def pool(round_files: list[str | os.PathLike]) -> tuple[dict[str, Any], pd.DataFrame]:
    """The result JSON of each round of one bench (latencies beside each) -> the bench's result:
    its scopes summarized over every round's iterations, and all their latencies."""
    import pandas as pd

    from yoloforge.table import read_json

    if not round_files:
        raise YoloforgeError("no rounds to pool")
    rounds = [read_json(path, "timing round") for path in round_files]
    first = rounds[0]
    for path, result in zip(round_files, rounds, strict=True):
        differing = [key for key in SAME_IN_EVERY_ROUND if result.get(key) != first.get(key)]
        if differing:
            raise YoloforgeError(f"not a round of {round_files[0]}: {', '.join(differing)} differ", path)
    if not isinstance(first.get("rounds"), int):
        raise YoloforgeError("not a timing round of `yoloforge bench` (no rounds count)", round_files[0])
    if len(rounds) != first["rounds"]:
        raise YoloforgeError(f"{len(rounds)} rounds given, the bench has {first['rounds']}", round_files[0])
    if "unavailable" in first:
        indices = sorted(result.get("round", -1) for result in rounds)
        if indices != list(range(first["rounds"])):
            raise YoloforgeError(
                f"rounds {indices} given, not each of 0..{first['rounds'] - 1} once", round_files[0]
            )
        return {key: value for key, value in first.items() if key != "round"}, no_latencies()
    frames = []
    for path in round_files:
        try:
            frames.append(pd.read_parquet(latencies_path(path)))
        except (OSError, ValueError) as error:
            raise YoloforgeError(f"unreadable round latencies: {error}", latencies_path(path)) from None
    indices = sorted(int(index) for frame in frames for index in frame["round"].unique())
    if indices != list(range(first["rounds"])):
        raise YoloforgeError(
            f"rounds {indices} given, not each of 0..{first['rounds'] - 1} once", round_files[0]
        )
    scopes, latencies = pool_rounds(
        [(result["scopes"], frame) for result, frame in zip(rounds, frames, strict=True)], first["batch"]
    )
    result = {
        **first,
        "round_started": [started for result in rounds for started in result["round_started"]],
        "round_seconds": [seconds for result in rounds for seconds in result.get("round_seconds", [])],
        "scopes": scopes,
    }
    return result, latencies


def write_result(output: str | os.PathLike, result: dict[str, Any], latencies: pd.DataFrame) -> None:
    """The latencies beside the result JSON, each file whole or not at all."""
    from yoloforge.files import atomic_output, write_json

    with atomic_output(latencies_path(output)) as partial:
        latencies.to_parquet(partial, index=False)
    write_json(output, result)


def probe_reason(device: str | os.PathLike, engine: str, precision: str) -> str:
    """Why the device probe (the JSON of `yoloforge device`) found that `engine` cannot run
    `precision` where it was taken."""
    from yoloforge.table import read_json

    try:
        reason = read_json(device, "device probe")["engines"][engine]["precisions"][precision]
    except (KeyError, TypeError):
        raise YoloforgeError(f"the device probe has no {engine} {precision}", device) from None
    return reason or "unknown"


def unavailable_row(
    reason: str,
    *,
    model: str,
    width: int,
    height: int,
    engine: str,
    precision: str,
    batch: int,
    target: str = "local",
) -> dict[str, Any]:
    """The result of a row that cannot run: every scope, no timings, and the reason."""
    return {
        "model": model,
        "width": width,
        "height": height,
        "engine": engine,
        "precision": precision,
        "batch": batch,
        "scopes": [{"scope": scope} for scope in SCOPES],
        "target": target,
        "unavailable": reason,
    }


def log_timing(result: dict[str, Any], rounds: str) -> None:
    """One log line per scope: the p50, its spread and the rounds' p50s."""
    if "unavailable" in result:
        log.warning("%s %s: unavailable: %s", result["model"], result["engine"], result["unavailable"])
        return
    for scope in result["scopes"]:
        log.info(
            "%s %s %s b%d %s: median %.2f ms (p10 %.2f, p90 %.2f) over %d iterations, %s"
            " (round medians %s), %.1f images/s",
            result["model"],
            result["engine"],
            result["precision"],
            result["batch"],
            scope["scope"],
            scope["median_ms"],
            scope["p10_ms"],
            scope["p90_ms"],
            scope["iterations"],
            rounds,
            " ".join(f"{median:.2f}" for median in scope["round_medians_ms"]),
            scope["images_per_second"],
        )
