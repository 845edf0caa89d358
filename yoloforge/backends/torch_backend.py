"""PyTorch engines run from our ONNX graph rebuilt as a torch module (see torch_graph).

torch-eager: the engine file is a copy of the ONNX file; load rebuilds the module from it and
casts it to the precision, so the engine is the graph plus the build flags in the sidecar.
torch-aoti: torch.export at the build's fixed batch, compiled ahead of time by AOTInductor into
a .pt2 package (generated C++/CUDA kernels in a shared library), which is the engine file.

Both run on CUDA when PyTorch sees a GPU, else on the CPU; inputs are cast to the precision and
detections come back as float32.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from yoloforge.backends.base import Backend, BuildOption, BuildRequest, EngineFacts, Runner
from yoloforge.backends.torch_pipeline import BatchedNms
from yoloforge.device import cpu_fingerprint, cpu_threads, cuda_fingerprint
from yoloforge.errors import YoloforgeError

if TYPE_CHECKING:
    from yoloforge.detections import Boxes

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# torch-aoti's max_autotune (declared in its facts: on by default on CUDA) benchmarks Triton and
# cuBLAS/cuDNN choices per layer while compiling: minutes per model, fastest to run, which is what
# an engine file is for. The CPU gets Inductor's defaults.


class _TorchRunner(Runner):
    """A torch module (eager, or a loaded AOTInductor package) with every end-to-end stage on
    its device (torch_pipeline). With `cuda_graph`, the first batch is captured into a CUDA graph
    that every later batch replays: one launch instead of hundreds, which is most of the time of
    a small batch. The graph's output buffer is reused, so each output must be consumed (copied
    or post-processed) before the next run, as every stage here does."""

    def __init__(self, model, flags: dict[str, Any], cuda_graph: bool = False) -> None:
        import torch

        self.model = model
        self.device = torch.device(flags["device"])
        self.dtype = getattr(torch, flags["dtype"])
        self.channels_last = flags.get("channels_last", False)
        self.batch = flags.get("batch")
        self.cuda_graph = cuda_graph and self.device.type == "cuda"
        self._graph = None
        self._graph_input = None
        self._graph_output = None
        self._pool = ThreadPoolExecutor(cpu_threads())
        cuda = self.device.type == "cuda"
        # Decoding and letterboxing the next batch run on a stream of their own, beside the
        # current batch's inference, and NMS of the previous batch on another; both of high
        # priority, so that their small kernels are not queued behind a whole batch's
        # convolutions while a host thread waits on them.
        self._preprocess_stream = torch.cuda.Stream(self.device, priority=-1) if cuda else None
        self._postprocess_stream = torch.cuda.Stream(self.device, priority=-1) if cuda else None
        self._nms = BatchedNms(cuda_graphs=cuda)

    def prepare(self, images):
        import torch

        if self.batch is not None and images.shape[0] != self.batch:
            raise YoloforgeError(f"this engine was compiled for batch {self.batch}, not {images.shape[0]}")
        if isinstance(images, torch.Tensor):
            tensor = images.to(self.device, self.dtype)
        else:
            host = torch.from_numpy(np.ascontiguousarray(images))
            if self.device.type == "cuda":
                host = host.pin_memory()
            tensor = host.to(self.device, non_blocking=True).to(self.dtype)
        if self.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def run(self, prepared):
        import torch

        with torch.inference_mode():
            if not self.cuda_graph:
                return self.model(prepared)
            if self._graph is None:
                self._capture(prepared)
            self._graph_input.copy_(prepared)
            self._graph.replay()
            return self._graph_output

    def _capture(self, prepared) -> None:
        import torch

        self._graph_input = prepared.clone()
        # Warm-up runs on a side stream, as capture requires: lazy initialization (kernel
        # loading, workspace allocation) must not happen inside the graph.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.model(self._graph_input)
        torch.cuda.current_stream().wait_stream(side)
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph):
            self._graph_output = self.model(self._graph_input)

    def decode(self, encoded: list[bytes]) -> list[Any]:
        from yoloforge.backends.torch_pipeline import decode_images

        with _on(self._preprocess_stream):
            return decode_images(encoded, self.device, self._pool)

    def preprocess(self, images: list[Any], width: int, height: int):
        import torch

        from yoloforge.backends.torch_pipeline import resize_batch

        with _on(self._preprocess_stream):
            batch = resize_batch(
                images, width, height, self.letterbox, self.device, self.dtype, self.channels_last
            )
        if self._preprocess_stream is not None:
            # Inference, on the default stream, reads the batch only once it is complete, and
            # the allocator must not reuse its memory before inference has read it.
            main = torch.cuda.default_stream(self.device)
            main.wait_stream(self._preprocess_stream)
            batch.record_stream(main)
        return batch

    def download(self, outputs):
        """Outputs stay on the device: postprocess copies back only the kept boxes. On a GPU, a
        CUDA graph's output buffer is copied (the next replay overwrites it), and an event marks
        the outputs complete, so that postprocess can run on a stream of its own, beside the
        next batch's inference (pipelined timing runs it from another thread)."""
        import torch

        if self.device.type != "cuda":
            return outputs
        if self.cuda_graph:
            outputs = outputs.clone()
        complete = torch.cuda.Event()
        complete.record()
        return outputs, complete

    def postprocess(self, detections) -> list[Boxes]:
        import torch

        if self.device.type != "cuda":
            return self._nms(detections)
        outputs, complete = detections
        self._postprocess_stream.wait_event(complete)
        # The caching allocator must not hand the outputs' memory to the main stream while NMS reads it.
        outputs.record_stream(self._postprocess_stream)
        with torch.cuda.stream(self._postprocess_stream):
            return self._nms(outputs)

    def infer(self, images: np.ndarray) -> np.ndarray:
        return self.run(self.prepare(images)).float().cpu().numpy()

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _TorchBackend(Backend):
    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        try:
            import torch
        except ImportError as error:
            return f"PyTorch is not installed ({error})"
        cuda = torch.cuda.is_available()
        if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
            return f"{torch.cuda.get_device_name()} has no native bfloat16"
        return None

    def library_versions(self) -> dict[str, str]:
        import torch

        return {"torch": torch.__version__, "torch_cuda": str(torch.version.cuda)}

    def device_fingerprint(self) -> dict[str, Any]:
        import torch

        device = (cuda_fingerprint() if torch.cuda.is_available() else None) or cpu_fingerprint()
        return {**device, **self.library_versions()}

    def _flags(self, request: BuildRequest) -> dict[str, Any]:
        """Where and how the module runs; _load reads everything it needs from these."""
        import torch

        flags: dict[str, Any] = {"dtype": DTYPES[request.precision]}
        if not torch.cuda.is_available():
            return {**flags, "device": "cpu", "threads": cpu_threads()}
        flags["device"] = "cuda"
        if request.precision == "fp32":
            # TF32 tensor cores keep 10 of float32's 23 mantissa bits: fp32 here means IEEE fp32.
            # Without tensor cores NCHW was the faster layout, on the GPU as on the CPU.
            return {**flags, "tf32": False}
        # Tensor cores read fp16 and bf16 fastest in NHWC, with channel counts in multiples of 8.
        return {**flags, "channels_last": True, "channel_multiple": 8}


