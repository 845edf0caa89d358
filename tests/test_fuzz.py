"""Fuzzing the cfg parser and the weights reader: any input gives a network or a YoloforgeError.

Mutations start from real cfg files (yolov3-tiny and every-layer) and a real weights layout.
Every example has a deadline, and one that runs far past it is interrupted, so a hang fails
as surely as a crash.
"""

from __future__ import annotations

import functools
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import DATA, MODELS
from yoloforge.darknet.cfg import build_network, load_cfg, parse_cfg_text
from yoloforge.darknet.weights import WeightsHeader, read_header, read_weights
from yoloforge.errors import YoloforgeError

SEEDS = [(MODELS / "yolov3-tiny.cfg").read_text(), (DATA / "every-layer.cfg").read_text()]
FUZZ = settings(
    max_examples=2000,
    deadline=2000,
    derandomize=True,  # the same examples on every run: CI failures reproduce
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ODD_VALUES = [
    "0", "-1", "-32", "1", "2", "3", "31", "33", "1e9", "99999999999999999999", "-2147483648", "",
    "abc", "nan", "inf", "-inf", "1.5", "1,2", ",", "1,,2", "-1,-99", "0,0,0", "=", "[", "]", "#",
    "leaky", "linear", "none", "1" * 5000,
]  # fmt: skip
KEYS = [
    "filters", "size", "stride", "groups", "layers", "from", "mask", "anchors", "classes", "channels",
    "width", "height", "padding", "group_id", "batch_normalize", "activation", "scale_x_y",
]  # fmt: skip
MUTATIONS = ["value", "delete", "duplicate", "swap", "insert", "section", "cut"]
SECTION_NAMES = ["net", "convolutional", "route", "shortcut", "yolo", "upsample", "maxpool", "reorg", ""]


HANG_SECONDS = 10


class Hang(BaseException):
    """Not an Exception: no `except` in the code under test may swallow it."""


def interrupt_hangs(test):
    """Interrupt an example that runs HANG_SECONDS (hypothesis' deadline only judges finished ones)."""

    @functools.wraps(test)
    def guarded(*args, **kwargs):
        def hang(signum, frame):
            raise Hang(f"example still running after {HANG_SECONDS} s")

        previous = signal.signal(signal.SIGALRM, hang)
        signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
        try:
            return test(*args, **kwargs)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)

    return guarded


def _exercise(text: str) -> None:
    """Everything the converter asks of a cfg before it reads weights."""
    network = build_network(parse_cfg_text(text, "fuzz.cfg"), "fuzz.cfg")
    assert network.parameter_count() >= 0
    for layer in network.layers:
        assert all(count >= 0 for _, count in layer.parameter_counts())
    network.shapes(64, 64)
    network.shapes(network.width, network.height)


def _accepts_or_explains(text: str) -> None:
    try:
        _exercise(text)
    except YoloforgeError as error:
        assert "\n" not in str(error)
        event("refused")
    else:
        event("accepted")


@st.composite
def mutated_cfg(draw) -> str:
    lines = draw(st.sampled_from(SEEDS)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(MUTATIONS))
        line = lines[index]
        if operation == "value" and "=" in line:
            lines[index] = f"{line.split('=', 1)[0]}={draw(st.sampled_from(ODD_VALUES))}"
        elif operation == "delete":
            del lines[index]
        elif operation == "duplicate":
            lines.insert(index, line)
        elif operation == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], line
        elif operation == "insert":
            key = draw(st.sampled_from(KEYS))
            lines.insert(index, f"{key}={draw(st.sampled_from(ODD_VALUES))}")
        elif operation == "section":
            lines.insert(index, f"[{draw(st.sampled_from(SECTION_NAMES))}]")
        elif operation == "cut":
            lines = lines[:index] or lines[:1]
        if not lines:
            lines = ["[net]"]
    return "\n".join(lines)


@FUZZ
@given(mutated_cfg())
@interrupt_hangs
def test_mutated_cfg_parses_or_fails_cleanly(text):
    _accepts_or_explains(text)


CFG_ALPHABET = st.sampled_from(list("[]=,#;-+.0123456789 \n\t\rabcdefghijklmnopqrstuvwxyz_") + ["\x00", "é"])


@FUZZ
@given(st.lists(st.sampled_from(SECTION_NAMES + ["net"]), min_size=1, max_size=8), st.data())
@interrupt_hangs
def test_random_cfg_text_parses_or_fails_cleanly(sections, data):
    text = "".join(
        f"[{name}]\n" + data.draw(st.text(CFG_ALPHABET, max_size=80), label=f"body of [{name}]")
        for name in sections
    )
    _accepts_or_explains(text)


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


@st.composite
def flipped_seed(draw) -> bytes:
    seed = bytearray(draw(st.sampled_from(SEEDS)).encode())
    for _ in range(draw(st.integers(1, 4))):
        seed[draw(st.integers(0, len(seed) - 1))] ^= draw(st.integers(1, 255))
    return bytes(seed)


@FUZZ
@given(st.binary(max_size=400) | flipped_seed())
@interrupt_hangs
def test_cfg_file_bytes_load_or_fail_cleanly(scratch, content):
    path = scratch / "fuzz.cfg"
    path.write_bytes(content)
    try:
        network = load_cfg(path)
        network.shapes(64, 64)
    except YoloforgeError as error:
        assert str(path) in str(error)


NETWORK = load_cfg(DATA / "every-layer.cfg")
BODY_BYTES = NETWORK.parameter_count() * 4


@st.composite
def weights_file(draw) -> bytes:
    header = draw(
        st.sampled_from([WeightsHeader(0, 2, 0, 5).to_bytes(), WeightsHeader(0, 1, 0, 5).to_bytes()])
        | st.binary(min_size=0, max_size=24)
        | st.tuples(*[st.integers(-(2**31), 2**31 - 1)] * 3).map(lambda v: np.array(v, "<i4").tobytes())
    )
    body = draw(
        st.sampled_from([BODY_BYTES, BODY_BYTES - 4, BODY_BYTES + 4, BODY_BYTES + 2, 0, 3])
        | st.integers(0, BODY_BYTES + 64)
    )
    return header + bytes(body)


@FUZZ
@given(weights_file())
@interrupt_hangs
def test_weights_read_or_fail_cleanly(scratch, content):
    path = scratch / "fuzz.weights"
    path.write_bytes(content)
    try:
        header, params = read_weights(path, NETWORK)
    except YoloforgeError as error:
        assert str(path) in str(error) and "\n" not in str(error)
        return
    assert len(content) == header.size + BODY_BYTES
    assert sum(a.size for layer in params for a in layer.values()) == NETWORK.parameter_count()


@FUZZ
@given(st.binary(max_size=32))
@interrupt_hangs
def test_weights_header_reads_or_fails_cleanly(content):
    try:
        header = read_header(content, "fuzz.weights")
    except YoloforgeError:
        return
    assert header.size <= len(content) and header.seen >= 0
