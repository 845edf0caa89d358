"""The timing harness: budgets in seconds, never in a fixed iteration count.

Two scopes, measured separately:
- `model`: the engine alone, on input already where it reads it (device memory on a GPU).
- `end-to-end`: encoded image bytes to boxes, stage by stage (STAGES), each stage a Runner hook
  so that a GPU runner can move pre- or post-processing onto the device.

Device work is timed by explicit synchronization: every timed iteration, and every end-to-end
stage, ends with `Runner.synchronize()`, so queued kernels count where they were queued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from yoloforge.backends.base import Runner

if TYPE_CHECKING:
    import pandas as pd

SCOPES = ("model", "end-to-end")
# End-to-end stages in order, each a Runner method (upload is Runner.prepare, inference Runner.run).
STAGES = ("decode", "preprocess", "upload", "inference", "download", "postprocess")


@dataclass(frozen=True)
class TimingBudget:
    warmup_seconds: float = 1.0
    seconds: float = 5.0  # timed phase stops once this has passed and min_iterations ran
    min_iterations: int = 3
    warmup_iterations: int = 1  # warm-up stops once both warmup_seconds and this many calls are done

    def __post_init__(self) -> None:
        if (
            self.warmup_seconds < 0
            or self.seconds < 0
            or self.min_iterations < 1
            or self.warmup_iterations < 1
        ):
            raise ValueError(f"invalid timing budget {self}")


def _iterate(step: Callable[[int], Any], budget: TimingBudget) -> list[Any]:
    """Warm up, then call step(i) until both the minimum count and the minimum duration are reached.

    step(i) runs iteration i (i keeps counting through the warm-up, so inputs keep rotating) and
    returns its own measurement; warm-up measurements are dropped.
    """
    iteration = 0
    start = time.perf_counter()
    while iteration < budget.warmup_iterations or time.perf_counter() - start < budget.warmup_seconds:
        step(iteration)
        iteration += 1
    measurements = []
    start = time.perf_counter()
    while len(measurements) < budget.min_iterations or time.perf_counter() - start < budget.seconds:
        measurements.append(step(iteration))
        iteration += 1
    return measurements


def measure(runner: Runner, batches: list[np.ndarray], budget: TimingBudget) -> np.ndarray:
    """Per-iteration model-scope latencies in ms: inputs already where the engine reads them."""
    prepared = [runner.prepare(batch) for batch in batches]
    runner.synchronize()

    def step(iteration: int) -> float:
        begin = time.perf_counter()
        runner.run(prepared[iteration % len(prepared)])
        runner.synchronize()
        return (time.perf_counter() - begin) * 1000

    return np.array(_iterate(step, budget))


def measure_end_to_end(
    runner: Runner, encoded: list[bytes], width: int, height: int, batch: int, budget: TimingBudget
) -> dict[str, np.ndarray]:
    """Per-iteration end-to-end latencies in ms: "total" and one array per stage of STAGES.

    Each iteration takes the next `batch` encoded images (rotating over all of them) through
    decode, letterbox and normalization, upload, inference, download, and decoding with
    class-aware NMS. The bytes are in memory already: file reads are not timed.
    """
    if not encoded:
        raise ValueError("no images to time end to end")
    stages: tuple[tuple[str, Callable[[Any], Any]], ...] = (
        ("decode", runner.decode),
        ("preprocess", lambda images: runner.preprocess(images, width, height)),
        ("upload", runner.prepare),
        ("inference", runner.run),
        ("download", runner.download),
        ("postprocess", runner.postprocess),
    )

    def step(iteration: int) -> list[float]:
        first = iteration * batch
        value: Any = [encoded[(first + i) % len(encoded)] for i in range(batch)]
        times = []
        start = time.perf_counter()
        for _, stage in stages:
            begin = time.perf_counter()
            value = stage(value)
            runner.synchronize()
            times.append((time.perf_counter() - begin) * 1000)
        return [(time.perf_counter() - start) * 1000, *times]

    columns = np.array(_iterate(step, budget)).T
    return {
        "total": columns[0],
        **{name: column for (name, _), column in zip(stages, columns[1:], strict=True)},
    }


def summarize(latencies_ms: np.ndarray, batch: int) -> dict[str, float]:
    """Summary statistics of per-iteration latencies; median_ms is the p50."""
    p10, median, p90, p99 = np.percentile(latencies_ms, [10, 50, 90, 99])
    return {
        "iterations": int(latencies_ms.size),
        "mean_ms": float(latencies_ms.mean()),
        "median_ms": float(median),
        "std_ms": float(latencies_ms.std(ddof=1)) if latencies_ms.size > 1 else 0.0,
        "min_ms": float(latencies_ms.min()),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "images_per_second": batch * 1000 / float(median),
    }


def bench_scopes(
    runner: Runner,
    batches: list[np.ndarray],
    encoded: list[bytes],
    width: int,
    height: int,
    batch: int,
    budget: TimingBudget,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Both scopes, one after the other: a summary record per scope (the end-to-end one with each
    stage's median as stage_<name>_ms), and every iteration's latencies as one long frame."""
    import pandas as pd

    model = measure(runner, batches, budget)
    end_to_end = measure_end_to_end(runner, encoded, width, height, batch, budget)
    stage_medians = {f"stage_{name}_ms": float(np.median(end_to_end[name])) for name in STAGES}
    records = [
        {"scope": "model", **summarize(model, batch)},
        {"scope": "end-to-end", **summarize(end_to_end["total"], batch), **stage_medians},
    ]
    frames = [
        pd.DataFrame({"scope": "model", "iteration": np.arange(model.size), "latency_ms": model}),
        pd.DataFrame(
            {
                "scope": "end-to-end",
                "iteration": np.arange(end_to_end["total"].size),
                "latency_ms": end_to_end["total"],
                **{f"stage_{name}_ms": end_to_end[name] for name in STAGES},
            }
        ),
    ]
    return records, pd.concat(frames, ignore_index=True)
