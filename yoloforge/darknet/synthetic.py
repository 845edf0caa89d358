"""Deterministic synthetic Darknet weights, for timing models whose real weights are unavailable.

Random kernels alone make activations grow or vanish over 100+ layers, which overflows FP16 and
makes timing unrepresentative. So the batch-norm statistics are the real statistics of each
layer's input: a float32 forward pass over a few smooth random images, layer by layer, records
every convolution's per-channel mean and variance before writing them. Every activation then
stays near unit scale, as in a trained network. Each layer kind synthesizes its own parameters
(`Layer.synthesize`); the convolution before a detection head gives its raw outputs the roles
the head assigns (`Layer.head_logits`).
"""

from __future__ import annotations

import os

import numpy as np

from yoloforge.darknet.cfg import Network, load_cfg
from yoloforge.darknet.layers.base import LayerParams
from yoloforge.darknet.weights import WeightsHeader, write_weights
from yoloforge.files import sha256_file

CALIBRATION_SIZE = 320
CALIBRATION_PHOTOS = ("astronaut", "coffee")
CALIBRATION_SCENES = 1


def _calibration_images(channels: int, size: int) -> np.ndarray:
    """Real photos and generated scenes, letterboxed as the engines will see them."""
    from yoloforge.images import _bundled_photo, generated_scene, letterbox

    pictures = [_bundled_photo(name) for name in CALIBRATION_PHOTOS]
    pictures += [generated_scene(seed) for seed in range(CALIBRATION_SCENES)]
    images = np.stack([letterbox(picture, size, size) for picture in pictures])
    return (
        images[:, :channels] if channels <= 3 else np.tile(images, (1, -(-channels // 3), 1, 1))[:, :channels]
    )


def _calibration_size(network: Network, size: int) -> int:
    """`size`, or the next multiple of the network's largest strides (a P6 model needs one of 64)."""
    stride = max(32, *network.largest_strides())
    return -(-size // stride) * stride


def synthetic_params(
    network: Network, seed: int = 0, calibration_size: int = CALIBRATION_SIZE, kernel_mean: float = 0.0
) -> list[LayerParams]:
    """Every layer's parameters, calibrated on images of calibration_size squared.

    With zero-mean random kernels (the default) a deep network is chaotic: each layer mixes its
    correlated input channels into ones batch norm then rescales, and rounding noise grows layer
    by layer (a 1e-7 change of the input moves yolov4's boxes by about 1e-3 at 128x128). Timing
    does not mind; comparing two float32 implementations to 1e-3 does. A `kernel_mean` (in units
    of the kernels' standard deviation) shared by every normalized kernel, as trained kernels
    share a common part, sums the signal coherently and averages the noise out. Output layers
    keep zero-mean kernels.
    """
    rng = np.random.default_rng(seed)
    x = _calibration_images(network.channels, _calibration_size(network, calibration_size))
    outputs: list[np.ndarray] = []
    params: list[LayerParams] = []
    for position, layer in enumerate(network.layers):
        inputs = [x if i < 0 else outputs[i] for i in layer.inputs]
        following = network.layers[position + 1] if position + 1 < len(network.layers) else None
        arrays, y = layer.synthesize(inputs, rng, following, kernel_mean)
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
