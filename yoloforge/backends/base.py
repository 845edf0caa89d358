"""The interface every engine backend implements, and the engine sidecar that guards reuse."""

from __future__ import annotations

import json
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from yoloforge.device import cpu_fingerprint, fingerprint_id, on_accelerator
from yoloforge.device_lock import DEVICE_LOCK
from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file, write_json
from yoloforge.flops import onnx_flops_per_image
from yoloforge.images import letterboxes

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from yoloforge.detections import Boxes


# Every precision an engine may declare, and every kind of device it may run on (the "kind" of a
# device fingerprint).
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")
DEVICE_KINDS = ("cpu", "cuda")
OPTION_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class BuildOption:
    """One `--option KEY=VALUE` of an engine's build (config: engine_options)."""

    type: type  # bool, int, float or str
    help: str
    # The value when the option is not given: one value, or one per device kind the build runs on.
    default: Any

    def default_on(self, device_kind: str) -> Any:
        return self.default[device_kind] if isinstance(self.default, Mapping) else self.default

    def parse(self, name: str, text: str, where: str | os.PathLike | None = None) -> Any:
        """The option's text as the workflow passes it (booleans lower case) -> its typed value."""
        if self.type is bool:
            if text.lower() not in ("true", "false"):
                raise YoloforgeError(f"{name}={text!r}: expected true or false", where)
            return text.lower() == "true"
        try:
            return self.type(text)
        except ValueError:
            raise YoloforgeError(f"{name}={text!r}: expected {OPTION_TYPES[self.type]}", where) from None


@dataclass(frozen=True)
class EngineFacts:
    """What the workflow, the config schema, the table and the CLI know about an engine without
    importing its libraries. Declared once, as `facts` on the engine's Backend class."""

    precisions: tuple[str, ...]
    # Device kinds it runs on, the one it picks where several are present first.
    devices: tuple[str, ...]
    # The pyproject extras that install it, and envs/<family>.yaml, the conda env of its jobs.
    extras: tuple[str, ...]
    family: str
    # Whether its build times kernels on the device, so that builds must not overlap: True, or the
    # name of a boolean build option that switches it (a build that leaves it unset counts as on).
    times_kernels: bool | str = False
    # Whether such a build holds the device lock (device_lock) only while it runs kernels, not
    # while it compiles, so that its builds can overlap and still time alone.
    compiles_off_device: bool = False
    options: Mapping[str, BuildOption] = field(default_factory=dict)
    # Rows on these device kinds are compared with this engine at fp32 (the table's speedup).
    baseline_on: tuple[str, ...] = ()
    # The accuracy reference: engines with a rank are tried in rank order, the first that runs fp32.
    reference_rank: int | None = None

    def builds_time_kernels(self, options: Mapping[str, Any]) -> bool:
        """Whether a build with these config options (as given, unset ones absent) times kernels."""
        if isinstance(self.times_kernels, bool):
            return self.times_kernels
        return str(options.get(self.times_kernels, True)).lower() == "true"

    def builds_hold_device(self, options: Mapping[str, Any]) -> bool:
        """Whether such a build needs the device to itself from start to end."""
        return self.builds_time_kernels(options) and not self.compiles_off_device


@dataclass
class BuildRequest:
    """Everything a backend may need to build one engine file."""

    onnx: Path
    precision: str
    batch: int
    output: Path
    cfg: Path | None = None
    weights: Path | None = None
    calibration: list[Path] = field(default_factory=list)
    check_images: list[Path] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)  # engine-specific build options
    # A model the engine cannot run (model_unavailable_reason) is an error, not an engine marked
    # unavailable.
    strict: bool = False


