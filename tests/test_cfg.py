import pytest

from tests.conftest import DATA, MODELS
from yoloforge.darknet.cfg import build_network, load_cfg, parse_cfg_text
from yoloforge.errors import YoloforgeError

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"
HEAD = (
    "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n"
    "[yolo]\nmask=0,1,2\nanchors=1,2,3,4,5,6\nclasses=1\n"
)


def network(text: str, path: str = "test.cfg"):
    return build_network(parse_cfg_text(text, path), path)


def test_sections_comments_repeats_and_unknown_keys_are_kept():
    sections = parse_cfg_text(
        "# comment\n[net]\nwidth = 416 \n; other comment\n[convolutional]\nfilters=8\nfoo=bar\n"
        "[convolutional]\nfilters=16\n"
    )
    assert [s.name for s in sections] == ["net", "convolutional", "convolutional"]
    assert sections[0].options == {"width": "416"}
    assert sections[1].options == {"filters": "8", "foo": "bar"}
    assert sections[2].line == 8


@pytest.mark.parametrize(
    ("name", "layers", "convolutions", "heads", "parameters"),
    [("yolov3-tiny", 24, 13, 2, 8858734), ("yolov3", 107, 75, 3, 62001757)],
)
def test_published_cfgs(name, layers, convolutions, heads, parameters):
    net = load_cfg(MODELS / f"{name}.cfg")
    assert len(net.layers) == layers
    assert sum(layer.kind == "convolutional" for layer in net.layers) == convolutions
    assert len(net.yolo_layers) == heads
    assert net.classes == 80
    # The published files hold exactly these floats after a 20-byte header: yolov3.weights is
    # 248,007,048 bytes, yolov3-tiny.weights 35,434,956.
    assert net.parameter_count() == parameters


def test_shapes_follow_darknet_arithmetic():
    net = load_cfg(DATA / "every-layer.cfg")
    shapes = net.shapes(320, 256)
    assert shapes[1] == (16, 128, 160)  # maxpool 2/2
    assert shapes[5] == (32, 128, 160)  # maxpool size 2 stride 1 keeps the size
    assert shapes[7] == (32, 64, 80)  # route group 1 of 2 halves the channels
    assert shapes[17] == (256, 16, 20)  # SPP concatenation
    assert [shapes[layer.index][1:] for layer in net.yolo_layers] == [(16, 20), (32, 40), (64, 80)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (NET + "[local_avgpool]\nsize=2\n" + HEAD, "line 5 [local_avgpool]: unknown layer type"),
        (NET + "[route]\nlayers=-3\n" + HEAD, "refers to layer -3, which does not exist"),
        (NET + "[route]\nlayers=7\n" + HEAD, "refers to layer 7, which does not exist"),
        (NET + "[convolutional]\nfilters=abc\n" + HEAD, "filters='abc' is not a valid int"),
        (NET + "[convolutional]\nfilters=8\nactivation=gelu\n" + HEAD, "unknown activation 'gelu'"),
        (
            NET + "[convolutional]\nfilters=17\nsize=1\n[yolo]\nmask=0\nanchors=1,2\nclasses=80\n",
            "expects 85 input channels",
        ),
        (NET + "filters 3\n", "expected key=value, found 'filters 3'"),
        ("width=3\n[net]\n", "before any [section]"),
        (NET, "has no [yolo] or [region] layer"),
        # Once accepted, then failed later in a library (channels: found by fuzzing).
        (NET.replace("channels=3", "channels=-1") + HEAD, "line 1 [net]: channels=-1: only 3-channel"),
        (NET.replace("channels=3", "channels=1") + HEAD, "channels=1: only 3-channel (RGB)"),
        (NET + HEAD.replace("classes=1", "classes=-3"), "classes=-3 is not positive"),
        (NET + "[convolutional]\nfilters=8\npadding=-2\n" + HEAD, "padding=-2 is negative"),
    ],
)
def test_bad_cfgs_name_the_file_and_line(text, message):
    with pytest.raises(YoloforgeError) as error:
        network(text)
    assert str(error.value).startswith("test.cfg")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("size", [(416, 400), (0, 416), (100, 100)])
