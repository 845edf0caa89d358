"""The fp8 precision of cudnn-fused: weight quantization and the calibration cache on any machine;
the FP8 kernel and the engine where a GPU with FP8 tensor cores and Triton are present (CI's
machines have none, so those tests skip there)."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import MODELS, real_photo_batch
from tests.reference import onnx_detections
from yoloforge.accuracy import detect
from yoloforge.backends import BuildRequest, Runner, get_backend
from yoloforge.backends.base import calibration_batches
from yoloforge.backends.calibration import activation_ranges, cache_path, cached_activation_ranges
from yoloforge.backends.torch_graph import ConvChain, chain_in_torch, onnx_module
from yoloforge.backends.triton_chain import (
    FP8_MAX,
    configs_for,
    emulated_chain,
    emulated_fuser,
    narrow_configs_for,
    quantize_weights,
    unsupported,
)
from yoloforge.darknet.convert import convert
from yoloforge.datasets import write_substitute_set
from yoloforge.detections import agreement, decode, mean_average_precision
from yoloforge.images import generated_scene, image_paths, photo_mosaic

torch = pytest.importorskip("torch")


def _chain(kernel=3, stride=1, activation="relu", slope=0.1, residual=False, dilation=1):
    pad = kernel // 2 * dilation
    return ConvChain(
        "c", (stride, stride), (pad, pad), (pad, pad), (dilation, dilation), activation, slope, residual
    )


def test_weights_quantize_per_output_channel_in_the_kernels_layout():
    generator = torch.Generator().manual_seed(0)
    kernel = torch.randn(6, 32, 3, 3, generator=generator)
    kernel[2] *= 1e-3  # a channel far smaller than the rest keeps its own precision
    quantized, scale = quantize_weights(kernel)
    assert quantized.dtype == torch.float8_e4m3fn and quantized.shape == (6, 3, 3, 32)
    assert quantized.is_contiguous()
    restored = quantized.float().permute(0, 3, 1, 2) * scale[:, None, None, None]
    for channel in range(6):
        largest = kernel[channel].abs().max()
        assert float(quantized[channel].float().abs().max()) == FP8_MAX
        # E4M3 rounds to 3 mantissa bits: half a step is 1/16 of the value.
        error = (restored[channel] - kernel[channel]).abs()
        assert bool((error <= kernel[channel].abs() / 16 + largest * 2**-9 / FP8_MAX * 448).all())


@pytest.mark.parametrize(
    ("chain", "channels", "outputs", "why"),
    [
        (_chain(), 64, 128, None),
        (_chain(kernel=1, activation="mish"), 32, 8, None),
        (_chain(dilation=2), 64, 64, "dilated"),
        (_chain(), 48, 64, "48 input channels"),
        (_chain(), 64, 12, "12 output channels"),
        (_chain(activation="gelu"), 64, 64, "activation gelu"),
    ],
)
def test_chains_the_fp8_kernel_takes(chain, channels, outputs, why):
    reason = unsupported(chain, channels, outputs)
    assert (reason is None) if why is None else why in reason
    if why is None:
        assert configs_for(channels, outputs)
        assert all(channels % config[2] == 0 for config in configs_for(channels, outputs))


@pytest.mark.parametrize(
    ("chain", "channels", "narrow"),
    [
        (_chain(), 8, True),
        (_chain(kernel=1), 24, True),
        (_chain(), 32, False),  # wide enough for cuDNN's tiles
        (_chain(dilation=2), 8, False),
        (_chain(activation="gelu"), 8, False),
    ],
)
def test_narrow_chains_get_the_fp16_kernel(chain, channels, narrow):
    assert bool(narrow_configs_for(chain, channels, 32)) == narrow


@pytest.fixture(scope="module")
def tiny_onnx(synthetic_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    path = folder / "yolov3-tiny-96.onnx"
    convert(MODELS / "yolov3-tiny.cfg", synthetic_weights(MODELS / "yolov3-tiny.cfg"), path, (96, 96))
    return path


def _images(folder, seeds, mosaic=False):
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        image = photo_mosaic(seed, 160, 120) if mosaic else generated_scene(seed, 160, 120)
        Image.fromarray(image).save(folder / f"{seed:03d}.png")
    return sorted(folder.iterdir())


def test_calibration_cache_is_reused_and_measured_again_when_its_inputs_change(tiny_onnx, tmp_path):
    calibration = _images(tmp_path / "calibration", range(3))
    output = tmp_path / "engines" / "yolov3-tiny-96-fp8-b4.engine"
    output.parent.mkdir()
    request = BuildRequest(onnx=tiny_onnx, precision="fp8", batch=4, output=output, calibration=calibration)
    assert cache_path(request).name == "yolov3-tiny-96-fp8.calibration.json"

    ranges, record = cached_activation_ranges(request, "cpu")
    assert record["calibration"] == "measured on 3 images"
    assert len(ranges) == 13 and all(value > 0 for value in ranges.values())  # every convolution
    # The first convolution reads the images themselves.
    first = min(ranges, key=lambda name: int("".join(filter(str.isdigit, name)) or 0))
    images = np.concatenate(calibration_batches(request, 8))
    assert ranges[first] == pytest.approx(float(np.abs(images).max()))

    # Another batch size's build reuses it; the file is the cache's own, not an engine output.
    other_batch = output.with_name("yolov3-tiny-96-fp8-b1.engine")
    again, record = cached_activation_ranges(
        BuildRequest(onnx=tiny_onnx, precision="fp8", batch=1, output=other_batch, calibration=calibration),
        "cpu",
    )
    assert record["calibration"] == "cache reused" and again == ranges
    assert sorted(path.name for path in output.parent.iterdir()) == ["yolov3-tiny-96-fp8.calibration.json"]

    other_images = _images(tmp_path / "other", range(3, 5), mosaic=True)
    other, record = cached_activation_ranges(
        BuildRequest(onnx=tiny_onnx, precision="fp8", batch=4, output=output, calibration=other_images), "cpu"
    )
    assert record["calibration"] == "measured on 2 images" and other != ranges
    cached = json.loads(cache_path(request).read_text())
    assert cached["key"]["images"] == ["003.png", "004.png"] and cached["ranges"] == other

    cache_path(request).write_text("{not json")
    _, record = cached_activation_ranges(request, "cpu")
    assert record["calibration"] == "measured on 3 images"


# Runs in a process of its own: Triton picks the interpreter when a kernel is first made, and the
# engine's kernel must stay compiled for a GPU where one is present.
INTERPRETED_KERNEL = """
import json, sys
import torch
from yoloforge.backends.triton_chain import (
    activation_scale, configs_for, narrow_configs_for, quantize_weights, run_chain
)
from yoloforge.backends.torch_graph import ConvChain, chain_in_torch