class Runner(ABC):
    """A loaded engine: `infer` takes float32 images [N, 3, H, W] and returns `detections`.

    For model-scope timing, `prepare` puts a batch where the engine reads it (device memory on a
    GPU) and `run` computes on it without host transfers; `infer` is the whole round trip.
    """

    # How `preprocess` fits images to the input: letterboxed, or stretched where the model was
    # trained so (Darknet's [net] letter_box=0). Backend.load sets it from the model's metadata.
    letterbox: bool = True

    @abstractmethod
    def infer(self, images: np.ndarray) -> np.ndarray: ...

    def prepare(self, images: np.ndarray) -> Any:
        return images

    def run(self, prepared: Any) -> Any:
        return self.infer(prepared)

    def synchronize(self) -> None:
        """Wait for queued device work; host backends finish inside `infer`."""
        return None

    # End-to-end stages (yoloforge.timing.STAGES), around prepare (upload) and run (inference).
    # The defaults run on the host; a GPU runner may override preprocess to letterbox uint8
    # images on the device (its prepare then passes device tensors through), or download and
    # postprocess to run NMS on the device and copy back only the boxes. Pipelined timing calls
    # decode and preprocess from one worker thread and postprocess from another, beside the
    # other stages of neighbouring batches, so overrides of those three must be safe to run so.

    def decode(self, encoded: list[bytes]) -> list[np.ndarray]:
        """Encoded images (JPEG, PNG) -> RGB uint8 [H, W, 3] arrays."""
        from yoloforge.images import decode_rgb

        return [decode_rgb(data) for data in encoded]

    def preprocess(self, images: list[np.ndarray], width: int, height: int) -> Any:
        """RGB uint8 images -> the batch `prepare` takes: float32 [N, 3, H, W] in [0, 1],
        letterboxed or stretched as `letterbox` says."""
        from yoloforge.images import resize_to_input

        return np.stack([resize_to_input(image, width, height, self.letterbox) for image in images])

    def download(self, outputs: Any) -> Any:
        """What `run` returned -> what `postprocess` takes: detections as float32 on the host."""
        return np.asarray(outputs, dtype=np.float32)

    def postprocess(self, detections: Any) -> list[Boxes]:
        """Detections [N, boxes, 5 + classes] -> per image boxes after class-aware NMS."""
        from yoloforge.detections import decode

        return [decode(rows) for rows in detections]


