"""cudnn-fused: each convolution with its bias, activation and residual addition as one cuDNN
kernel, the fusion TensorRT makes, here through cuDNN's graph API (nvidia-cudnn-frontend).

At batch 1 on a GPU, torch-aoti spends a large share of its device time in the small Triton
kernels that add the bias and apply the activation after each cuDNN convolution, and in the gaps
between them (docs/engines.md). Here each ConvChain
of our graph (torch_graph) is one cuDNN operation graph, conv_fprop -> bias -> activation (ReLU,
leaky ReLU, logistic, tanh, swish or mish) -> add, which cuDNN compiles for the engine's fixed
shapes (its runtime fusion engines). The other operators (routes, upsampling, the YOLO heads)
run as torch operations, compiled by torch.compile unless the build option `compile` is false,
and the runner replays the whole forward pass as one CUDA graph.

The engine file is a zip of the ONNX file and the plan chosen for each distinct chain. At build,
every plan cuDNN's heuristics list and the chain as separate torch operations are each timed on
the device, replayed from a CUDA graph as the engine runs, and the fastest is kept; load builds
those plans again, on the device and library versions the fingerprint pins.

The fp8 precision is the fp16 engine with one more candidate per chain: triton_chain's FP8 kernel,
with the activation ranges measured on the calibration images (a calibration cache beside the
engine, reused by later builds of the same model and images). A chain runs in FP8 only where
that is faster than its best FP16 candidate and its output stays within FP8_TOLERANCE of the
FP16 chain's; the plans file records each chain's FP8 outcome and why.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import logging
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from yoloforge.backends.base import BuildOption, BuildRequest, EngineFacts, Runner, calibration_batches
from yoloforge.backends.calibration import cached_activation_ranges
from yoloforge.backends.torch_backend import _configure, _module_for, _TorchBackend, _TorchRunner
from yoloforge.backends.torch_graph import ConvChain, chain_in_torch
from yoloforge.device_lock import DEVICE_LOCK
from yoloforge.errors import YoloforgeError
from yoloforge.files import write_json

# Every plan of cuDNN's heuristics (and every tile shape of the Triton kernel) is screened by
# SCREEN_RUNS runs replayed once from a CUDA graph; the SCREENED fastest of those are then timed
# by replay. Slow plans at a large batch take milliseconds a run, and a replay timing runs each
# ~150 times: timing them all in full would take minutes a chain.
SCREENED = 4
SCREEN_RUNS = 2
# A chain's FP8 output may differ from its FP16 output by this root-mean-square share of the
# FP16 output's. E4M3 keeps 3 mantissa bits: per-tensor rounding of input and weights alone
# leaves a few hundredths.
FP8_TOLERANCE = 0.06
# The fp8 engine's detections on the calibration images must agree with its own FP16 ones at
# least this well (agreement mAP@0.5): a chain within FP8_TOLERANCE stands for every layer of its
# shape, and their errors compound through a deep network.
FP8_AGREEMENT = 0.99
# Executions per timing, replayed from one CUDA graph: a chain takes microseconds at batch 1,
# less than a launch from Python, so only a replay times the kernel rather than the host.
TIMED_RUNS = 20
ENGINE_MEMBERS = ("model.onnx", "plans.json", "calibration.json")
# In the engine folder, which is per device fingerprint: each distinct chain's FP16/BF16 timing,
# which later builds there reuse (another precision's, a rebuilt engine's), as TensorRT's timing
# cache; valid for one version of the Triton kernel. Delete it to time every chain again.
TIMING_CACHE = "cudnn-timing.json"

log = logging.getLogger(__name__)


class CudnnChains:
    """Runs ConvChains as cuDNN graphs: `fuse` is torch_graph's Fuser. One graph per distinct
    chain and input layout, made on the first call with it (the runner's warm-up, before CUDA
    graph capture) and executed with that call's tensors; repeated layers share it.

    With `plans` None every distinct chain is timed (build) and `plans` records the winners;
    otherwise each chain runs the plan recorded for it. `ranges` (fp8 engines) is each chain's
    calibrated input range, by chain name. `timings` (build) is the timing cache: the FP16 or
    BF16 choice of earlier builds on this device by signature, reused where cuDNN still lists the
    plan; the build adds its own timings to it."""

    def __init__(
        self,
        dtype,
        plans: dict[str, dict[str, Any]] | None = None,
        ranges: dict[str, float] | None = None,
        timings: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        import cudnn
        import torch

        self.torch_dtype = dtype
        self.io_type = {torch.float16: cudnn.data_type.HALF, torch.bfloat16: cudnn.data_type.BFLOAT16}[dtype]
        self.tuning = plans is None
        self.plans: dict[str, dict[str, Any]] = {} if plans is None else plans
        self.handle = cudnn.create_handle()
        self.workspace = torch.empty(0, dtype=torch.uint8, device="cuda")
        self.ranges = ranges
        self.timings: dict[str, dict[str, Any]] = {} if timings is None else timings
        self.reused_timings = 0
        self._runs: dict[str, Any] = {}
        # Chains the tuning put in FP8: their FP16/BF16 record and function, to go back to.
        self._fp16_choices: dict[str, tuple[dict[str, Any], Any]] = {}
        self._fp8_choices: dict[str, tuple[dict[str, Any], Any]] = {}
        self._fp8_operands: dict[str, tuple[Any, Any, float]] = {}

    def fuse(self, chain: ConvChain):
        unfused = chain_in_torch(chain)

        def run(x, kernel, bias, residual=None):
            x, kernel = _channels_last(x), _channels_last(kernel)
            residual = None if residual is None else _channels_last(residual)
            key = _signature(chain, x, kernel, residual)
            if key not in self._runs:
                self._runs[key] = self._prepare(key, chain, unfused, x, kernel, bias, residual)
            return self._runs[key](chain, x, kernel, bias, residual)

        return as_custom_op(chain, run)

    def _prepare(self, key: str, chain: ConvChain, unfused, x, kernel, bias, residual):
        """The function that runs chains of this signature from now on, (chain, x, kernel, bias,
        residual) -> output: a cuDNN plan, the FP8 kernel or the torch operations."""
        if self.tuning:
            self.plans[key], run = self._tune(key, chain, unfused, x, kernel, bias, residual)
            return run
        if key not in self.plans:
            raise YoloforgeError(f"the engine has no plan for {chain.name} ({key}); rebuild it")
        return self._recorded(chain, unfused, x, kernel, residual, self.plans[key])

    def _recorded(self, chain: ConvChain, unfused, x, kernel, residual, plan: dict[str, Any]):
        """The function that runs `plan`, the record of an earlier timing."""
        if plan["plan"] == "torch":
            return _ignoring_chain(unfused)
        if plan["plan"] in ("fp8", "triton"):
            if not _triton_installed():
                raise YoloforgeError(f"the engine runs {chain.name} on the Triton kernel; install triton")
            return self._triton_executor(tuple(plan["config"]), fp8=plan["plan"] == "fp8")
        graph, tensors = self._graph(chain, x, kernel, residual)
        with DEVICE_LOCK.released():  # compiles on the CPU
            graph.build_plan_at_index(plan["plan"])
        if graph.get_plan_name_at_index(plan["plan"]) != plan["name"]:
            raise YoloforgeError(
                f"cuDNN now offers another plan for {chain.name} than the engine was built with; rebuild it"
            )
        return self._executor(graph, tensors, plan["plan"], chain)

    def _graph(self, chain: ConvChain, x, kernel, residual):
        """The operation graph of `chain` for these tensors, with its candidate plans listed."""
        import cudnn

        graph = cudnn.pygraph(
            io_data_type=self.io_type,
            intermediate_data_type=cudnn.data_type.FLOAT,
            compute_data_type=cudnn.data_type.FLOAT,
            handle=self.handle,
        )
        tensors = {
            "x": graph.tensor(name="x", dim=list(x.shape), stride=list(x.stride()), data_type=self.io_type),
            "kernel": graph.tensor(
                name="kernel", dim=list(kernel.shape), stride=list(kernel.stride()), data_type=self.io_type
            ),
        }
        outputs = kernel.shape[0]
        tensors["bias"] = graph.tensor(
            name="bias", dim=[1, outputs, 1, 1], stride=[outputs, 1, 1, 1], data_type=self.io_type
        )
        y = graph.conv_fprop(
            image=tensors["x"],
            weight=tensors["kernel"],
            pre_padding=list(chain.pre_padding),
            post_padding=list(chain.post_padding),
            stride=list(chain.stride),
            dilation=list(chain.dilation),
        )
        y = graph.bias(input=y, bias=tensors["bias"])
        if chain.activation:
            y = _pointwise_activation(graph, chain, y)
        if residual is not None:
            tensors["residual"] = graph.tensor(
                name="residual",
                dim=list(residual.shape),
                stride=list(residual.stride()),
                data_type=self.io_type,
            )
            y = graph.add(a=y, b=tensors["residual"])
        shape, stride = _output_layout(chain, x, kernel)
        y.set_output(True).set_data_type(self.io_type).set_dim(list(shape)).set_stride(list(stride))
        tensors["y"] = y
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
        graph.check_support()
        return graph, tensors

    def _executor(self, graph, tensors: dict[str, Any], index: int, chain: ConvChain):
        import cudnn
        import torch

        needed = graph.get_workspace_size_plan_at_index(index)
        if needed > self.workspace.numel():
            # Chains run one after another on one stream, so they share one workspace; it only
            # grows before capture (the warm-up builds every plan).
            self.workspace = torch.empty(needed, dtype=torch.uint8, device="cuda")

        def execute(chain, x, kernel, bias, residual=None):
            shape, stride = _output_layout(chain, x, kernel)
            y = torch.empty_strided(shape, stride, dtype=x.dtype, device=x.device)
            pointers = {tensors["x"]: x, tensors["kernel"]: kernel, tensors["bias"]: bias, tensors["y"]: y}
            if residual is not None:
                pointers[tensors["residual"]] = residual
            cudnn.set_stream(handle=self.handle, stream=torch.cuda.current_stream().cuda_stream)
            graph.execute_plan_at_index(pointers, self.workspace, index, handle=self.handle)
            return y

        return execute

    def _triton_executor(self, config: tuple[int, ...], fp8: bool):
        """The Triton kernel (triton_chain) at this tile shape: in FP8, or in the engine's own
        precision (narrow chains)."""
        import torch

        from yoloforge.backends.triton_chain import run_chain

        def execute(chain, x, kernel, bias, residual=None, compile_only=False):
            operands = (
                self._fp8_operands_of(chain, kernel) if fp8 else (kernel.permute(0, 2, 3, 1), None, None)
            )
            shape, stride = _output_layout(chain, x, kernel)
            y = torch.empty_strided(shape, stride, dtype=x.dtype, device=x.device)
            run_chain(chain, config, x, *operands, bias, residual, y, compile_only=compile_only)
            return y

        return execute

    @staticmethod
    def _compile_off_device(executes: dict[Any, Any], arguments) -> None:
        """Compile the Triton executors among `executes` for these arguments without holding the
        device, as cuDNN's plans are built; their first timed run then finds them compiled. One
        that fails to compile fails again in its screening, which records why."""
        with DEVICE_LOCK.released():
            for execute in executes.values():
                with contextlib.suppress(Exception):
                    execute(*arguments, compile_only=True)

    def _fp8_operands_of(self, chain: ConvChain, kernel) -> tuple[Any, Any, float]:
        """The chain's FP8 weights, dequantization factors and activation scale, made once (at
        the warm-up, before capture)."""
        if chain.name not in self._fp8_operands:
            from yoloforge.backends.triton_chain import activation_scale, quantize_weights

            if not self.ranges or chain.name not in self.ranges:
                raise YoloforgeError(f"the calibration has no range for {chain.name}; rebuild the engine")
            weights, weight_scale = quantize_weights(kernel)
            scale = activation_scale(self.ranges[chain.name])
            self._fp8_operands[chain.name] = (weights, (weight_scale * scale).float(), scale)
        return self._fp8_operands[chain.name]

    def _tune(self, key: str, chain: ConvChain, unfused, x, kernel, bias, residual):
        """The chain's FP16/BF16 choice, from the timing cache or timed now, then (fp8 engines)
        the FP8 kernel's: the fastest as a plan record, and the function that runs it."""
        arguments = (chain, x, kernel, bias) if residual is None else (chain, x, kernel, bias, residual)
        unfused_executor = _ignoring_chain(unfused)
        cached = self.timings.get(key)
        record = run = None
        if isinstance(cached, dict):
            try:
                run = self._recorded(chain, unfused, x, kernel, residual, cached)
                record = {**cached, "timing": "reused from the timing cache"}
                self.reused_timings += 1
            except Exception as error:  # noqa: BLE001 - a stale entry is timed again, whatever cuDNN raises
                log.info("%s: timing cache entry not reusable (%s); timing it", chain.name, error)
        if record is None:
            record, run = self._time(chain, unfused_executor, arguments, residual)
            self.timings[key] = dict(record)
        if self.ranges is not None:
            fp8, outcome = self._tune_fp8(chain, unfused_executor, arguments, record["ms"])
            if fp8 is not None:
                self._fp16_choices[key] = ({**record, "fp8": {**outcome, "used": False}}, run)
                milliseconds, config, run = fp8
                record = {field: value for field, value in record.items() if field not in ("name", "why")}
                record.update(plan="fp8", config=list(config), ms=round(milliseconds, 5))
                self._fp8_choices[key] = ({**record, "fp8": outcome}, run)
            record["fp8"] = outcome
        log.info("%s: %s", chain.name, record)
        return record, run

    def chains_in_fp8(self) -> list[str]:
        """The chains now in FP8, the largest FP8 error first."""
        keys = [key for key, plan in self.plans.items() if plan["plan"] == "fp8"]
        return sorted(keys, key=lambda key: -self.plans[key]["fp8"]["relative_error"])

    def choose(self, key: str, precision: str, why: str | None = None) -> None:
        """Run the FP8-tuned chain `key` in "fp8" or (its FP16/BF16 choice) "fp16" from now on;
        `why` it does not run in FP8 goes to its plan record."""
        record, run = (self._fp8_choices if precision == "fp8" else self._fp16_choices)[key]
        self.plans[key] = record if why is None else {**record, "fp8": {**record["fp8"], "why": why}}
        self._runs[key] = run

    def _time(self, chain: ConvChain, unfused, arguments, residual):
        """Time the torch operations and every cuDNN plan (time_candidates): the fastest as a
        plan record, and the function that runs it."""
        x, kernel = arguments[1], arguments[2]
        torch_ms = _replay_ms(lambda: unfused(*arguments))
        best: tuple[float, dict[str, Any], Any] = (torch_ms, {"plan": "torch"}, unfused)
        executes, failures = {}, {}
        try:
            graph, tensors = self._graph(chain, x, kernel, residual)
            count = graph.get_execution_plan_count()
        except Exception as error:  # noqa: BLE001 - cuDNN raises several types for "not supported"
            count = 0
            best[1]["why"] = f"no cuDNN plan: {_first_line(error)}"
        # Building a plan compiles its kernel on the CPU: other builds may time meanwhile.
        with DEVICE_LOCK.released():
            for index in range(count):
                try:
                    graph.build_plan_at_index(index)
                except Exception as error:  # noqa: BLE001 - a plan that does not build is no candidate
                    failures[index] = _first_line(error)
        for index in range(count):
            if index not in failures:
                executes[index] = self._executor(graph, tensors, index, chain)
        narrow = _narrow_configs(chain, x, kernel)
        triton_executes = {("triton", config): self._triton_executor(config, fp8=False) for config in narrow}
        self._compile_off_device(triton_executes, arguments)
        executes.update(triton_executes)
        timed, failed = time_candidates(
            {label: functools.partial(execute, *arguments) for label, execute in executes.items()}
        )
        failures.update({_label_text(label): reason for label, reason in failed.items()})
        if timed and timed[0][0] < torch_ms:
            milliseconds, label = timed[0]
            plan = (
                {"plan": "triton", "config": list(label[1])}
                if isinstance(label, tuple)
                else {"plan": label, "name": graph.get_plan_name_at_index(label)}
            )
            best = (milliseconds, plan, executes[label])
        milliseconds, record, run = best
        record.update(ms=round(milliseconds, 5), torch_ms=round(torch_ms, 5), candidates=1 + len(timed))
        record["cudnn_plans"] = {
            "listed": count,
            "replay_timed": sum(isinstance(label, int) for _, label in timed),
        }
        if narrow:
            record["triton_tile_shapes"] = len(narrow)
        if failures:
            record["failed_plans"] = failures
        return record, run

    def _tune_fp8(self, chain: ConvChain, unfused, arguments, fp16_ms: float):
        """((ms, tile shape, function) or None, what happened): the FP8 kernel's tile shapes
        timed on this chain (time_candidates), the fastest kept if it beats `fp16_ms` and its
        output passes the check."""
        from yoloforge.backends.triton_chain import configs_for, why_not_fp8

        x, kernel = arguments[1], arguments[2]
        why = why_not_fp8(chain, x.shape[1], kernel.shape[0])
        if why:
            return None, {"used": False, "why": why}
        executes = {
            config: self._triton_executor(config, fp8=True)
            for config in configs_for(x.shape[1], kernel.shape[0])
        }
        self._compile_off_device(executes, arguments)
        timed, failures = time_candidates(
            {config: functools.partial(execute, *arguments) for config, execute in executes.items()}
        )
        failed = {str(list(config)): reason for config, reason in failures.items()}
        if not timed:
            return None, {"used": False, "why": "no tile shape ran", "failed_configs": failed}
        milliseconds, config = timed[0]
        reference = unfused(*arguments).float()
        error = (executes[config](*arguments).float() - reference).pow(2).mean().sqrt()
        error = float(error / reference.pow(2).mean().sqrt().clamp_min(1e-12))
        outcome = {
            "ms": round(milliseconds, 5),
            "fp16_ms": round(fp16_ms, 5),
            "config": list(config),
            "relative_error": round(error, 4),
        }
        if failed:
            outcome["failed_configs"] = failed
        if not error <= FP8_TOLERANCE:
            return None, {**outcome, "used": False, "why": f"output error above {FP8_TOLERANCE}"}
        if milliseconds >= fp16_ms:
            return None, {**outcome, "used": False, "why": "slower than FP16"}
        return (milliseconds, config, executes[config]), {**outcome, "used": True}