def test_sizes_must_be_multiples_of_32(size):
    with pytest.raises(YoloforgeError, match="not a positive multiple of 32"):
        load_cfg(MODELS / "yolov3.cfg").shapes(*size)


@pytest.mark.parametrize(
    ("cfg", "strides", "accepted", "refused"),
    [
        (MODELS / "yolov3.cfg", (32, 32), (416, 416), None),
        (DATA / "zoo" / "yolov4-p6.cfg", (64, 64), (448, 640), "416x416 is not a multiple of 64,"),
        (DATA / "zoo" / "cspx-p7-mish.cfg", (128, 128), (512, 512), "576x576 is not a multiple of 128,"),
    ],
)
def test_sizes_must_be_multiples_of_the_largest_stride(cfg, strides, accepted, refused):
    """P6 and P7 models halve their input six and seven times: at other sizes the maps that
    their routes join differ by a cell, which the error names instead of the route."""
    network = load_cfg(cfg)
    assert network.largest_strides() == strides
    assert network.shapes(*accepted)[-1]
    if refused:
        size = tuple(int(side) for side in refused.split(" ")[0].split("x"))
        with pytest.raises(YoloforgeError, match=f"{refused} this network's largest stride$"):
            network.shapes(*size)


def test_strides_are_per_side_and_global_pooling_does_not_count():
    text = (
        NET + "[convolutional]\nfilters=4\nsize=3\nstride_x=2\nstride_y=1\npad=1\nactivation=leaky\n"
        "[maxpool]\nsize=2\nstride=2\n[avgpool]\n[route]\nlayers=-2\n" + HEAD
    )
    net = network(text)
    assert net.largest_strides() == (4, 2)


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda text: text.replace("\n", "\r\n").encode(), id="crlf"),
        pytest.param(lambda text: text.replace("\n", "\r").encode(), id="cr"),
        pytest.param(lambda text: b"\xef\xbb\xbf" + text.encode(), id="byte-order-mark"),
        pytest.param(
            lambda text: text.replace("[net]", "[net]\n# 输入尺寸", 1).encode("gbk"), id="gbk-comment"
        ),
    ],
)
def test_cfgs_saved_by_other_editors_read_as_the_original(
    encode, every_layer_onnx, synthetic_weights, tmp_path
):
    """Line ends, a byte-order mark and comments in a legacy encoding, as Windows editors save a
    cfg: Darknet and OpenCV read each as the original, and so do the converter and the
    opencv-darknet engine's copy."""
    import cv2

    from yoloforge.backends import BuildRequest, get_backend

    cfg = DATA / "every-layer.cfg"
    original = cfg.read_text()
    saved = tmp_path / "saved.cfg"
    saved.write_bytes(encode(original))
    expected = load_cfg(cfg)
    read = load_cfg(saved)
    assert [(layer.kind, layer.inputs, layer.out_channels) for layer in read.layers] == [
        (layer.kind, layer.inputs, layer.out_channels) for layer in expected.layers
    ]
    engine = tmp_path / "opencv.engine"
    get_backend("opencv-darknet").build(
        BuildRequest(every_layer_onnx, "fp32", 1, engine, cfg=saved, weights=synthetic_weights(cfg))
    )
    assert len(cv2.dnn.readNetFromDarknet(str(engine)).getLayerNames()) > 0


def test_a_binary_file_given_as_cfg_is_refused_in_one_line(tmp_path):
    weights = tmp_path / "model.weights"
    weights.write_bytes(b"\x00\x00\x00\x00\x02\x00\x00\x00" + bytes(64))
    with pytest.raises(YoloforgeError, match=r"model.weights: not a text cfg file$"):
        load_cfg(weights)
