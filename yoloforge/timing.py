"""The timing harness: budgets in seconds, never in a fixed iteration count.

Two scopes, measured separately:
- `model`: the engine alone, on input already where it reads it (device memory on a GPU).
- `end-to-end`: encoded image bytes to boxes, stage by stage (STAGES), each stage a Runner hook
  so that a GPU runner can move pre- or post-processing onto the device; and, separately, the
  throughput of a pipeline that prepares (decodes, letterboxes) the next batch and postprocesses
  the previous one while the current one is inferred.

Device work is timed by explicit synchronization: every timed iteration, and every staged
end-to-end stage, ends with `Runner.synchronize()`, so queued kernels count where they were queued.

A bench is timed in rounds, each its own process with its own engine load (bench_round), and
their iterations are pooled (pool_rounds). The workflow runs a bench's rounds as separate jobs at
different times of the run, so the pooled spread holds what varies between loads, between
processes and over the minutes of a run, not only within one process (README, Timing).
"""

from __future__ import annotations

import time
from collections import deque
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
# Batches a pipelined stage may run ahead of the next: two, so that a stage that is slow on one
# batch and quick on the next does not hold the others back (with one, the model's next batch
# waited for the previous batch's NMS). It does not help a pipeline whose stages are slow on
# every batch.
PIPELINE_DEPTH = 2
# Batches whose images the pipeline decodes in one call. On a GPU a call of nvJPEG's batched
# decoder waits for the work already queued on the device, while the model stands idle. Fewer,
# larger calls wait less often.
DECODE_GROUP = 4


@dataclass(frozen=True)
class TimingBudget:
    # Warm-up, per round: it stops once both warmup_seconds and warmup_iterations are done.
    # Timed phase, per scope over all rounds: it stops once both seconds and min_iterations are done.
    warmup_seconds: float = 1.0
    seconds: float = 5.0
    min_iterations: int = 3
    warmup_iterations: int = 1
    rounds: int = 1  # separate processes, each warmed up and timed for its share of the budget

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
    """End-to-end throughput of a four-stage pipeline: (images completed, seconds taken).

    One worker thread decodes the coming batches' images (DECODE_GROUP batches a call), another
    letterboxes them, the main thread takes the current batch through upload, inference and
    download, and a last worker postprocesses (NMS) the previous ones; so, as in a serving loop,
    a batch's preparation and its postprocessing overlap the inference of its neighbours. Each
    stage runs at most PIPELINE_DEPTH batches (decoding, groups) ahead of the next, so the figure
    is the slowest stage's pace (the stages share the host's cores, its interpreter lock and the
    device), not a backlog drained later. Timing stops once the last batch's boxes are out. The
    engine is warm (the staged measurement ran on it), so the warm-up is only warmup_iterations
    batches: on a CPU, where one batch of yolov3 takes a second, filling the pipeline first would
    cost every round seconds; on a GPU the timed phase runs hundreds of batches, and its first
    few fill it.
    """
    stages = _stages(runner, width, height)
    (_, decode), (_, preprocess) = stages[:2]
    processing, finishing = stages[2:5], stages[5:]

    def through(stages: tuple[tuple[str, Callable[[Any], Any]], ...], value: Any) -> Any:
        for _, stage in stages:
            value = stage(value)
        return value

    def decode_group(group: int) -> list[Any]:
        iterations = range(group * DECODE_GROUP, (group + 1) * DECODE_GROUP)
        return decode([data for iteration in iterations for data in _take(encoded, batch, iteration)])

    def prepare(iteration: int, images: Future[list[Any]]) -> Any:
        first = iteration % DECODE_GROUP * batch
        return preprocess(images.result()[first : first + batch])

    with (
        ThreadPoolExecutor(max_workers=1) as decoder,
        ThreadPoolExecutor(max_workers=1) as preparer,
        ThreadPoolExecutor(max_workers=1) as finisher,
    ):
        decoding: dict[int, Future[list[Any]]] = {}

        def submit_preparation(iteration: int) -> Future[Any]:
            group = iteration // DECODE_GROUP
            for done in [ahead for ahead in decoding if ahead < group]:
                del decoding[done]
            for ahead in range(group, group + PIPELINE_DEPTH):
                if ahead not in decoding:
                    decoding[ahead] = decoder.submit(decode_group, ahead)
            return preparer.submit(prepare, iteration, decoding[group])

        prepared = deque(submit_preparation(iteration) for iteration in range(PIPELINE_DEPTH))
        finished: deque[Future[Any]] = deque()

        def step(iteration: int) -> None:
            value = prepared.popleft().result()
            prepared.append(submit_preparation(iteration + PIPELINE_DEPTH))
            value = through(processing, value)
            if len(finished) == PIPELINE_DEPTH:
                finished.popleft().result()
            finished.append(finisher.submit(through, finishing, value))

        completed, seconds = _iterate(step, replace(budget, warmup_seconds=0))
        drain = time.perf_counter()
        for future in finished:
            future.result()
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


