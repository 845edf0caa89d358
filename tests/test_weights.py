import numpy as np
import pytest

from tests.conftest import DATA, MODELS
from yoloforge.darknet.cfg import load_cfg
from yoloforge.darknet.synthetic import synthetic_params
from yoloforge.darknet.weights import WeightsHeader, read_weights, write_weights
from yoloforge.errors import YoloforgeError


@pytest.mark.parametrize(
    ("header", "size"),
    [
        (WeightsHeader(0, 2, 0, 2**40), 20),
        (WeightsHeader(0, 1, 0, 12345), 16),
        (WeightsHeader(1, 0, 0, 7), 20),
    ],
)
def test_round_trip_with_32_and_64_bit_seen(tmp_path, header, size):
    net = load_cfg(DATA / "every-layer.cfg")
    params = synthetic_params(net, seed=3)
    path = tmp_path / "w.weights"
    write_weights(path, net, params, header)
    assert path.stat().st_size == size + 4 * net.parameter_count()
    read_header, read_params = read_weights(path, net)
    assert read_header == header
    for written, read in zip(params, read_params, strict=True):
        assert written.keys() == read.keys()
        for key in written:
            np.testing.assert_array_equal(np.ravel(written[key]), read[key])


def test_real_tiny_weights_header(tiny_weights):
    header, params = read_weights(tiny_weights, load_cfg(MODELS / "yolov3-tiny.cfg"))
    assert (header.major, header.minor, header.seen_is_64bit) == (0, 2, True)
    assert params[0]["weights"].size == 16 * 3 * 3 * 3


def _weights(tmp_path, extra: bytes = b"", cut: int = 0):
    net = load_cfg(DATA / "every-layer.cfg")
    path = tmp_path / "w.weights"
    write_weights(path, net, synthetic_params(net), WeightsHeader())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut] + extra)
    return net, path


def test_truncated_weights_say_how_many_floats(tmp_path):
    net, path = _weights(tmp_path, cut=40)
    expected = net.parameter_count()
    message = f"truncated: expected {expected} floats for every-layer.cfg, found {expected - 10}"
    with pytest.raises(YoloforgeError, match=message):
        read_weights(path, net)


def test_extra_bytes_are_an_error(tmp_path):
    net, path = _weights(tmp_path, extra=b"\0" * 8)
    with pytest.raises(YoloforgeError, match=f"has extra data: expected {net.parameter_count()} floats"):
        read_weights(path, net)


def test_partial_float_is_an_error(tmp_path):
    net, path = _weights(tmp_path, extra=b"\0\0")
    with pytest.raises(YoloforgeError, match="not a whole number of float32 values"):
        read_weights(path, net)


def test_weights_for_another_cfg(tiny_weights):
    with pytest.raises(YoloforgeError, match=r"has extra data: expected \d+ floats for every-layer.cfg"):
        read_weights(tiny_weights, load_cfg(DATA / "every-layer.cfg"))
