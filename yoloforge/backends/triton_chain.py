"""A ConvChain as one implicit-GEMM convolution written in Triton, in FP8 or in FP16/BF16.

FP8, on Hopper's FP8 tensor cores: cuDNN's FP8 convolutions need their input already in FP8,
which costs a pass over each activation per chain, and on YOLO's shapes they gain little over
its FP16 kernels (docs/engines.md). This kernel reads the chain's FP16 input (channels-last) and
quantizes each tile in registers with the activation scale calibration measured, multiplies it
with the per-output-channel FP8 weights on the tensor cores with FP32 accumulation, and applies
the epilogue in FP32: dequantization, bias, activation and the residual addition, writing FP16.
So the graph around the chains (routes, upsampling, heads) stays in FP16 and only the
multiplications run in 8 bits.

FP16/BF16, for the narrow chains: a model's first convolution reads 3 colour channels (padded
to 8), which cuDNN's kernels tile for wide inputs. Here one tile of the reduction spans several
kernel taps, so no multiply is spent on padding beyond the last tap.
"""

from __future__ import annotations

import functools
from typing import Any

from yoloforge.backends.torch_graph import ConvChain, chain_in_torch

# E4M3's largest finite value: a scale maps the calibrated range onto it.
FP8_MAX = 448.0
# Tile shapes timed per chain: (block_m pixels, block_n outputs, block_k channels, warps, stages).
# Each is compiled per chain kind, so only shapes that won on some chain of YOLOv3 are kept.
FP8_CONFIGS = (
    (128, 128, 128, 8, 3),
    (128, 256, 64, 8, 3),
    (128, 256, 128, 8, 3),
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (64, 64, 64, 4, 4),
    (128, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
)
# The narrow chains' tile shapes: a few channels times the taps make a short reduction, so the
# tiles are wide in pixels and short in the reduction.
NARROW_CONFIGS = (
    (64, 32, 16, 4, 3),
    (128, 32, 16, 4, 3),
    (128, 32, 32, 4, 3),
    (256, 32, 32, 8, 3),
    (128, 64, 32, 4, 3),
    (256, 64, 16, 8, 3),
)
# Chains with fewer input channels than this are narrow: the FP16/BF16 kernel is one more
# candidate for them.
NARROW_CHANNELS = 32
# The activations the epilogue computes, by ConvChain.activation.
ACTIVATIONS = {None: 0, "relu": 1, "sigmoid": 2, "swish": 3, "mish": 4, "tanh": 5}


def _outside_the_kernel(chain: ConvChain) -> str | None:
    """Why the kernel cannot compute `chain` in any precision, or None."""
    if chain.dilation != (1, 1):
        return "dilated"
    if chain.activation not in ACTIVATIONS:
        return f"activation {chain.activation}"
    return None


def unsupported(chain: ConvChain, channels: int, outputs: int) -> str | None:
    """Why this kernel cannot run `chain` on `channels` inputs in FP8, or None."""
    reason = _outside_the_kernel(chain)
    if reason:
        return reason
    if channels % 32:
        return f"{channels} input channels (FP8 tiles take multiples of 32)"
    if outputs % 8:
        return f"{outputs} output channels"
    return None


def why_not_fp8(chain: ConvChain, channels: int, outputs: int) -> str | None:
    """Why the fp8 engine keeps `chain` in FP16 whatever its timing, or None."""
    # Darknet's linear convolutions are the ones feeding the detection heads: their raw box and
    # score logits stay in FP16.
    if chain.activation is None:
        return "feeds a detection head"
    return unsupported(chain, channels, outputs)


def configs_for(channels: int, outputs: int) -> list[tuple[int, int, int, int, int]]:
    """The FP8 tile shapes that fit these channel counts."""
    return [config for config in FP8_CONFIGS if channels % config[2] == 0 and config[1] <= max(64, outputs)]


def narrow_configs_for(chain: ConvChain, channels: int, outputs: int) -> list[tuple[int, int, int, int, int]]:
    """The FP16/BF16 kernel's tile shapes for a narrow chain; none for the others."""
    if channels >= NARROW_CHANNELS or _outside_the_kernel(chain):
        return []
    return [config for config in NARROW_CONFIGS if config[1] <= max(32, outputs)]


def quantize_weights(kernel) -> tuple[Any, Any]:
    """A [K, C, kh, kw] kernel -> (FP8 E4M3 weights laid out [K][kh][kw][C], FP32 scale per K)."""
    import torch

    weights = kernel.float()
    scale = weights.abs().amax(dim=(1, 2, 3)).clamp_min(1e-12) / FP8_MAX
    quantized = (weights / scale[:, None, None, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return quantized.permute(0, 2, 3, 1).contiguous(), scale


def activation_scale(amax: float) -> float:
    """The per-tensor activation scale for a calibrated range: amax maps onto FP8_MAX."""
    return max(float(amax), 1e-12) / FP8_MAX


def emulated_chain(chain: ConvChain, input_scale: float):
    """The chain as the FP8 kernel computes it, in PyTorch on any device and in FP32: input and
    weights rounded through E4M3 with their scales, the rest exact. The kernel's tests compare
    against it, and it measures what FP8 does to a model's detections where no GPU has FP8."""
    import torch

    exact = chain_in_torch(chain)

    def run(x, kernel, bias, residual=None):
        rounded = (x.float() / input_scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        weights, weight_scale = quantize_weights(kernel)
        weights = weights.float().permute(0, 3, 1, 2) * weight_scale[:, None, None, None]
        y = exact(
            rounded.float() * input_scale,
            weights,
            bias.float(),
            None if residual is None else residual.float(),
        )
        return y.to(x.dtype)

    return run


def emulated_fuser(ranges: dict[str, float]):
    """A torch_graph Fuser that runs every chain the fp8 engine may put in FP8 as emulated_chain,
    with its calibrated range, and the others exactly: FP8's worst case for a model."""

    def fuse(chain: ConvChain):
        exact = chain_in_torch(chain)
        emulated = (
            emulated_chain(chain, activation_scale(ranges[chain.name])) if chain.name in ranges else exact
        )

        def run(x, kernel, bias, residual=None):
            eligible = why_not_fp8(chain, x.shape[1], kernel.shape[0]) is None
            return (emulated if eligible else exact)(x, kernel, bias, residual)

        return run

    return fuse


def run_chain(
    chain: ConvChain,
    config,
    x,
    weights,
    dequant,
    input_scale: float | None,
    bias,
    residual,
    y,
    compile_only: bool = False,
) -> None:
    """y (channels-last) = the chain of x (channels-last, FP16 or BF16), with `weights` laid out
    [K][kh][kw][C]. In FP8 they come from quantize_weights and dequant[k] = activation scale *
    weight scale of output k; in x's own type (input_scale and dequant None) they are
    kernel.permute(0, 2, 3, 1) of the chain's channels-last kernel. `compile_only`: compile the
    kernel for these arguments, run nothing."""
    import triton

    batch, channels, height, width = x.shape
    _, outputs, out_h, out_w = y.shape
    block_m, block_n, block_k, warps, stages = config
    pixels = batch * out_h * out_w
    grid = (triton.cdiv(pixels, block_m) * triton.cdiv(outputs, block_n),)
    kernel = _kernel()
    (functools.partial(kernel.warmup, grid=grid) if compile_only else kernel[grid])(
        x,
        weights,
        bias if dequant is None else dequant,
        bias,
        residual if residual is not None else y,
        y,
        1.0 if input_scale is None else 1.0 / input_scale,
        pixels,
        height,
        width,
        channels,
        out_h,
        out_w,
        outputs,
        reduction=weights.shape[1] * weights.shape[2] * channels,
        stride_h=chain.stride[0],
        stride_w=chain.stride[1],
        pad_top=chain.pre_padding[0],
        pad_left=chain.pre_padding[1],
        kernel_h=weights.shape[1],
        kernel_w=weights.shape[2],
        activation=ACTIVATIONS[chain.activation],
        negative_slope=float(chain.negative_slope),
        has_residual=residual is not None,
        quantized=input_scale is not None,
        spanned_channels=channels if channels % block_k else 0,
        block_m=block_m,
        block_n=block_n,
        block_k=block_k,
        group_m=8,
        num_warps=warps,
        num_stages=stages,
    )


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # The image and batch sizes are not specialized on (Triton would compile anew for each
    # divisibility of them), so one compiled kernel per chain kind and tile shape serves every
    # size and batch of a model in a run, through the on-disk cache.
    @triton.jit(do_not_specialize=["pixels", "height", "width", "out_h", "out_w"])
    def chain_kernel(
        x,
        weights,
        dequant,
        bias,
        residual,
        y,
        input_scale,
        pixels,
        height,
        width,
        channels,
        out_h,
        out_w,
        outputs,
        # The trip count as a constant: Triton's CPU interpreter, which the tests run the kernel
        # on, takes no loop bound that is a runtime value.
        reduction: tl.constexpr,
        stride_h: tl.constexpr,
        stride_w: tl.constexpr,
        pad_top: tl.constexpr,
        pad_left: tl.constexpr,
        kernel_h: tl.constexpr,
        kernel_w: tl.constexpr,
        activation: tl.constexpr,
        negative_slope: tl.constexpr,
        has_residual: tl.constexpr,
        # FP8: quantize the input tile, dequantize the product.
        quantized: tl.constexpr,
        # Where a reduction tile spans several taps (fewer channels than block_k), the channel
        # count as a constant, so that each tap's channels load as one vector; else 0.
        spanned_channels: tl.constexpr,
        block_m: tl.constexpr,
        block_n: tl.constexpr,
        block_k: tl.constexpr,
        group_m: tl.constexpr,
    ):
        # Tiles in groups of group_m rows, so that neighbouring programs share weights in L2.
        program = tl.program_id(0)
        tiles_m = tl.cdiv(pixels, block_m)
        tiles_n = tl.cdiv(outputs, block_n)
        per_group = group_m * tiles_n
        first_m = (program // per_group) * group_m
        rows_in_group = tl.minimum(tiles_m - first_m, group_m)
        tile_m = first_m + (program % per_group) % rows_in_group
        tile_n = (program % per_group) // rows_in_group

        rows = tile_m * block_m + tl.arange(0, block_m)
        cols = tile_n * block_n + tl.arange(0, block_n)
        lanes = tl.arange(0, block_k)
        plane = out_h * out_w
        image = rows // plane
        top = ((rows % plane) // out_w) * stride_h - pad_top
        left = (rows % out_w) * stride_w - pad_left
        row_ok = rows < pixels
        col_ok = cols < outputs

        accumulator = tl.zeros((block_m, block_n), dtype=tl.float32)
        for k in range(0, reduction, block_k):
            k = tl.multiple_of(k, block_k)
            if spanned_channels:
                lane = k + lanes
                tap = lane // spanned_channels
                ih = top[:, None] + (tap // kernel_w)[None, :]
                iw = left[:, None] + (tap % kernel_w)[None, :]
                inside = row_ok[:, None] & (lane < reduction)[None, :]
                inside = inside & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
                pixel = ((image[:, None] * height + ih) * width + iw) * spanned_channels
                pixel += (lane % spanned_channels)[None, :]
                a = tl.load(x + pixel, mask=inside, other=0.0)
                b_ok = col_ok[None, :] & (lane < reduction)[:, None]
            else:
                tap = k // channels
                channel = tl.multiple_of(k - tap * channels, block_k)
                ih = top + tap // kernel_w
                iw = left + tap % kernel_w
                inside = row_ok & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
                pixel = tl.multiple_of(((image * height + ih) * width + iw) * channels + channel, 16)
                a = tl.load(x + pixel[:, None] + lanes[None, :], mask=inside[:, None], other=0.0)
                b_ok = col_ok[None, :]
            if quantized:
                a = a.to(tl.float32) * input_scale
                a = tl.minimum(tl.maximum(a, -448.0), 448.0).to(tl.float8e4nv)
            b = tl.load(weights + cols[None, :] * reduction + (k + lanes)[:, None], mask=b_ok, other=0.0)
            accumulator = tl.dot(a, b, accumulator)

        if quantized:
            accumulator = accumulator * tl.load(dequant + cols, mask=col_ok, other=0.0)[None, :]
        v = accumulator + tl.load(bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if activation == 1:
            v = tl.where(v > 0, v, v * negative_slope)
        elif activation == 2:
            v = tl.sigmoid(v)
        elif activation == 3:
            v = v * tl.sigmoid(v)
        elif activation == 4:
            # tanh(softplus(v)) = n / (n + 2) with n = e^v (e^v + 2), exactly; 1 once e^v overflows.
            e = tl.exp(tl.minimum(v, 20.0))
            n = e * (e + 2.0)
            v = tl.where(v > 20.0, v, v * n / (n + 2.0))
        elif activation == 5:
            v = 2.0 * tl.sigmoid(2.0 * v) - 1.0
        out = rows[:, None] * outputs + cols[None, :]
        ok = row_ok[:, None] & col_ok[None, :]
        if has_residual:
            v += tl.load(residual + out, mask=ok, other=0.0).to(tl.float32)
        tl.store(y + out, v.to(y.dtype.element_ty), mask=ok)

    return chain_kernel