def hold_fp8_to_fp16_detections(chains, detect: Callable[[], list[Any]]) -> dict[str, Any]:
    """Return chains from FP8 to FP16/BF16, the largest FP8 error first, until the engine's
    detections (`detect`: raw rows per calibration image) agree with those of its chains all in
    FP16 at FP8_AGREEMENT. `chains`: chains_in_fp8() and choose(key, precision, why), as
    CudnnChains. Returns what the check found, for the sidecar."""
    from yoloforge.accuracy import rows_agreement_map50

    in_fp8 = chains.chains_in_fp8()
    if not in_fp8:
        return {"chains_checked": 0}
    for key in in_fp8:
        chains.choose(key, "fp16")
    agreement_with_fp16 = rows_agreement_map50(detect())
    for key in in_fp8:
        chains.choose(key, "fp8")
    returned = 0
    while True:
        agreement = agreement_with_fp16(detect())
        if agreement is None or agreement >= FP8_AGREEMENT or returned == len(in_fp8):
            break
        why = f"the engine's detections agreed at {agreement:.3f} with FP16's, under {FP8_AGREEMENT}"
        chains.choose(in_fp8[returned], "fp16", why)
        returned += 1
    return {
        "chains_checked": len(in_fp8),
        "chains_returned_to_fp16": returned,
        "agreement_map50_with_fp16": agreement,
    }