def bench_round(
    runner: Runner,
    batches: list[np.ndarray],
    encoded: list[bytes],
    width: int,
    height: int,
    batch: int,
    budget: TimingBudget,
    round_index: int = 0,
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """One round on a loaded engine: a summary record per scope, and every iteration's latencies
    as one long frame (columns scope, round, iteration, latency_ms, stage_<name>_ms).

    The model scope is timed for budget.seconds, then the end-to-end scope for as long: half of
    it staged, half pipelined. The end-to-end record has each stage's median as stage_<name>_ms,
    the pipelined throughput as images_per_second (with the images and seconds it was counted
    over, for pooling) and the staged one (batch x 1000 / p50 ms) as sequential_images_per_second.
    """
    import pandas as pd

    half = replace(budget, seconds=budget.seconds / 2)
    model = measure(runner, batches, budget)
    times = measure_end_to_end(runner, encoded, width, height, batch, half)
    images, seconds = measure_pipelined(runner, encoded, width, height, batch, half)
    frame = pd.concat(
        [
            pd.DataFrame({"scope": "model", "latency_ms": model}),
            pd.DataFrame(
                {
                    "scope": "end-to-end",
                    "latency_ms": times["total"],
                    **{f"stage_{name}_ms": times[name] for name in STAGES},
                }
            ),
        ],
        ignore_index=True,
    )
    frame.insert(1, "round", round_index)
    frame.insert(2, "iteration", frame.groupby("scope").cumcount())
    pipelined = {"scope": "end-to-end", "pipelined_images": images, "pipelined_seconds": seconds}
    return pool_rounds([([pipelined], frame)], batch)


def pool_rounds(
    rounds: list[tuple[list[dict[str, Any]], pd.DataFrame]], batch: int
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Rounds as bench_round returns them -> summary records per scope over every round's
    iterations, with each round's p50 in round_medians_ms, and their latencies in one frame.

    The pooled end-to-end throughput is the ratio of the rounds' summed pipelined_images and
    pipelined_seconds.
    """
    import pandas as pd

    latencies = pd.concat([frame for _, frame in rounds], ignore_index=True)
    pipelined = [record for records, _ in rounds for record in records if record["scope"] == "end-to-end"]
    records = []
    for scope in SCOPES:
        rows = latencies[latencies["scope"] == scope]
        record = {
            "scope": scope,
            **summarize(rows["latency_ms"].to_numpy(), batch),
            "round_medians_ms": [float(m) for m in rows.groupby("round")["latency_ms"].median()],
        }
        if scope == "end-to-end":
            images = sum(counts["pipelined_images"] for counts in pipelined)
            seconds = sum(counts["pipelined_seconds"] for counts in pipelined)
            record |= {
                "images_per_second": images / seconds,
                "sequential_images_per_second": record["images_per_second"],
                "pipelined_images": images,
                "pipelined_seconds": seconds,
                **{f"stage_{name}_ms": float(rows[f"stage_{name}_ms"].median()) for name in STAGES},
            }
        records.append(record)
    return records, latencies