class Backend(ABC):
    name: ClassVar[str]
    facts: ClassVar[EngineFacts]

    @property
    def precisions(self) -> tuple[str, ...]:
        return self.facts.precisions

    def option(self, request: BuildRequest, name: str, device_kind: str) -> Any:
        """A declared build option's value for this build on this kind of device."""
        declared = self.facts.options[name]
        text = request.options.get(name)
        return (
            declared.default_on(device_kind) if text is None else declared.parse(name, text, request.output)
        )

    def unavailable_reason(self, precision: str = "fp32") -> str | None:
        """None when this backend can run `precision` here, else why not (a missing library, say)."""
        return None

    def model_unavailable_reason(self, request: BuildRequest) -> str | None:
        """None when this backend can run the model of `request`, else why not: an engine that
        reads the Darknet cfg itself may not know one of its layers. The build then writes an
        empty engine whose sidecar says why (`unavailable`), and the row's timing and accuracy
        results are marked unavailable with that reason, as rows the device cannot run are."""
        return None

    @abstractmethod
    def library_versions(self) -> dict[str, str]: ...

    def device_fingerprint(self) -> dict[str, Any]:
        """What an engine is valid on; CPU engines: the CPU and the engine library's version."""
        return {**cpu_fingerprint(), **self.library_versions()}

    def _load_to_check(self, engine: Path, flags: dict[str, Any]) -> Runner:
        """The new engine as the build's output check runs it."""
        return self._load(engine, {"build_flags": flags})

    @abstractmethod
    def _build(self, request: BuildRequest) -> dict[str, Any]:
        """Write the engine to request.output; return build flags for the sidecar."""

    @abstractmethod
    def _load(self, engine: Path, sidecar: dict[str, Any]) -> Runner: ...

    def build(self, request: BuildRequest) -> dict[str, Any]:
        """Build the engine file and its sidecar; the file appears whole or not at all."""
        if request.precision not in self.precisions:
            raise YoloforgeError(
                f"{self.name} has no {request.precision} mode (it has {', '.join(self.precisions)})",
                request.onnx,
            )
        unknown = sorted(set(request.options) - set(self.facts.options))
        if unknown:
            known = ", ".join(self.facts.options) or "none"
            raise YoloforgeError(
                f"{self.name} has no build option {', '.join(unknown)} (it has {known})", request.output
            )
        reason = self.unavailable_reason(request.precision)
        if reason:
            raise YoloforgeError(f"{self.name} {request.precision} is unavailable: {reason}", request.output)
        reason = self.model_unavailable_reason(request)
        if reason and request.strict:
            raise YoloforgeError(f"strict: {self.name} cannot run this model: {reason}", request.output)
        # Engine and sidecar are both written in full before either is renamed into place, so a
        # failure (a full disk, say) leaves any previous pair as it was.
        with atomic_output(request.output) as partial:
            sidecar = {
                "model": onnx_metadata(request.onnx),
                "backend": self.name,
                "precision": request.precision,
                "batch": request.batch,
                "onnx_sha256": sha256_file(request.onnx),
                "device": self.device_fingerprint(),
                "libraries": self.library_versions(),
            }
            if reason:
                log.warning("%s: %s cannot run this model: %s", request.output, self.name, reason)
                partial.write_bytes(b"")
                sidecar["unavailable"] = reason
            else:
                sidecar |= self._built(replace(request, output=partial), sidecar["device"])
            write_json(sidecar_path(request.output), sidecar)
        return sidecar

    def _built(self, request: BuildRequest, device: dict[str, Any]) -> dict[str, Any]:
        """Build the engine into request.output and check it: the sidecar's build facts."""
        start, waited = time.perf_counter(), DEVICE_LOCK.waited_seconds
        flags = self._build(request)
        build_seconds = time.perf_counter() - start
        # On an accelerator the check runs the engine there: never beside another job's timing.
        with DEVICE_LOCK.held_if(on_accelerator(device)):
            check = output_check(request, lambda: self._load_to_check(request.output, flags))
        return {
            # Counted once here rather than by every timing round: shape inference of a 250 MB
            # graph takes a second.
            "flops_per_image": onnx_flops_per_image(request.onnx),
            "engine_sha256": sha256_file(request.output),
            "engine_bytes": request.output.stat().st_size,
            "build_flags": flags,
            "build_seconds": build_seconds,
            # Part of build_seconds: builds that overlap wait for each other's timing.
            "device_wait_seconds": round(DEVICE_LOCK.waited_seconds - waited, 3),
            "check": check,
        }

    def probe(self, precisions: list[str]) -> dict[str, Any]:
        """What this machine offers this engine: its fingerprint and id, and per precision
        None where it can run, else why not. Engines live in a folder named by the id."""
        reasons = {
            precision: (
                f"{self.name} has no {precision} mode"
                if precision not in self.precisions
                else self.unavailable_reason(precision)
            )
            for precision in precisions
        }
        fingerprint = None if all(reasons.values()) else self.device_fingerprint()
        return {
            "id": fingerprint and fingerprint_id(fingerprint),
            "fingerprint": fingerprint,
            "precisions": reasons,
        }

    def verify(self, engine: str | os.PathLike, onnx: str | os.PathLike | None = None) -> dict[str, Any]:
        """The sidecar of an engine it vouches for, built by this backend for this device; given
        `onnx`, also refuse one built from another ONNX file. Cheap: jobs call it before they wait
        for the device, so that a wrong engine fails at once."""
        engine = Path(engine)
        sidecar = read_sidecar(engine)
        if sidecar.get("backend") != self.name:
            raise YoloforgeError(f"engine was built by {sidecar.get('backend')}, not {self.name}", engine)
        if sidecar.get("device") != self.device_fingerprint():
            raise YoloforgeError(
                f"engine was built for another device or library version ({sidecar.get('device')});"
                " rebuild it here (in the workflow: snakemake --forcerun device)",
                engine,
            )
        if sha256_file(engine) != sidecar.get("engine_sha256"):
            raise YoloforgeError("engine file does not match the checksum in its sidecar", engine)
        if onnx is not None and sha256_file(onnx) != sidecar.get("onnx_sha256"):
            raise YoloforgeError(
                f"ONNX file changed since the engine {engine} was built from it; rebuild the engine", onnx
            )
        return sidecar

    def load(
        self,
        engine: str | os.PathLike,
        onnx: str | os.PathLike | None = None,
        verified: dict[str, Any] | None = None,
    ) -> Runner:
        """Load an engine verify() vouches for (`verified`: the sidecar it returned for it)."""
        engine = Path(engine)
        sidecar = verified if verified is not None else self.verify(engine, onnx)
        runner = self._load(engine, sidecar)
        runner.letterbox = letterboxes(sidecar.get("model", {}), engine)
        return runner