def time_candidates(runs: dict[Any, Callable[[], Any]]) -> tuple[list[tuple[float, Any]], dict[Any, str]]:
    """Each of `runs` (label -> function) screened by one short replay; the SCREENED fastest of
    those then timed by a full one. Returns ([(milliseconds, label)] fastest first, {label: why}
    for the runs that raised). A screening timed around one launch from Python measures the host
    as much as the kernel at batch 1, and more so on a busy CPU: it ranked chains' plans
    differently from build to build, and could leave out the Triton kernel, whose launch from
    Python takes longest, where it was the fastest."""
    screened, failures = [], {}
    for label, run in runs.items():
        try:
            screened.append((_replayed_ms(run, runs=SCREEN_RUNS, samples=1, warmups=1), label))
        except Exception as error:  # noqa: BLE001 - a candidate that does not run is none
            failures[label] = _first_line(error)
    shortlist = [label for _, label in sorted(screened, key=lambda entry: entry[0])[:SCREENED]]
    return sorted(
        ((_replay_ms(runs[label]), label) for label in shortlist), key=lambda entry: entry[0]
    ), failures


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _narrow_configs(chain: ConvChain, x, kernel) -> list[tuple[int, ...]]:
    """The Triton kernel's tile shapes for this chain, where it is narrow and Triton is here."""
    from yoloforge.backends.triton_chain import narrow_configs_for

    if not _triton_installed():
        return []
    return narrow_configs_for(chain, x.shape[1], kernel.shape[0])