generator = torch.Generator().manual_seed(0)

def exactly_fp8(*shape):
    values = (torch.randn(*shape, generator=generator) * 60).to(torch.float8_e4m3fn).float()
    values.view(shape[0], -1)[:, 0] = 448.0  # every scale a power of two, so FP8 loses nothing
    return values

errors, untouched = [], []
for case in json.loads(sys.argv[1]):
    kernel_size, stride, activation, slope, residual, batch, channels, outputs, size = case
    pad = kernel_size // 2
    chain = ConvChain("c", (stride, stride), (pad, pad), (pad, pad), (1, 1), activation, slope, residual)
    x = (exactly_fp8(batch, channels, size, size) * 2**-9).half()
    x = x.contiguous(memory_format=torch.channels_last)
    kernel = (exactly_fp8(outputs, channels, kernel_size, kernel_size) * 2**-7).half()
    kernel = kernel.contiguous(memory_format=torch.channels_last)
    bias = (torch.randn(outputs, generator=generator) * 0.1).half()
    expected = chain_in_torch(chain)(x.float(), kernel.float(), bias.float())
    extra = None
    if residual:
        extra = torch.randn(expected.shape, generator=generator).half()
        extra = extra.contiguous(memory_format=torch.channels_last)
        expected = expected + extra.float()
    scale = activation_scale(float(x.abs().max()))
    weights, weight_scale = quantize_weights(kernel)
    dequant = (weight_scale * scale).float()
    runs = [(config, weights, dequant, scale) for config in configs_for(channels, outputs)]
    # The same chain in FP16, where it is narrow.
    layout = kernel.permute(0, 2, 3, 1)
    runs += [(config, layout, None, None) for config in narrow_configs_for(chain, channels, outputs)]
    for config, operands, dequant, input_scale in runs:
        y = torch.full(expected.shape, float("nan"), dtype=torch.float16)
        y = y.contiguous(memory_format=torch.channels_last)
        run_chain(chain, config, x, operands, dequant, input_scale, bias, extra, y, compile_only=True)
        untouched.append(bool(y.isnan().all()))
        run_chain(chain, config, x, operands, dequant, input_scale, bias, extra, y)
        errors.append(float((y.float() - expected).abs().max() / expected.abs().max()))
