"""The timing harness: budgets in seconds, never in a fixed iteration count.

Two scopes, measured separately:
- `model`: the engine alone, on input already where it reads it (device memory on a GPU).
- `end-to-end`: encoded image bytes to boxes, stage by stage (STAGES), each stage a Runner hook
  so that a GPU runner can move pre- or post-processing onto the device; and, separately, the
  throughput of a pipeline that prepares (decodes, letterboxes) the next batch and postprocesses
  the previous one while the current one is inferred.

Device work is timed by explicit synchronization: every timed iteration, and every staged
end-to-end stage, ends with `Runner.synchronize()`, so queued kernels count where they were queued.

A bench measures in rounds, each on a freshly loaded engine, and pools their iterations, so the
spread includes whatever varies from one load to the next (thread pools, allocations, kernel
choices); each round's p50 is kept to show how much that is. It does not include what varies
between processes or over minutes, which on a shared VM can be more (README, Timing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
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
    # Warm-up, per round: it stops once both warmup_seconds and warmup_iterations are done.
    # Timed phase, per scope over all rounds: it stops once both seconds and min_iterations are done.
    warmup_seconds: float = 1.0
    seconds: float = 5.0
    min_iterations: int = 3
    warmup_iterations: int = 1
    rounds: int = 1  # engine loads, each warmed up and timed for its share of the budget

    def __post_init__(self) -> None:
        if (
            self.warmup_seconds < 0
            or self.seconds < 0
            or self.min_iterations < 1
            or self.warmup_iterations < 1
            or self.rounds < 1
        ):
            raise ValueError(f"invalid timing budget {self}")

    def per_round(self) -> TimingBudget:
        """One round's budget: seconds and min_iterations split evenly over the rounds."""
        return replace(
            self,
            seconds=self.seconds / self.rounds,
            min_iterations=-(-self.min_iterations // self.rounds),
            rounds=1,
        )


def _iterate(step: Callable[[int], Any], budget: TimingBudget) -> tuple[list[Any], float]:
    """Warm up, then call step(i) until both the minimum count and the minimum duration are reached.

    step(i) runs iteration i (i keeps counting through the warm-up, so inputs keep rotating) and
    returns its own measurement; warm-up measurements are dropped. Returns the measurements and
    the seconds the timed phase took.
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
    return measurements, time.perf_counter() - start


def measure(runner: Runner, batches: list[np.ndarray], budget: TimingBudget) -> np.ndarray:
    """Per-iteration model-scope latencies in ms: inputs already where the engine reads them."""
    prepared = [runner.prepare(batch) for batch in batches]
    runner.synchronize()

    def step(iteration: int) -> float:
        begin = time.perf_counter()
        runner.run(prepared[iteration % len(prepared)])
        runner.synchronize()
        return (time.perf_counter() - begin) * 1000

    return np.array(_iterate(step, budget)[0])


def _stages(runner: Runner, width: int, height: int) -> tuple[tuple[str, Callable[[Any], Any]], ...]:
    """The end-to-end stages of STAGES as (name, one-argument callable)."""
    return (
        ("decode", runner.decode),
        ("preprocess", lambda images: runner.preprocess(images, width, height)),
        ("upload", runner.prepare),
        ("inference", runner.run),
        ("download", runner.download),
        ("postprocess", runner.postprocess),
    )


def _take(encoded: list[bytes], batch: int, iteration: int) -> list[bytes]:
    """Iteration's batch of encoded images, rotating over all of them."""
    if not encoded:
        raise ValueError("no images to time end to end")
    first = iteration * batch
    return [encoded[(first + i) % len(encoded)] for i in range(batch)]


def measure_end_to_end(
    runner: Runner, encoded: list[bytes], width: int, height: int, batch: int, budget: TimingBudget
) -> dict[str, np.ndarray]:
    """Per-iteration end-to-end latencies in ms: "total" and one array per stage of STAGES.

    Each iteration takes the next `batch` encoded images (rotating over all of them) through
    decode, letterbox and normalization, upload, inference, download, and decoding with
    class-aware NMS, synchronizing after every stage. The bytes are in memory already: file reads
    are not timed.
    """
    stages = _stages(runner, width, height)

    def step(iteration: int) -> list[float]:
        value: Any = _take(encoded, batch, iteration)
        times = []
        start = time.perf_counter()
        for _, stage in stages:
            begin = time.perf_counter()
            value = stage(value)
            runner.synchronize()
            times.append((time.perf_counter() - begin) * 1000)
        return [(time.perf_counter() - start) * 1000, *times]

    columns = np.array(_iterate(step, budget)[0]).T
    return {
        "total": columns[0],
        **{name: column for (name, _), column in zip(stages, columns[1:], strict=True)},
    }


def measure_pipelined(
    runner: Runner, encoded: list[bytes], width: int, height: int, batch: int, budget: TimingBudget
) -> tuple[int, float]:
    """End-to-end throughput of a three-stage pipeline: (images completed, seconds taken).

    One worker thread decodes and letterboxes the next batch, the main thread takes the current
    one through upload, inference and download, and another worker postprocesses (NMS) the
    previous one; so, as in a serving loop, a batch's preparation and its postprocessing overlap
    the inference of its neighbours. Each stage runs at most one batch ahead of the next, so the
    figure is the slowest stage's pace (the stages share the host's cores and the device), not a
    backlog drained later. Timing stops once the last batch's boxes are out. The engine is warm
    (the staged measurement ran on it), so the warm-up is only warmup_iterations batches: enough
    to start the timed phase with the pipeline full.
    """
    stages = _stages(runner, width, height)
    preparation, processing, finishing = stages[:2], stages[2:5], stages[5:]

    def through(stages: tuple[tuple[str, Callable[[Any], Any]], ...], value: Any) -> Any:
        for _, stage in stages:
            value = stage(value)
        return value

    with ThreadPoolExecutor(max_workers=1) as preparer, ThreadPoolExecutor(max_workers=1) as finisher:
        prepared = preparer.submit(through, preparation, _take(encoded, batch, 0))
        finished: Future[Any] | None = None

        def step(iteration: int) -> None:
            nonlocal prepared, finished
            value = prepared.result()
            following = _take(encoded, batch, iteration + 1)
            prepared = preparer.submit(through, preparation, following)
            value = through(processing, value)
            if finished is not None:
                finished.result()
            finished = finisher.submit(through, finishing, value)

        completed, seconds = _iterate(step, replace(budget, warmup_seconds=0))
        drain = time.perf_counter()
        if finished is not None:
            finished.result()
        runner.synchronize()
        seconds += time.perf_counter() - drain
    return len(completed) * batch, seconds


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


def _pooled(rounds: list[dict[str, np.ndarray]], batch: int) -> dict[str, Any]:
    """Summary statistics over every round's iterations, and each round's own p50."""
    return {
        **summarize(np.concatenate([columns["latency_ms"] for columns in rounds]), batch),
        "round_medians_ms": [float(np.median(columns["latency_ms"])) for columns in rounds],
    }


def _frame(scope: str, rounds: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    import pandas as pd

    return pd.concat(
        [
            pd.DataFrame(
                {
                    "scope": scope,
                    "round": index,
                    "iteration": np.arange(columns["latency_ms"].size),
                    **columns,
                }
            )
            for index, columns in enumerate(rounds)
        ],
        ignore_index=True,
    )


def bench_scopes(
    load: Callable[[], Runner],
    batches: list[np.ndarray],
    encoded: list[bytes],
    width: int,
    height: int,
    batch: int,
    budget: TimingBudget,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Both scopes, in budget.rounds rounds; a summary record per scope and every iteration's
    latencies as one long frame (columns scope, round, iteration, latency_ms, stage_<name>_ms).

    Each round calls `load` for a fresh engine and times, for its share of the budget, the model
    scope, then the end-to-end scope: half of that share staged, half pipelined. The records'
    statistics are over every round's iterations, with each round's p50 in round_medians_ms. The
    end-to-end record has each stage's median as stage_<name>_ms, the pipelined throughput as
    images_per_second and the staged one (batch x 1000 / p50 ms) as sequential_images_per_second.
    """
    import pandas as pd

    one_round = budget.per_round()
    half_round = replace(one_round, seconds=one_round.seconds / 2)
    model: list[dict[str, np.ndarray]] = []
    staged: list[dict[str, np.ndarray]] = []
    pipelined_images, pipelined_seconds = 0, 0.0
    for _ in range(budget.rounds):
        runner = load()
        model.append({"latency_ms": measure(runner, batches, one_round)})
        times = measure_end_to_end(runner, encoded, width, height, batch, half_round)
        staged.append({"latency_ms": times["total"], **{f"stage_{name}_ms": times[name] for name in STAGES}})
        images, seconds = measure_pipelined(runner, encoded, width, height, batch, half_round)
        pipelined_images += images
        pipelined_seconds += seconds
        # Released before the next load: two copies of a large engine may not fit in device memory.
        del runner
    end_to_end = _pooled(staged, batch)
    stage_medians = {
        f"stage_{name}_ms": float(np.median(np.concatenate([c[f"stage_{name}_ms"] for c in staged])))
        for name in STAGES
    }
    records = [
        {"scope": "model", **_pooled(model, batch)},
        {
            "scope": "end-to-end",
            **end_to_end,
            "images_per_second": pipelined_images / pipelined_seconds,
            "sequential_images_per_second": end_to_end["images_per_second"],
            **stage_medians,
        },
    ]
    frame = pd.concat([_frame("model", model), _frame("end-to-end", staged)], ignore_index=True)
    return records, frame
