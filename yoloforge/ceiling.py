"""The device's measured compute ceilings: one large 3x3 convolution per precision.

YOLO's FLOPs are almost all 3x3 convolutions, so a large one run by cuDNN (or oneDNN on a CPU)
is the throughput a well-tuned engine can approach here, a fairer roof than the datasheet's peak.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from yoloforge.device import cpu_fingerprint, cpu_threads, cuda_fingerprint

log = logging.getLogger(__name__)

# (batch, channels in = out, height = width): big enough on an H100 to keep every SM busy (about
# 0.8 TFLOP a call); on a CPU small enough to take tens of milliseconds on two cores.
CUDA_SHAPE = (64, 512, 52)
CPU_SHAPE = (1, 256, 52)
WARMUP = 3
ITERATIONS = {"cuda": 20, "cpu": 10}


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

    times = []
    with torch.inference_mode():
        for _ in range(WARMUP):  # the first calls pick the algorithm (cudnn.benchmark)
            convolve()
        if device == "cuda":
            torch.cuda.synchronize()
            # Events time the kernels on the GPU, not the launch: no host jitter in a ~1 ms call.
            for _ in range(ITERATIONS[device]):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                convolve()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
        else:
            for _ in range(ITERATIONS[device]):
                start = time.perf_counter()
                convolve()
                times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    flops = 2 * batch * channels * channels * 9 * size * size
    ceiling = {
        "tflops": flops / (ms / 1e3) / 1e12,
        "shape": f"conv 3x3 stride 1 pad 1, N={batch} C=K={channels} {size}x{size}, channels-last",
        "ms": ms,
    }
    log.info("%s %s ceiling: %.1f TFLOP/s (%.3f ms)", device, dtype, ceiling["tflops"], ms)
    return ceiling