def _label_text(label) -> Any:
    """A candidate's label as the plans file keys it: a cuDNN plan's index, or the Triton kernel's
    tile shape."""
    return f"triton {list(label[1])}" if isinstance(label, tuple) else label


def _first_line(error: Exception) -> str:
    return (str(error) or type(error).__name__).splitlines()[0]


def _kernels_version() -> str:
    """The Triton kernel's source, hashed: a timing made with another version of it may have
    chosen against a kernel that is now faster, so the cache is valid for one version."""
    import hashlib

    from yoloforge.backends import triton_chain

    return hashlib.sha256(Path(triton_chain.__file__).read_bytes()).hexdigest()[:16]


def read_timings(path: Path) -> dict[str, dict[str, Any]]:
    """The timing cache at `path`; {} where there is none, it is unreadable or it was timed with
    another version of the Triton kernel (then it is rebuilt)."""
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(cached, dict) or cached.get("kernels") != _kernels_version():
        return {}
    timings = cached.get("timings")
    return timings if isinstance(timings, dict) else {}


def write_timings(path: Path, timings: dict[str, dict[str, Any]]) -> None:
    """Add `timings` to the cache at `path`, keeping what builds that ran alongside wrote to it
    (the caller holds the device lock, as they did)."""
    write_json(path, {"kernels": _kernels_version(), "timings": {**read_timings(path), **timings}})


