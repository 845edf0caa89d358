"""Darknet layer options, each against OpenCV where OpenCV honours it and against Darknet's own
arithmetic (tests/darknet_reference.py) where it does not."""

import numpy as np
import onnxruntime
import pytest

from tests.conftest import DATA, mixed_batch
from tests.darknet_reference import (
    assert_matches_opencv,
    convolution,
    gaussian_yolo_rows,
    maxpool,
    reorg_cpu,
)
from yoloforge.darknet.cfg import build_network, load_cfg, parse_cfg_text
from yoloforge.darknet.convert import convert
from yoloforge.darknet.onnx_export import export_onnx
from yoloforge.darknet.synthetic import synthetic_params
from yoloforge.errors import YoloforgeError

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"
HEAD = (
    "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
    "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\n"
)


def network(text: str):
    return build_network(parse_cfg_text(text, "test.cfg"), "test.cfg")


def exposed_outputs(text: str, layers: tuple[int, ...], width=64, height=64, seed=0):
    """The network's parameters, and the outputs of `layers` on two real photos."""
    net = network(text)
    params = synthetic_params(net, seed=seed, calibration_size=64)
    model = export_onnx(net, params, width, height, expose=layers)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = mixed_batch(width, height)[:2]
    return net, params, images, session.run([f"layer{i}" for i in layers], {"images": images})


def kernel_of(params, filters: int, channels: int, size: int) -> np.ndarray:
    return params["weights"].reshape(filters, channels, size, size).astype(np.float64)


@pytest.mark.parametrize("size", [None, (64, 64)])
def test_new_layer_kinds_match_opencv(synthetic_weights, size, tmp_path):
    """Unequal shortcuts, avgpool + scale_channels, dropout, reorg, pad beside padding, inline
    comments, a new_coords [yolo] and a [region] head (tests/data/new-layers.cfg)."""
    cfg = DATA / "new-layers.cfg"
    weights = synthetic_weights(cfg, seed=3)
    output = tmp_path / "new-layers.onnx"
    convert(cfg, weights, output, size)
    width, height = size or (128, 96)
    assert_matches_opencv(cfg, weights, output, mixed_batch(width, height), tmp_path)


def test_pad_wins_over_padding_and_inline_comments_are_dropped():
    net = load_cfg(DATA / "new-layers.cfg")
    assert net.layers[0].padding == 1  # size=3, pad=1, padding=5
    assert net.layers[2].inputs == [1, 0]  # from=-2 ### comment


def test_stride_x_and_stride_y_follow_darknet():
    text = (
        NET + "[convolutional]\nfilters=4\nsize=3\nstride_x=2\nstride_y=1\npad=1\nactivation=linear\n"
        "[maxpool]\nsize=3\nstride_x=1\nstride_y=2\n" + HEAD
    )
    net, params, images, (conv, pool) = exposed_outputs(text, (0, 1))
    assert conv.shape == (2, 4, 64, 32) and pool.shape == (2, 4, 32, 32)
    expected = convolution(images, kernel_of(params[0], 4, 3, 3), params[0]["biases"], 2, 1, 1)
    np.testing.assert_allclose(conv, expected, atol=1e-5)
    np.testing.assert_allclose(pool, maxpool(conv, 3, 1, 2, 2), atol=1e-6)


@pytest.mark.parametrize(
    ("antialiasing", "blur"), [(1, np.outer([1, 2, 1], [1, 2, 1]) / 16), (2, np.ones((2, 2)) / 4)]
)
def test_antialiasing_blurs_with_the_layers_stride(antialiasing, blur):
    """convolutional_layer.c: the convolution at stride 1, its activation, then a depthwise blur
    (3x3 pad 1, or 2x2 pad 0) at the layer's stride."""
    text = (
        NET + "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
        f"antialiasing={antialiasing}\n" + HEAD
    )
    net, params, images, (output,) = exposed_outputs(text, (0,))
    convolved = convolution(images, kernel_of(params[0], 4, 3, 3), params[0]["biases"], 1, 1, 1)
    activated = np.where(convolved > 0, convolved, 0.1 * convolved)
    depthwise = np.zeros((4, 4, *blur.shape))
    depthwise[np.arange(4), np.arange(4)] = blur
    expected = convolution(activated, depthwise, np.zeros(4), 2, 2, 1 if antialiasing == 1 else 0)
    assert output.shape == expected.shape == (2, 4, 32, 32)
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_flipped_kernels_are_read_transposed():
    """load_convolutional_weights: flipped=1 stores the kernel as a (channels*size*size) x filters
    matrix, which transpose_matrix turns back."""
    text = NET + "[convolutional]\nfilters=5\nsize=3\nstride=1\npad=1\nactivation=linear\nflipped=1\n" + HEAD
    net, params, images, (output,) = exposed_outputs(text, (0,))
    stored, rows, columns = params[0]["weights"], 3 * 3 * 3, 5
    kernel = np.empty_like(stored)
    for x in range(rows):
        for y in range(columns):
            kernel[y * rows + x] = stored[x * columns + y]
    expected = convolution(
        images, kernel.reshape(5, 3, 3, 3).astype(np.float64), params[0]["biases"], 1, 1, 1
    )
    np.testing.assert_allclose(output, expected, atol=1e-5)