# Images of the build's output check: a check that the engine works, not its accuracy (the
# accuracy job scores that); each costs a run of ONNX Runtime FP32 at the build, seconds an image
# for the large models on a small CPU, while a GPU build holds the GPU. An engine of a larger
# fixed batch runs a whole batch, of which these are compared.
CHECK_IMAGES = 1


def engine_stem(request: BuildRequest) -> str:
    """The engine's file name without ".engine": of the final engine, not the temporary file the
    build writes to."""
    return request.output.name.split(".engine")[0].lstrip(".")


def calibration_batches(request: BuildRequest, batch: int = 1) -> list[np.ndarray]:
    """The request's calibration images, preprocessed for the model, in batches of `batch`."""
    from yoloforge.images import preprocessed_batches

    if not request.calibration:
        raise YoloforgeError("this build needs calibration images (--calibration DIR)", request.output)
    metadata = onnx_metadata(request.onnx)
    width, height = int(metadata["width"]), int(metadata["height"])
    count = -(-len(request.calibration) // batch)
    return preprocessed_batches(
        request.calibration, width, height, batch, count, letterboxes(metadata, request.onnx)
    )


def output_check(request: BuildRequest, load: Callable[[], Runner]) -> dict[str, Any]:
    """The new engine against ONNX Runtime FP32 on the same ONNX file, on a few images."""
    from yoloforge.detections import agreement, decode

    if not request.check_images:
        return {"skipped": "no images to check on"}
    try:
        import onnxruntime
    except ImportError:
        return {"skipped": "onnxruntime, the reference, is not installed"}
    # Whole batches of the engine's own (possibly fixed) batch size, filled by cycling through
    # the images, for CHECK_IMAGES images.
    count = -(-CHECK_IMAGES // request.batch) * request.batch
    batches = calibration_batches(replace(request, calibration=request.check_images[:count]), request.batch)
    images = np.concatenate(batches)[:CHECK_IMAGES]
    with DEVICE_LOCK.released():  # the CPU's work: builds alongside may time meanwhile
        session = onnxruntime.InferenceSession(os.fspath(request.onnx), providers=["CPUExecutionProvider"])
        reference = session.run(None, {"images": images})[0]
    runner = load()
    detections = np.concatenate([np.asarray(runner.infer(batch), dtype=np.float32) for batch in batches])
    detections = detections[:CHECK_IMAGES]
    runner.synchronize()
    finite = np.isfinite(detections)
    boxes_error = np.abs(np.where(finite, detections, 0)[..., :5] - reference[..., :5]).max()
    scores = detections[..., 5:] * detections[..., 4:5]
    scores_error = np.abs(np.nan_to_num(scores) - reference[..., 5:] * reference[..., 4:5]).max()
    return {
        "images": len(detections),
        "max_abs_error_boxes": float(boxes_error),
        "max_abs_error_scores": float(scores_error),
        "non_finite_values": int((~finite).sum()),
        **agreement([decode(r) for r in reference], [decode(np.nan_to_num(d)) for d in detections]),
    }


def onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The converter's record of what the ONNX file was made from (cfg, size, weights source)."""
    import onnx

    model = onnx.load(os.fspath(path), load_external_data=False)
    return {prop.key: prop.value for prop in model.metadata_props}


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}.json")


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    path = sidecar_path(engine)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise YoloforgeError("engine has no sidecar JSON; build it with `yoloforge build`", engine) from None
    except json.JSONDecodeError as error:
        raise YoloforgeError(f"engine sidecar is not valid JSON: {error.msg}", path) from None