def _ignoring_chain(function):
    """`function` (x, kernel, bias, residual) as a chain executor, which also takes the chain."""

    def execute(chain, *arguments):
        return function(*arguments)

    return execute


def _pointwise_activation(graph, chain: ConvChain, y):
    """The chain's activation of `y` as cuDNN pointwise operations. mish, y * tanh(softplus(y)),
    has no mode of its own: three operations, one of which reads `y` again. Where cuDNN's
    runtime fusion takes none of a chain's graphs, tuning records why in the plans and the chain
    runs as torch operations."""
    if chain.activation == "relu" and chain.negative_slope:
        return graph.leaky_relu(input=y, negative_slope=chain.negative_slope)
    if chain.activation == "relu":
        return graph.relu(input=y)
    if chain.activation == "sigmoid":
        return graph.sigmoid(input=y)
    if chain.activation == "tanh":
        return graph.tanh(input=y)
    if chain.activation == "swish":
        return graph.swish(input=y, swish_beta=1.0)
    if chain.activation == "mish":
        return graph.mul(a=y, b=graph.tanh(input=graph.softplus(input=y)))
    raise ValueError(f"no cuDNN pointwise form of activation {chain.activation}")


# Every fused chain's function, by the index the custom op is called with: torch.compile traces
# the op through its fake implementation, never into cuDNN's Python bindings.
_CHAIN_RUNS: list[tuple[ConvChain, Any]] = []