def _configure(flags: dict[str, Any]) -> None:
    """Process-wide torch settings the engine depends on, applied at build and again at load."""
    import torch

    if flags["device"] == "cpu":
        torch.set_num_threads(cpu_threads())
        return
    # An AOTInductor package loaded before the process has a CUDA context crashes (seen with
    # torch 2.11): create the context first.
    torch.zeros(1, device="cuda")
    # An engine's shapes are fixed, so cuDNN may time its algorithms for each convolution on the
    # first call (the warm-up) rather than pick them by heuristics.
    torch.backends.cudnn.benchmark = True
    if flags.get("tf32") is False:
        # The legacy switches, not the fp32_precision API: Inductor's conv templates read these,
        # and PyTorch refuses to read them once the two APIs have been mixed.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _module_for(onnx: Path, flags: dict[str, Any], fuse=None):
    import torch

    from yoloforge.backends.torch_graph import onnx_module

    module = onnx_module(onnx, flags.get("channel_multiple", 1), fuse)
    module = module.to(torch.device(flags["device"]), getattr(torch, flags["dtype"]))
    if flags.get("channels_last"):
        module = module.to(memory_format=torch.channels_last)
    return module


class TorchEagerBackend(_TorchBackend):
    name = "torch-eager"
    # PyTorch eager: the GPU baseline.
    facts = EngineFacts(
        precisions=("fp32", "fp16", "bf16"),
        devices=("cuda", "cpu"),
        extras=("torch",),
        family="torch",
        baseline_on=("cuda",),
    )

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        flags = self._flags(request)
        _configure(flags)
        _module_for(request.onnx, flags)  # an op we cannot run fails the build, not the first load
        shutil.copyfile(request.onnx, request.output)
        return {**flags, "engine_file": "the ONNX file; load rebuilds the torch module from it"}

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        flags = sidecar["build_flags"]
        _configure(flags)
        return _TorchRunner(_module_for(engine, flags), flags)