print(json.dumps({"errors": errors, "untouched": untouched}))
"""


def test_the_kernel_in_tritons_interpreter():
    """Addressing, padding, strides, masks and the epilogue of the kernel, run by Triton's CPU
    interpreter on every tile shape, in FP8 and (narrow chains) in FP16, with data FP8
    represents exactly: it must equal the chain, and compiling it alone must write nothing."""
    pytest.importorskip("triton")
    cases = [
        (3, 1, "relu", 0.1, True, 3, 64, 72, 9),  # outputs and pixels no multiple of a tile
        (3, 2, "relu", 0.0, False, 2, 32, 64, 11),  # stride 2 on an odd size: padding on one side
        (1, 1, "mish", 0.0, False, 1, 128, 40, 5),
        (3, 1, "swish", 0.0, True, 1, 64, 64, 6),
        (1, 1, "sigmoid", 0.0, False, 2, 96, 16, 4),
        (3, 1, "tanh", 0.0, False, 1, 32, 8, 3),
        # Narrow: a model's first convolution, its 3 channels padded to 8 or not.
        (3, 1, "relu", 0.1, False, 2, 8, 32, 10),
        (3, 2, "mish", 0.0, True, 1, 3, 40, 9),
        (1, 1, "relu", 0.1, False, 1, 16, 24, 5),
    ]
    result = subprocess.run(
        [sys.executable, "-c", INTERPRETED_KERNEL, json.dumps(cases)],
        capture_output=True,
        text=True,
        env={**os.environ, "TRITON_INTERPRET": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    errors = outcome["errors"]
    assert all(outcome["untouched"])  # compile_only runs nothing
    assert len(errors) == sum(
        len(configs_for(case[6], case[7]))
        + len(narrow_configs_for(_chain(kernel=case[0], stride=case[1]), case[6], case[7]))
        for case in cases
    )
    # Only the FP16 rounding of the output remains.
    assert max(errors) < 2e-3, errors


class _ModuleRunner(Runner):
    def __init__(self, module) -> None:
        self.module = module

    def infer(self, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(images)).numpy()


def fp8_agreement(weights, folder, size: int, images: int) -> tuple[float, int]:
    """(agreement mAP@0.5 of yolov3-tiny with every chain the fp8 engine may put in FP8 emulated,
    against the same model in FP32, reference boxes), as the workflow scores engines: the workflow's
    substitute evaluation images, its calibration scenes for the activation ranges."""
    onnx_path = folder / f"yolov3-tiny-{size}.onnx"
    convert(MODELS / "yolov3-tiny.cfg", weights, onnx_path, (size, size))
    for name, calibration in (("calibration", True), ("evaluation", False)):
        (folder / name).mkdir()
        write_substitute_set(folder / name, 32 if calibration else images, calibration)
    request = BuildRequest(
        onnx=onnx_path,
        precision="fp8",
        batch=1,
        output=folder / "unused.engine",
        calibration=image_paths(folder / "calibration"),
    )
    fuse = emulated_fuser(activation_ranges(request, "cpu"))
    paths = image_paths(folder / "evaluation")
    exact = detect(_ModuleRunner(onnx_module(onnx_path)), paths, size, size, 4)
    emulated = detect(_ModuleRunner(onnx_module(onnx_path, fuse=fuse)), paths, size, size, 4)
    truth = exact.deployed()
    return mean_average_precision(truth, emulated.for_agreement), sum(len(boxes) for boxes in truth)


@pytest.mark.slow
def test_fp8_keeps_yolov3_tiny_detections(tiny_weights, tmp_path):
    """FP8's worst case in the fp8 engine (every eligible chain in FP8), emulated on the CPU with
    the kernel's arithmetic, on the official weights."""
    score, reference_boxes = fp8_agreement(tiny_weights, tmp_path, 416, 24)
    logging.getLogger(__name__).info("emulated fp8: agreement %.4f on %d boxes", score, reference_boxes)
    assert reference_boxes >= 50 and score >= 0.95, (score, reference_boxes)