def as_custom_op(chain: ConvChain, run):
    """`run` (the chain's function) called through the custom op, as torch.compile can trace it."""
    _CHAIN_RUNS.append((chain, run))
    return functools.partial(_chain_op(), len(_CHAIN_RUNS) - 1)


@functools.cache
def _chain_op():
    import torch

    def run(key: int, x, kernel, bias, residual=None):
        # The layout the fake promises, whichever way the chain ran.
        return _channels_last(_CHAIN_RUNS[key][1](x, kernel, bias, residual))

    op = torch.library.custom_op(
        "yoloforge::cudnn_chain",
        run,
        mutates_args=(),
        schema="(int key, Tensor x, Tensor kernel, Tensor bias, Tensor? residual=None) -> Tensor",
    )

    @op.register_fake
    def _(key, x, kernel, bias, residual=None):
        shape, stride = _output_layout(_CHAIN_RUNS[key][0], x, kernel)
        return x.new_empty_strided(shape, stride)

    return op


def _channels_last(tensor):
    """`tensor` in channels-last memory, with strides that follow from its shape alone (a size-1
    axis's stride is free, and graphs and plans are keyed by strides)."""
    import torch

    if not tensor.is_contiguous(memory_format=torch.channels_last):
        tensor = tensor.contiguous(memory_format=torch.channels_last)
    strides = _packed_channels_last(tuple(tensor.shape))
    return tensor if tensor.stride() == strides else tensor.as_strided(tensor.shape, strides)