class TorchAotiBackend(_TorchBackend):
    name = "torch-aoti"
    facts = EngineFacts(
        precisions=("fp32", "fp16", "bf16"),
        devices=("cuda", "cpu"),
        extras=("torch",),
        family="torch",
        times_kernels="max_autotune",
        options={
            "max_autotune": BuildOption(
                bool,
                "Inductor benchmarks Triton and ATen kernel choices for each layer on the device"
                " (minutes per model) instead of picking them by heuristics",
                default={"cuda": True, "cpu": False},
            )
        },
    )

    def _build(self, request: BuildRequest) -> dict[str, Any]:
        import torch
        from torch._inductor import aoti_compile_and_package

        flags = {**self._flags(request), "batch": request.batch}
        _configure(flags)
        if flags["device"] == "cuda":
            _skip_cpu_isa_probe()
        module = _module_for(request.onnx, flags)
        example = torch.zeros(
            (request.batch, *module.image_shape),
            device=torch.device(flags["device"]),
            dtype=getattr(torch, flags["dtype"]),
        )
        if flags.get("channels_last"):
            # The package is compiled for its example's strides, and prepare() gives it these.
            example = example.contiguous(memory_format=torch.channels_last)
        configs = {"max_autotune": self.option(request, "max_autotune", flags["device"])}
        exported = torch.export.export(module, (example,))
        # AOTInductor wants a path ending in .pt2, which the build's temporary file does not have
        # (and a package written to an open file did not load on torch 2.11): compile beside it.
        with tempfile.TemporaryDirectory() as scratch:
            package = Path(scratch) / "engine.pt2"
            aoti_compile_and_package(exported, package_path=str(package), inductor_configs=configs)
            shutil.copyfile(package, request.output)
        return {**flags, "export": "torch.export, fixed batch", "inductor_configs": configs}

    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner:
        from torch._inductor import aoti_load_package

        flags = sidecar["build_flags"]
        _configure(flags)
        cuda = flags["device"] == "cuda"
        if cuda:
            _import_before_aoti_load()
            _skip_cpu_isa_probe()
        # Loading from an open file crashes torch 2.11 (segfault in _load_aoti), so load by a
        # path that ends in .pt2, as AOTInductor wants: a link to the engine file.
        # run_single_threaded drops the package's own runner locking, which CUDA graph capture
        # cannot pass through.
        with tempfile.TemporaryDirectory() as scratch:
            link = Path(scratch) / "engine.pt2"
            link.symlink_to(Path(engine).resolve())
            model = aoti_load_package(str(link), run_single_threaded=cuda)
        return _TorchRunner(model, flags, cuda_graph=cuda)


def _on(stream):
    """A context that makes `stream` current; none (the CPU) leaves things as they are."""
    import torch

    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _skip_cpu_isa_probe() -> None:
    """Inductor probes the host CPU's vector extensions, once per process, by compiling and
    loading test programs, most of a first package load on a GPU machine. They tune CPU kernels,
    which a CUDA package has none of."""
    import torch._inductor.config

    torch._inductor.config.cpp.vec_isa_ok = False


def _import_before_aoti_load() -> None:
    """With torch 2.11 on a GPU, loading a CUDA package in a process that had not imported
    onnxruntime and cv2 crashed in _load_aoti, and loading in one that had did not (cause not
    found). Both imports are cheap and optional."""
    for name in ("onnxruntime", "cv2"):
        with contextlib.suppress(ImportError):
            __import__(name)