def test_shortcut_from_several_layers_adds_each_into_the_common_channels():
    text = (
        NET + "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=6\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=5\nsize=1\nactivation=leaky\n"
        "[shortcut]\nfrom=-2,-3\nactivation=linear\n" + HEAD
    )
    net, params, images, (first, second, third, output) = exposed_outputs(text, (0, 1, 2, 3))
    expected = third.copy()
    expected[:, :5] += second[:, :5]
    expected[:, :4] += first
    np.testing.assert_allclose(output, expected, atol=1e-6)


@pytest.mark.parametrize(
    ("section", "channels"),
    [
        # Darknet's [reorg] (reorg_old_layer.c) passes the input's sizes, [reorg3d] (reorg_layer.c)
        # the output's; 6 channels are no multiple of 4, which only [reorg3d] takes.
        ("reorg", 8),
        ("reorg3d", 6),
    ],
)
def test_reorg_follows_darknets_loop(section, channels):
    text = (
        NET + f"[convolutional]\nfilters={channels}\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
        f"[{section}]\nstride=2\n" + HEAD
    )
    net, params, images, (conv, output) = exposed_outputs(text, (0, 1))
    assert output.shape == (2, channels * 4, 16, 16)
    if section == "reorg":
        expected = reorg_cpu(conv, 32, 32, channels, 2)
    else:
        expected = reorg_cpu(conv, 16, 16, channels * 4, 2)
    np.testing.assert_array_equal(output.reshape(2, -1), expected)


def test_sam_multiplies_two_layers_then_activates():
    text = (
        NET + "[convolutional]\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n"
        "[sam]\nfrom=-2\nactivation=leaky\n" + HEAD
    )
    net, params, images, (features, attention, output) = exposed_outputs(text, (0, 1, 2))
    product = features * attention
    np.testing.assert_allclose(output, np.where(product > 0, product, 0.1 * product), rtol=1e-6)


@pytest.mark.parametrize(
    ("layer", "problem"),
    [
        ("[sam]\nfrom=-2\nactivation=mish\n", "line 17 [sam]: activation=mish: Darknet computes it as 0"),
        ("[sam]\nfrom=-3\n", "line 17 [sam]: multiplies layer 0 (3 channels) by the previous layer's 4"),
        ("[sam]\nfrom=-1,-2\n", "line 17 [sam]: sam needs exactly one layer in from="),
        ("[reorg3d]\nstride=2\nreverse=1\n", "line 17 [reorg3d]: reverse=1"),
    ],
)
def test_bad_sam_and_reorg3d_are_refused_in_one_line(layer, problem):
    text = (
        NET + "[convolutional]\nfilters=3\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=leaky\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n" + layer + HEAD
    )
    with pytest.raises(YoloforgeError) as error:
        network(text)
    assert str(error.value).startswith(f"test.cfg: {problem}")


@pytest.mark.parametrize(("value", "expected"), [(None, "0"), ("0", "0"), ("1", "1")])
def test_letter_box_travels_in_the_metadata(value, expected):
    text = NET + (f"letter_box={value}\n" if value else "") + HEAD
    net = network(text)
    assert net.letter_box is (expected == "1")
    model = export_onnx(net, synthetic_params(net, calibration_size=64))
    assert {p.key: p.value for p in model.metadata_props}["letter_box"] == expected


def test_zoo_letter_box_settings():
    assert load_cfg(DATA / "zoo" / "yolov4-csp.cfg").letter_box
    assert not load_cfg(DATA / "zoo" / "yolov4-tiny.cfg").letter_box


