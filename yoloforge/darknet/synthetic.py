"""Deterministic synthetic Darknet weights, for timing models whose real weights are unavailable.

Random kernels alone make activations grow or vanish over 100+ layers, which overflows FP16 and
makes timing unrepresentative. So the batch-norm statistics are the real statistics of each
layer's input: a float32 forward pass over a few smooth random images, layer by layer, records
every convolution's per-channel mean and variance before writing them. Every activation then
stays near unit scale, as in a trained network.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from yoloforge.darknet.cfg import Layer, Network, load_cfg
from yoloforge.darknet.onnx_export import BATCHNORM_EPSILON, LEAKY_SLOPE
from yoloforge.darknet.weights import LayerParams, WeightsHeader, write_weights
from yoloforge.files import sha256_file

CALIBRATION_SIZE = 320
CALIBRATION_PHOTOS = ("astronaut", "coffee")
CALIBRATION_SCENES = 1
# Detection heads: low objectness on most cells with a tail of confident ones (about 0.2% of
# boxes over 0.25), as trained detectors give, so NMS sees a realistic load.
OBJECTNESS_BIAS = -4.0
OBJECTNESS_SPREAD = 1.0
CLASS_BIAS = -2.0
HEAD_SPREAD = 0.5
VARIANCE_FLOOR = 0.05  # relative to the layer's median channel variance


def _calibration_images(channels: int, size: int) -> np.ndarray:
    """Real photos and generated scenes, letterboxed as the engines will see them."""
    from yoloforge.images import _bundled_photo, generated_scene, letterbox

    pictures = [_bundled_photo(name) for name in CALIBRATION_PHOTOS]
    pictures += [generated_scene(seed) for seed in range(CALIBRATION_SCENES)]
    images = np.stack([letterbox(picture, size, size) for picture in pictures])
    return (
        images[:, :channels] if channels <= 3 else np.tile(images, (1, -(-channels // 3), 1, 1))[:, :channels]
    )


def _convolve(x: np.ndarray, kernel: np.ndarray, stride: int, padding: int, groups: int) -> np.ndarray:
    batch = x.shape[0]
    filters, group_channels, size, _ = kernel.shape
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = sliding_window_view(padded, (size, size), axis=(2, 3))[:, :, ::stride, ::stride]
    out_h, out_w = windows.shape[2:4]
    per_group = filters // groups
    outputs = []
    for group in range(groups):
        columns = windows[:, group * group_channels : (group + 1) * group_channels]
        columns = columns.transpose(0, 2, 3, 1, 4, 5).reshape(batch * out_h * out_w, -1)
        weights = kernel[group * per_group : (group + 1) * per_group].reshape(per_group, -1)
        outputs.append((columns @ weights.T).reshape(batch, out_h, out_w, per_group))
    return np.concatenate(outputs, axis=3).transpose(0, 3, 1, 2)


def _activate(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "leaky":
        return np.where(x > 0, x, LEAKY_SLOPE * x)
    if activation == "relu":
        return np.maximum(x, 0)
    if activation == "logistic":
        return 1 / (1 + np.exp(-x))
    if activation == "swish":
        return x / (1 + np.exp(-x))
    if activation == "mish":
        return x * np.tanh(np.logaddexp(0, x))
    return x


def _maxpool(x: np.ndarray, layer: Layer) -> np.ndarray:
    before = layer.padding // 2
    after = layer.padding - before
    padded = np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)), constant_values=-np.inf)
    windows = sliding_window_view(padded, (layer.size, layer.size), axis=(2, 3))
    return windows[:, :, :: layer.stride, :: layer.stride].max(axis=(4, 5))


def _head_targets(
    layer: Layer, following: Layer | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Biases and raw-output spreads of an unnormalized layer; a detection head gets them per role."""
    biases = rng.normal(0, 0.1, layer.filters).astype(np.float32)
    spreads = np.full(layer.filters, HEAD_SPREAD, dtype=np.float32)
    if following is not None and following.kind == "yolo":
        per_anchor = (len(following.anchors), 5 + following.classes)
        biases.reshape(per_anchor)[:, 4] = OBJECTNESS_BIAS
        biases.reshape(per_anchor)[:, 5:] = CLASS_BIAS
        spreads.reshape(per_anchor)[:, 4] = OBJECTNESS_SPREAD
    return biases, spreads