fp8_reason = get_backend("cudnn-fused").unavailable_reason("fp8")
needs_fp8 = pytest.mark.skipif(fp8_reason is not None, reason=f"no FP8 engine here: {fp8_reason}")


@needs_fp8
@pytest.mark.parametrize(
    ("chain", "batch", "channels", "outputs", "size"),
    [
        (_chain(residual=True), 3, 64, 128, 19),
        (_chain(stride=2), 2, 32, 64, 27),
        (_chain(kernel=1, activation="mish"), 1, 128, 40, 13),
        (_chain(activation="swish"), 2, 64, 64, 10),
        (_chain(activation="sigmoid", residual=True), 1, 96, 72, 7),
        (_chain(activation="tanh"), 1, 32, 32, 5),
        (_chain(activation="relu", slope=0.0), 4, 256, 256, 8),
    ],
)
def test_the_fp8_kernel_computes_the_chain(chain, batch, channels, outputs, size):
    from yoloforge.backends.cudnn_fused import FP8_TOLERANCE
    from yoloforge.backends.triton_chain import activation_scale, run_chain

    generator = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(batch, channels, size, size, device="cuda", generator=generator).abs().half()
    kernel_size = 1 if chain.pre_padding == (0, 0) else 3
    kernel = torch.randn(outputs, channels, kernel_size, kernel_size, device="cuda", generator=generator)
    kernel = (kernel / (channels * kernel_size**2) ** 0.5).half()
    bias = (torch.randn(outputs, device="cuda", generator=generator) * 0.1).half()
    x, kernel = (t.contiguous(memory_format=torch.channels_last) for t in (x, kernel))
    expected = chain_in_torch(chain)(x, kernel, bias)
    residual = (
        torch.randn_like(expected).contiguous(memory_format=torch.channels_last) if chain.residual else None
    )
    if residual is not None:
        expected = expected + residual
    quantized, weight_scale = quantize_weights(kernel)
    scale = activation_scale(float(x.abs().max()))
    emulated = emulated_chain(chain, scale)(x, kernel, bias, residual).float()
    for config in configs_for(channels, outputs):
        y = torch.full_like(expected, float("nan")).contiguous(memory_format=torch.channels_last)
        run_chain(chain, config, x, quantized, (weight_scale * scale).float(), scale, bias, residual, y)
        error = float(
            (y.float() - expected.float()).pow(2).mean().sqrt() / expected.float().pow(2).mean().sqrt()
        )
        assert torch.isfinite(y).all() and error < FP8_TOLERANCE, (config, error)
        # Against the same arithmetic: only FP16 output rounding and summation order differ.
        difference = (y.float() - emulated).pow(2).mean().sqrt() / emulated.pow(2).mean().sqrt()
        assert float(difference) < 5e-3, (config, float(difference))


