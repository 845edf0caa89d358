"""The device's measured compute ceilings: one large 3x3 convolution per precision.

YOLO's FLOPs are almost all 3x3 convolutions, so a large one is the throughput a well-tuned
engine can approach here, a fairer roof than the datasheet's peak. On a GPU it is timed through
every route the engines run convolutions by (PyTorch's cuDNN call; cuDNN's graph API at its
fastest plan, as cudnn-fused; for fp8 the FP8 kernel and the FP16 routes, as the fp8 engine
keeps a chain in FP16 where that is faster) and the fastest is kept, so that no engine's
fraction is measured against a slower kernel than it could run.
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
        images, weight = _operands(torch, "cpu", torch.float32, CPU_SHAPE)
        route = {"PyTorch conv2d (oneDNN)": _torch_route(torch, images, weight)}
        return {"fp32": _fastest(torch, "cpu", route, CPU_SHAPE)}
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
        ceilings = {}
        for name, dtype in precisions.items():
            images, weight = _operands(torch, "cuda", dtype, CUDA_SHAPE)
            routes = {"PyTorch conv2d (cuDNN)": _torch_route(torch, images, weight)}
            if dtype != torch.float32:
                routes.update(_cudnn_graph_route(torch, images, weight))
            ceilings[name] = _fastest(torch, "cuda", routes, CUDA_SHAPE)
            if name == "fp16":
                fp8 = _fp8_route(torch, images, weight)
                if fp8:
                    ceilings["fp8"] = _fastest(torch, "cuda", fp8_engine_routes(fp8, routes), CUDA_SHAPE)
        return ceilings
    finally:
        cudnn.benchmark, cudnn.allow_tf32 = saved
        torch.cuda.empty_cache()


def _operands(torch, device: str, dtype, shape: tuple[int, int, int]):
    batch, channels, size = shape
    images = torch.randn(batch, channels, size, size, device=device, dtype=dtype)
    weight = torch.randn(channels, channels, 3, 3, device=device, dtype=dtype) / (9 * channels) ** 0.5
    return images.contiguous(memory_format=torch.channels_last), weight.contiguous(
        memory_format=torch.channels_last
    )


def _torch_route(torch, images, weight) -> Callable[[], Any]:
    return lambda: torch.nn.functional.conv2d(images, weight, stride=1, padding=1)


def _probe_chain():
    from yoloforge.backends.torch_graph import ConvChain

    return ConvChain("ceiling", (1, 1), (1, 1), (1, 1), (1, 1), None, 0.0, False)


def _cudnn_graph_route(torch, images, weight) -> dict[str, Callable[[], Any]]:
    """cuDNN's graph API at its fastest plan (every listed plan tried), where it is installed."""
    try:
        from yoloforge.backends.cudnn_fused import CudnnChains

        chains = CudnnChains(images.dtype)
    except (ImportError, OSError, RuntimeError) as error:
        log.info("no cuDNN graph route for the ceiling: %s", error)
        return {}
    bias = torch.zeros(weight.shape[0], device=images.device, dtype=images.dtype)
    run = chains.fuse(_probe_chain())
    with torch.inference_mode():
        run(images, weight, bias)  # tunes
    plan = next(iter(chains.plans.values()))
    return {f"cuDNN graph plan {plan.get('name', plan['plan'])}": lambda: run(images, weight, bias)}


def _fp8_route(torch, images, weight) -> dict[str, Callable[[], Any]]:
    """The FP8 kernel (triton_chain) at its fastest tile shape, where the GPU and Triton run it."""
    if torch.cuda.get_device_capability() < (8, 9):
        return {}
    try:
        from yoloforge.backends.cudnn_fused import time_candidates
        from yoloforge.backends.triton_chain import activation_scale, configs_for, quantize_weights, run_chain
    except ImportError as error:
        log.info("no FP8 route for the ceiling: %s", error)
        return {}
    chain = _probe_chain()
    quantized, weight_scale = quantize_weights(weight)
    scale = activation_scale(float(images.abs().max()))
    dequant = (weight_scale * scale).float()
    bias = torch.zeros(weight.shape[0], device=images.device, dtype=images.dtype)
    output = torch.empty_like(images)

    def route(config):
        return lambda: run_chain(chain, config, images, quantized, dequant, scale, bias, None, output)

    timed, failures = time_candidates(
        {config: route(config) for config in configs_for(*weight.shape[:2][::-1])}
    )
    if not timed:
        log.info("no FP8 route for the ceiling: no tile shape ran (%s)", failures)
        return {}
    best = timed[0][1]
    return {f"FP8 kernel (Triton), tiles {best}": route(best)}


def fp8_engine_routes(fp8: dict[str, Callable[[], Any]], fp16: dict[str, Callable[[], Any]]):
    """The routes of an fp8 engine: the FP8 kernel, and every FP16 route, since it runs each chain
    in FP16 wherever that is faster."""
    return {**fp8, **{f"{route}, FP16": run for route, run in fp16.items()}}


def _fastest(torch, device: str, routes: dict[str, Callable[[], Any]], shape) -> dict[str, Any]:
    """The ceiling of the fastest route, with every route's TFLOP/s beside it."""
    timed = {
        route: _time_convolution(torch, device, convolve, shape, route) for route, convolve in routes.items()
    }
    best = max(timed, key=lambda route: timed[route]["tflops"])
    return {
        **timed[best],
        "route": best,
        "routes": {route: round(c["tflops"], 1) for route, c in timed.items()},
    }


def _time_convolution(
    torch, device: str, convolve: Callable[[], Any], shape: tuple[int, int, int], route: str
) -> dict[str, Any]:
    batch, channels, size = shape
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
    log.info("%s %s ceiling: %.1f TFLOP/s (%.3f ms)", device, route, ceiling["tflops"], ceiling["ms"])
    if not ceiling["agree"]:
        log.warning(
            "%s %s ceiling not trusted: its %d stretches differ by %.0f%% (more than %.0f%%);"
            " was the machine busy? The table gives no fraction of it",
            device, route, REPEATS, 100 * ceiling["spread"], 100 * AGREEMENT,
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