def _packed_channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    _, channels, height, width = shape
    return (channels * height * width, 1, width * channels, channels)


def _signature(chain: ConvChain, x, kernel, residual) -> str:
    """What a cuDNN graph is valid for: the chain's settings and its tensors' layouts."""
    settings = (chain.stride, chain.pre_padding, chain.post_padding, chain.dilation, chain.activation)
    tensors = (x, kernel) if residual is None else (x, kernel, residual)
    layouts = [(tuple(t.shape), tuple(t.stride())) for t in tensors]
    return f"{settings} slope={chain.negative_slope} {layouts} {x.dtype}"


def _output_layout(chain: ConvChain, x, kernel) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shape and channels-last strides of the chain's output."""
    batch, _, height, width = x.shape
    outputs, _, kernel_h, kernel_w = kernel.shape
    sizes = []
    for size, extent, stride, before, after, dilation in zip(
        (height, width),
        (kernel_h, kernel_w),
        chain.stride,
        chain.pre_padding,
        chain.post_padding,
        chain.dilation,
        strict=True,
    ):
        sizes.append((size + before + after - dilation * (extent - 1) - 1) // stride + 1)
    shape = (batch, outputs, *sizes)
    return shape, _packed_channels_last(shape)


def _replay_ms(run) -> float:
    """Device milliseconds of one `run`, from TIMED_RUNS of it captured into one CUDA graph."""
    return _replayed_ms(run, runs=TIMED_RUNS, samples=5)


def _replayed_ms(run, runs: int, samples: int, warmups: int = 3) -> float:
    """Device milliseconds of one `run`: `runs` of it captured into one CUDA graph after `warmups`
    outside it (a run that fails, fails there, before any capture), the median of `samples`
    timed replays after one untimed."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmups):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(runs):
            run()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    timed = []
    for _ in range(samples):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        timed.append(start.elapsed_time(end) / runs)
    return sorted(timed)[len(timed) // 2]


@functools.cache
def _frontend_versions() -> dict[str, str]:
    import cudnn

    versions = {"cudnn_frontend": cudnn.__version__, "cudnn": str(cudnn.backend_version_string())}
    # Engines may run chains on the Triton kernel, compiled at load for this version.
    if _triton_installed():
        from importlib.metadata import version

        versions["triton"] = version("triton")
    return versions


class CudnnFusedBackend(_TorchBackend):
    name = "cudnn-fused"
    # Its build times each chain's cuDNN plans on the GPU.
    facts = EngineFacts(
        precisions=("fp16", "bf16", "fp8"),
        devices=("cuda",),
        extras=("torch", "cudnn"),
        family="cudnn",
        times_kernels=True,
        compiles_off_device=True,
        options={
            "compile": BuildOption(
                bool,
                "torch.compile the operators around the fused chains (routes, upsampling, YOLO heads)"
                " at each load",
                default=True,
            )
        },
    )

    def unavailable_reason(self, precision: str = "fp16") -> str | None:
        reason = super().unavailable_reason(precision)
        if reason:
            return reason
        import torch

        if not torch.cuda.is_available():
            return "needs an NVIDIA GPU (PyTorch sees none)"
        try:
            _frontend_versions()
        except (ImportError, OSError, RuntimeError) as error:
            return f"cuDNN's graph API is not usable here (pip install nvidia-cudnn-frontend): {error}"
        if precision == "fp8":
            if torch.cuda.get_device_capability() < (8, 9):
                return f"{torch.cuda.get_device_name()} has no FP8 tensor cores (compute capability 8.9+)"
            try:
                import triton  # noqa: F401 - the FP8 kernel is Triton's
            except ImportError as error:
                return f"the FP8 kernel needs Triton: {error}"
        return None

    def _flags(self, request: BuildRequest) -> dict[str, Any]:
        # fp8 is the fp16 engine with FP8 chains where they pay.
        if request.precision != "fp8":
            return super()._flags(request)
        return {**super()._flags(replace(request, precision="fp16")), "fp8": True}

    def library_versions(self) -> dict[str, str]:
        return {**super().library_versions(), **_frontend_versions()}

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        import torch

        flags = {**self._flags(request), "batch": request.batch}
        # torch.compile fuses the heads' many elementwise kernels into a few, which pays at batch
        # 1, for seconds of compiling at each load.
        flags["compile"] = self.option(request, "compile", "cuda")
        _configure(flags)
        ranges = None
        if flags.get("fp8"):
            ranges, calibration = cached_activation_ranges(request, "cuda")
            flags.update(calibration)
        timing_cache = request.output.parent / TIMING_CACHE
        timings = read_timings(timing_cache)
        chains = CudnnChains(getattr(torch, flags["dtype"]), ranges=ranges, timings=timings)
        module = _module_for(request.onnx, flags, fuse=chains.fuse)
        # Tuned on a calibration batch: the FP8 output check needs real activations, and the
        # tensor cores' power draw (so their clocks) depends on the data.
        if request.calibration:
            images = [torch.from_numpy(batch) for batch in calibration_batches(request, request.batch)]
        else:
            images = [torch.zeros((request.batch, *module.image_shape))]
        layout = torch.channels_last
        batches = [batch.cuda().to(chains.torch_dtype).contiguous(memory_format=layout) for batch in images]

        def detect() -> list[Any]:
            return [rows for batch in batches for rows in module(batch).float().cpu().numpy()]

        with torch.inference_mode():
            # Times every chain's candidates.
            module(batches[0])
            if ranges is not None:
                flags["fp8_detections_check"] = hold_fp8_to_fp16_detections(chains, detect)
        torch.cuda.synchronize()
        plans = chains.plans
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.write(request.onnx, ENGINE_MEMBERS[0])
            archive.writestr(ENGINE_MEMBERS[1], json.dumps(plans, indent=1, sort_keys=True))
            if ranges is not None:
                archive.writestr(ENGINE_MEMBERS[2], json.dumps(ranges, indent=1, sort_keys=True))
        request.output.write_bytes(buffer.getvalue())
        write_timings(timing_cache, chains.timings)
        fused = [plan for plan in plans.values() if plan["plan"] != "torch"]
        return {
            **flags,
            "distinct_chains": len(plans),
            "timing_cache": str(timing_cache),
            "chains_timed_from_cache": chains.reused_timings,
            "chains_fused_by_cudnn": sum(isinstance(plan["plan"], int) for plan in fused),
            "chains_in_triton_fp16": sum(plan["plan"] == "triton" for plan in fused),
            **({"chains_in_fp8": sum(plan["plan"] == "fp8" for plan in fused)} if ranges is not None else {}),
            "chain_ms_fused": round(sum(plan["ms"] for plan in fused), 4),
            "chain_ms_as_torch": round(sum(plan["torch_ms"] for plan in fused), 4),
        }

    def _load_to_check(self, engine: Path, flags: dict[str, Any]) -> Runner:
        """Without torch.compile: the check is of the build's own choices (plans, FP8 scales), and
        compiling the operators around them would take longer than the check, holding the device
        (device_lock) from builds alongside. Accuracy jobs score the engine as it is timed."""
        return self._load(engine, {"build_flags": {**flags, "compile": False}})

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        import torch

        flags = sidecar["build_flags"]
        _configure(flags)
        try:
            with zipfile.ZipFile(engine) as archive:
                plans = json.loads(archive.read(ENGINE_MEMBERS[1]))
                ranges = None
                if flags.get("fp8"):
                    ranges = json.loads(archive.read(ENGINE_MEMBERS[2]))
                with tempfile.TemporaryDirectory() as scratch:
                    onnx = Path(scratch) / ENGINE_MEMBERS[0]
                    with archive.open(ENGINE_MEMBERS[0]) as source, onnx.open("wb") as target:
                        shutil.copyfileobj(source, target)
                    chains = CudnnChains(getattr(torch, flags["dtype"]), plans, ranges)
                    module = _module_for(onnx, flags, fuse=chains.fuse)
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as error:
            raise YoloforgeError(f"not a cudnn-fused engine file: {error}", engine) from None
        model = torch.compile(module, fullgraph=True, dynamic=False) if flags["compile"] else module
        return _TorchRunner(model, flags, cuda_graph=True)