def synthetic_params(network: Network, seed: int = 0) -> list[LayerParams]:
    rng = np.random.default_rng(seed)
    x = _calibration_images(network.channels, CALIBRATION_SIZE)
    outputs: list[np.ndarray] = []
    params: list[LayerParams] = []
    for position, layer in enumerate(network.layers):
        inputs = [x if i < 0 else outputs[i] for i in layer.inputs]
        arrays: LayerParams = {}
        if layer.kind == "convolutional":
            fan_in = layer.in_channels // layer.groups * layer.size * layer.size
            kernel = rng.standard_normal(
                (layer.filters, layer.in_channels // layer.groups, layer.size, layer.size),
                dtype=np.float32,
            ) * np.float32(np.sqrt(2.0 / fan_in))
            z = _convolve(inputs[0], kernel, layer.stride, layer.padding, layer.groups)
            if layer.batch_normalize:
                mean = z.mean(axis=(0, 2, 3))
                # A channel nearly constant on the calibration images would amplify whatever
                # varies on other images; trained networks have no such channels either.
                variance = np.maximum(
                    z.var(axis=(0, 2, 3)), VARIANCE_FLOOR * np.median(z.var(axis=(0, 2, 3)))
                )
                scales = rng.uniform(0.5, 1.5, layer.filters).astype(np.float32)
                biases = rng.normal(0, 0.1, layer.filters).astype(np.float32)
                factor = scales / np.sqrt(variance + BATCHNORM_EPSILON)
                z = (z - mean[:, None, None]) * factor[:, None, None] + biases[:, None, None]
                arrays = {"scales": scales, "mean": mean, "variance": variance}
            else:
                # An unnormalized output layer: scale each filter to its target spread, which
                # keeps exp() of the box sizes in a trained range and a few boxes confident.
                following = network.layers[position + 1] if position + 1 < len(network.layers) else None
                biases, spreads = _head_targets(layer, following, rng)
                gain = spreads / (z.std(axis=(0, 2, 3)) + 1e-6)
                kernel *= gain[:, None, None, None]
                z = z * gain[:, None, None] + biases[:, None, None]
            arrays["biases"] = biases
            arrays["weights"] = kernel
            y = _activate(z, layer.activation)
        elif layer.kind == "shortcut":
            y = _activate(inputs[0] + inputs[1], layer.activation)
        elif layer.kind == "route":
            parts = []
            for source in inputs:
                channels = source.shape[1] // layer.route_groups
                start = channels * layer.route_group_id
                parts.append(source[:, start : start + channels])
            y = np.concatenate(parts, axis=1)
        elif layer.kind == "upsample":
            y = inputs[0].repeat(layer.stride, axis=2).repeat(layer.stride, axis=3)
        elif layer.kind == "maxpool":
            y = _maxpool(inputs[0], layer)
        else:  # yolo: decoding does not feed later layers' statistics
            y = inputs[0]
        outputs.append(y.astype(np.float32, copy=False))
        params.append(arrays)
    return params


def write_synthetic_weights(cfg: str | os.PathLike, output: str | os.PathLike, seed: int) -> dict:
    """Write synthetic weights for `cfg`; return their provenance record."""
    network = load_cfg(cfg)
    write_weights(output, network, synthetic_params(network, seed), WeightsHeader())
    return {
        "source": "synthetic",
        "seed": seed,
        "cfg": os.path.basename(os.fspath(cfg)),
        "cfg_sha256": sha256_file(cfg),
        "sha256": sha256_file(output),
    }
