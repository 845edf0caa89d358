"""The timing harness: budgets in seconds, never in a fixed iteration count."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from yoloforge.backends.base import Runner


@dataclass(frozen=True)
class TimingBudget:
    warmup_seconds: float = 1.0
    seconds: float = 5.0  # timed phase stops once this has passed and min_iterations ran
    min_iterations: int = 3

    def __post_init__(self) -> None:
        if self.warmup_seconds < 0 or self.seconds < 0 or self.min_iterations < 1:
            raise ValueError(f"invalid timing budget {self}")


def measure(runner: Runner, batches: list[np.ndarray], budget: TimingBudget) -> np.ndarray:
    """Per-iteration model-scope latencies in ms: inputs already where the engine reads them.

    One warm-up call at least, then the timed phase; every iteration waits for the device.
    """
    prepared = [runner.prepare(batch) for batch in batches]
    runner.synchronize()
    iteration = 0
    start = time.perf_counter()
    while True:
        runner.run(prepared[iteration % len(prepared)])
        iteration += 1
        if time.perf_counter() - start >= budget.warmup_seconds:
            break
    runner.synchronize()
    latencies = []
    phase_start = time.perf_counter()
    while len(latencies) < budget.min_iterations or time.perf_counter() - phase_start < budget.seconds:
        batch = prepared[iteration % len(prepared)]
        iteration += 1
        begin = time.perf_counter()
        runner.run(batch)
        runner.synchronize()
        latencies.append((time.perf_counter() - begin) * 1000)
    return np.array(latencies)


def summarize(latencies_ms: np.ndarray, batch: int) -> dict[str, float]:
    median = float(np.median(latencies_ms))
    return {
        "iterations": int(latencies_ms.size),
        "mean_ms": float(latencies_ms.mean()),
        "median_ms": median,
        "std_ms": float(latencies_ms.std(ddof=1)) if latencies_ms.size > 1 else 0.0,
        "min_ms": float(latencies_ms.min()),
        "p90_ms": float(np.percentile(latencies_ms, 90)),
        "images_per_second": batch * 1000 / median,
    }
