"""The device's measured compute ceilings: one large 3x3 convolution per precision.

YOLO's FLOPs are almost all 3x3 convolutions, so a large one run by cuDNN (or oneDNN on a CPU)
is the throughput a well-tuned engine can approach here, a fairer roof than the datasheet's peak.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from yoloforge.device import cpu_fingerprint, cpu_threads, cuda_fingerprint

log = logging.getLogger(__name__)

# (batch, channels in = out, height = width): on a GPU big enough to keep every SM busy (about
# 0.8 TFLOP a call); on a CPU small enough to take tens of milliseconds on two cores.
CUDA_SHAPE = (64, 512, 52)
CPU_SHAPE = (1, 256, 52)
# The convolution runs for WARMUP_SECONDS, then is timed for SECONDS in windows of WINDOW_CALLS
# back-to-back calls; the ceiling is the median window. Sustained, as the engines are timed: a few
# calls after a short warm-up varied by a tenth from one process to the next, most likely with
# clocks not yet settled under load.
WARMUP_SECONDS = {"cuda": 1.0, "cpu": 0.2}
SECONDS = {"cuda": 2.0, "cpu": 0.6}
WINDOW_CALLS = {"cuda": 10, "cpu": 1}
# The timed seconds are split into REPEATS consecutive stretches, each giving its median window. A
# machine busy with something else for part of the probe makes them differ; when the slowest
# and fastest differ by more than AGREEMENT of the median, the figure is kept but marked as not
# agreeing, and the table computes no fraction of it.
REPEATS = 3
AGREEMENT = 0.10


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def ceiling_device() -> dict[str, object] | None:
    """The fingerprint of the device measure_ceilings() times: the first GPU, else the CPU."""
    torch = _torch()
    if torch is None:
        return None
    if not torch.cuda.is_available():
        return cpu_fingerprint()
    # Without nvidia-smi the kind must still say cuda: the table matches ceilings to rows by kind.
    return cuda_fingerprint() or {"kind": "cuda", "name": torch.cuda.get_device_name()}


def measure_ceilings() -> dict[str, dict[str, Any]]:
    """Precision -> {"tflops", "shape", "ms"} of the convolution; {} without PyTorch."""
    torch = _torch()
    if torch is None:
        return {}
    if torch.cuda.is_available():
        return _cuda_ceilings(torch)
    threads = torch.get_num_threads()
    torch.set_num_threads(cpu_threads())  # as the CPU engines run
    try:
        return {"fp32": _time_convolution(torch, "cpu", torch.float32, CPU_SHAPE)}
    finally:
        torch.set_num_threads(threads)


def _cuda_ceilings(torch) -> dict[str, dict[str, Any]]:
    precisions = {"fp16": torch.float16, "fp32": torch.float32}
    if torch.cuda.is_bf16_supported(including_emulation=False):
        precisions["bf16"] = torch.bfloat16
    cudnn = torch.backends.cudnn
    saved = (cudnn.benchmark, cudnn.allow_tf32)
    # The legacy switch, as the torch engines set it (PyTorch refuses to mix the two APIs).
    # fp32 means IEEE fp32, as in the fp32 engines: TF32 tensor cores would be a different roof.
    cudnn.benchmark = True
    cudnn.allow_tf32 = False
    try:
        return {
            name: _time_convolution(torch, "cuda", dtype, CUDA_SHAPE) for name, dtype in precisions.items()
        }
    finally:
        cudnn.benchmark, cudnn.allow_tf32 = saved
        torch.cuda.empty_cache()


def _time_convolution(torch, device: str, dtype, shape: tuple[int, int, int]) -> dict[str, Any]:
    batch, channels, size = shape
    images = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    images = images.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype)
    weight = weight.contiguous(memory_format=torch.channels_last)

    def convolve():
        return torch.nn.functional.conv2d(images, weight, stride=1, padding=1)

    calls = WINDOW_CALLS[device]

    def window() -> float:
        """Milliseconds per call over `calls` back-to-back calls."""
        if device != "cuda":
            start = time.perf_counter()
            for _ in range(calls):
                convolve()
            return (time.perf_counter() - start) * 1e3 / calls
        # Events time the kernels on the GPU, not the launches.
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            convolve()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    with torch.inference_mode():
        # The first calls also pick the algorithm (cudnn.benchmark).
        began = time.perf_counter()
        while time.perf_counter() - began < WARMUP_SECONDS[device]:
            window()
        stretches = timed_stretches(window, SECONDS[device], REPEATS)
    flops = 2 * batch * channels * channels * 9 * size * size
    ceiling = {
        **agreement(stretches),
        "shape": f"conv 3x3 stride 1 pad 1, N={batch} C=K={channels} {size}x{size}, channels-last",
        "timing": f"median of {sum(map(len, stretches))} windows of {calls} calls in {REPEATS} stretches"
        f" after {WARMUP_SECONDS[device]} s warm-up",
    }
    ceiling["tflops"] = flops / (ceiling["ms"] / 1e3) / 1e12
    log.info("%s %s ceiling: %.1f TFLOP/s (%.3f ms)", device, dtype, ceiling["tflops"], ceiling["ms"])
    if not ceiling["agree"]:
        log.warning(
            "%s %s ceiling not trusted: its %d stretches differ by %.0f%% (more than %.0f%%);"
            " was the machine busy? The table gives no fraction of it",
            device, dtype, REPEATS, 100 * ceiling["spread"], 100 * AGREEMENT,
        )  # fmt: skip
    return ceiling


def timed_stretches(window: Callable[[], float], seconds: float, repeats: int) -> list[list[float]]:
    """`repeats` consecutive stretches of seconds / repeats, each a list of window() results."""
    stretches = []
    for _ in range(repeats):
        times: list[float] = []
        began = time.perf_counter()
        while not times or time.perf_counter() - began < seconds / repeats:
            times.append(window())
        stretches.append(times)
    return stretches


def agreement(stretches: list[list[float]]) -> dict[str, Any]:
    """The median window over all stretches ("ms"), and whether the stretches' medians agree:
    "spread" is (slowest - fastest) / that median, "agree" whether it is within AGREEMENT."""
    ms = statistics.median(time for stretch in stretches for time in stretch)
    medians = [statistics.median(stretch) for stretch in stretches]
    spread = (max(medians) - min(medians)) / ms
    return {"ms": ms, "stretch_ms": medians, "spread": spread, "agree": spread <= AGREEMENT}