@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("triton") is None,
    reason="needs a GPU and Triton",
)
@pytest.mark.parametrize(
    ("chain", "channels", "outputs", "dtype"),
    [
        (_chain(), 8, 32, torch.float16),
        (_chain(stride=2, activation="mish", residual=True), 3, 32, torch.float16),
        (_chain(kernel=1, activation="swish"), 16, 24, torch.bfloat16),
    ],
)
def test_the_narrow_kernel_computes_the_chain_on_every_tile_shape(chain, channels, outputs, dtype):
    from yoloforge.backends.triton_chain import run_chain

    generator = torch.Generator(device="cuda").manual_seed(2)
    kernel_size = 1 if chain.pre_padding == (0, 0) else 3
    x = torch.randn(2, channels, 45, 37, device="cuda", generator=generator).to(dtype)
    kernel = torch.randn(outputs, channels, kernel_size, kernel_size, device="cuda", generator=generator)
    kernel = (kernel / (channels * kernel_size**2) ** 0.5).to(dtype)
    bias = torch.randn(outputs, device="cuda", generator=generator).to(dtype)
    x, kernel = (t.contiguous(memory_format=torch.channels_last) for t in (x, kernel))
    expected = chain_in_torch(chain)(x.float(), kernel.float(), bias.float())
    residual = None
    if chain.residual:
        residual = torch.randn_like(expected).to(dtype).contiguous(memory_format=torch.channels_last)
        expected = expected + residual.float()
    configs = narrow_configs_for(chain, channels, outputs)
    assert configs
    for config in configs:
        y = torch.full(expected.shape, float("nan"), device="cuda", dtype=dtype)
        y = y.contiguous(memory_format=torch.channels_last)
        run_chain(chain, config, x, kernel.permute(0, 2, 3, 1), None, None, bias, residual, y)
        torch.testing.assert_close(y.float(), expected, atol=0.03, rtol=0.02, msg=str(config))


@needs_fp8
def test_fp8_engine_records_its_choices_reuses_its_calibration_and_detects(tiny_weights, tmp_path):
    onnx_path = tmp_path / "tiny-320.onnx"
    convert(MODELS / "yolov3-tiny.cfg", tiny_weights, onnx_path, (320, 320))
    calibration = _images(tmp_path / "calibration", range(8), mosaic=True)
    backend = get_backend("cudnn-fused")
    built = {}
    for precision, batch in (("fp16", 3), ("fp8", 3), ("fp8", 2)):
        output = tmp_path / "engines" / f"tiny-320-{precision}-b{batch}.engine"
        output.parent.mkdir(exist_ok=True)
        request = BuildRequest(onnx_path, precision, batch, output, calibration=calibration)
        built[precision, batch] = backend.build(request)["build_flags"]
    # The fp8 build reuses the fp16 build's timings of the same shapes (the timing cache), and the
    # calibration of the first fp8 build.
    assert built["fp16", 3]["chains_timed_from_cache"] == 0
    assert built["fp8", 3]["chains_timed_from_cache"] == built["fp8", 3]["distinct_chains"] > 0
    assert built["fp8", 2]["chains_timed_from_cache"] == 0
    assert built["fp8", 3]["calibration"] == "measured on 8 images"
    assert built["fp8", 2]["calibration"] == "cache reused"
    with zipfile.ZipFile(tmp_path / "engines" / "tiny-320-fp8-b3.engine") as archive:
        plans = json.loads(archive.read("plans.json"))
    # Every chain says what became of FP8: used, or why not.
    assert all(
        "used" in plan["fp8"] and (plan["fp8"]["used"] or plan["fp8"]["why"]) for plan in plans.values()
    )
    assert built["fp8", 3]["chains_in_fp8"] == sum(plan["plan"] == "fp8" for plan in plans.values())
    assert any(plan["fp8"].get("why") == "feeds a detection head" for plan in plans.values())

    images = real_photo_batch(320, 320)
    runner = backend.load(tmp_path / "engines" / "tiny-320-fp8-b3.engine")
    detections = runner.infer(images)
    assert np.isfinite(detections).all()
    reference = onnx_detections(onnx_path, images)
    scores = agreement([decode(r) for r in reference], [decode(d) for d in detections])
    assert scores["reference_boxes"] > 0 and scores["recall"] > 0.8 and scores["precision"] > 0.8, scores