def test_xnor_is_refused_in_one_line():
    with pytest.raises(YoloforgeError) as error:
        network(NET + "[convolutional]\nfilters=8\nsize=3\nxnor=1\n" + HEAD)
    expected = "line 5 [convolutional]: xnor=1: XNOR binarization of inputs and weights is not supported"
    assert str(error.value) == f"test.cfg: {expected}"


def test_one_error_lists_every_problem_with_its_line():
    text = (
        NET
        + "[convolutional]\nfilters=8\nsize=3\nxnor=1\nactivation=gelu\n"  # line 5
        + "[local_avgpool]\nsize=2\n"  # line 10
        + "[maxpool]\nsize=2\nmaxpool_depth=1\n"  # line 12
        + "[reorg]\nstride=2\nreverse=1\n"  # line 15
        + "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
        + "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\nnew_coords=2\n"  # line 22
    )
    with pytest.raises(YoloforgeError) as error:
        network(text)
    message = str(error.value)
    assert message.startswith("test.cfg: 6 problems: ") and "\n" not in message
    for problem in (
        "line 5 [convolutional]: xnor=1",
        "line 5 [convolutional]: unknown activation 'gelu'",
        "line 10 [local_avgpool]: unknown layer type [local_avgpool]",
        "line 12 [maxpool]: maxpool_depth=1",
        "line 15 [reorg]: reverse=1",
        "line 22 [yolo]: new_coords=2",
    ):
        assert problem in message


def test_a_layer_after_an_unknown_one_is_not_blamed_for_it():
    """Channels after an unparsed layer are unknown; only the unknown layer is reported."""
    text = NET + "[convolutional]\nfilters=6\n[local_avgpool]\nsize=2\n[route]\nlayers=-1\ngroups=4\n" + HEAD
    expected = r"^test.cfg: line 7 \[local_avgpool\]: unknown layer type \[local_avgpool\]$"
    with pytest.raises(YoloforgeError, match=expected):
        network(text)


@pytest.mark.parametrize(("num", "warned"), [(6, False), (3, True)])
def test_masks_beyond_num_use_the_anchors_listed_with_a_warning(num, warned, caplog):
    """cspx-p7-mish lists 20 anchors under num=16 with masks naming all 20; Darknet reads only num
    of them and indexes past its array, so the converter takes the anchors listed and says so."""
    text = (
        NET + "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
        f"[yolo]\nmask=3,4,5\nanchors=1,2,3,4,5,6,7,8,9,10,11,12\nclasses=1\nnum={num}\n"
    )
    with caplog.at_level("WARNING", logger="yoloforge.darknet.layers.yolo"):
        net = network(text)
    assert net.heads[0].anchors == [(7, 8), (9, 10), (11, 12)]
    assert ("names anchors beyond num=3" in caplog.text) is warned


@pytest.mark.parametrize("scale_x_y", [1.0, 1.1])
def test_gaussian_yolo_follows_darknets_arithmetic(scale_x_y):
    """Gaussian YOLOv3's head (Gaussian_yolov3_BDD of the zoo; OpenCV lacks it): boxes and each
    class's probability as get_gaussian_yolo_detections computes them."""
    anchors = [(7, 10), (16, 30), (33, 23)]
    text = (
        NET + "[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
        "[convolutional]\nfilters=36\nsize=1\nactivation=linear\n"
        f"[gaussian_yolo]\nmask=0,1,2\nanchors=7,10, 16,30, 33,23\nclasses=3\nnum=3\n"
        f"scale_x_y={scale_x_y}\n"
    )
    net, params, images, (head_input,) = exposed_outputs(text, (1,))
    model = export_onnx(net, params, 64, 64)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["detections"], {"images": images})
    expected = gaussian_yolo_rows(head_input, anchors, 3, 64, 64, scale_x_y)
    np.testing.assert_allclose(ours[..., :4], expected[..., :4], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[..., 4:5] * ours[..., 5:], expected[..., 4:], rtol=1e-5, atol=1e-6)


def test_gaussian_yolo_other_box_points_are_refused():
    text = NET + "[convolutional]\nfilters=36\nsize=1\n[gaussian_yolo]\nmask=0,1,2\n"
    text += "anchors=7,10, 16,30, 33,23\nclasses=3\nyolo_point=left_top\n"
    with pytest.raises(YoloforgeError, match=r"yolo_point=left_top: only boxes given by their centre"):
        network(text)
