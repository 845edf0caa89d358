"""Fuzzing the cfg parser, the weights reader and the workflow config: any input gives a result
or a YoloforgeError.

Mutations start from real cfg files (yolov3-tiny and every-layer) and a real weights layout.
Every example has a deadline, and one that runs far past it is interrupted, so a hang fails
as surely as a crash.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import DATA, MODELS, ROOT, run_cli
from tests.test_workflow import snakemake
from yoloforge.config import check_config, fetch_arguments, option_arguments, repeated_arguments
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


# The config: hostile or mistaken values anywhere are refused in one line, or reach the commands
# as exactly the arguments they are, never as shell code.
MARKER = "INJECTED"
HOSTILE = [
    f"x'$(touch {MARKER})'", f'"; touch {MARKER}; "', f"`touch {MARKER}`", f"$(touch {MARKER})",
    f"a; touch {MARKER}", f"a && touch {MARKER} #", f"{{output}}; touch {MARKER}", "a b", "--output=/x",
    "-", "'", '"', "\\", "é漢字", "a\nb", "\x00", "\t", "{wildcards}", "*", "~", "$HOME", "a" * 5000, "",
]  # fmt: skip
EXTREME_NUMBERS = [
    0,
    -1,
    1,
    31,
    32,
    1024,
    1025,
    4096,
    8192,
    2**31,
    2**63,
    1e308,
    -1e308,
    0.5,
    float("nan"),
    True,
]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
TEXT = st.sampled_from(HOSTILE) | st.text(max_size=40)
NUMBER = st.sampled_from(EXTREME_NUMBERS) | st.integers() | st.floats()


def _base_config() -> dict:
    return {
        "models": {
            "net": {
                "cfg": {"sources": ["models/yolov3-tiny.cfg"]},
                "weights": {"sources": ["synthetic"]},
                "sizes": [64],
            }
        },
        "engines": {"onnxruntime": ["fp32"]},
        # The one engine option typed as anything: hostile values must be refused by its type.
        "engine_options": {"torch-aoti": {"max_autotune": False}},
        "batches": [1],
        "images": {"count": 2, "calibration_count": 2, "coco_annotations": [], "coco_images": []},
        "timing": {"warmup_seconds": 0, "seconds": 0.1, "min_iterations": 2},
    }


@st.composite
def hostile_config(draw) -> tuple[str, dict, bool]:
    """YAML text of a config with hostile strings, extreme numbers and maybe a key written twice."""
    config = _base_config()
    model = config["models"]["net"]
    for _ in range(draw(st.integers(1, 5))):
        field = draw(st.sampled_from(
            ["cfg", "weights", "sha256", "coco", "option_key", "option_value", "model", "target", "number"]
        ))  # fmt: skip
        if field in ("cfg", "weights"):
            model[field]["sources"].insert(0, draw(TEXT))
        elif field == "sha256":
            model["weights"]["sha256"] = draw(TEXT)
        elif field == "coco":
            config["images"][draw(st.sampled_from(["coco_annotations", "coco_images"]))].append(draw(TEXT))
        elif field == "option_key":
            config["engine_options"]["torch-aoti"][draw(TEXT)] = 1
        elif field == "option_value":
            config["engine_options"]["torch-aoti"]["max_autotune"] = draw(TEXT | NUMBER)
        elif field == "model":
            config["models"] = {draw(TEXT): model}
        elif field == "target":
            config["targets"] = {draw(TEXT): {}}
        else:
            section, key = draw(st.sampled_from(
                [("batches", 0), ("images", "count"), ("timing", "seconds"), ("timing", "min_iterations"),
                 ("sizes", 0), ("download", "deadline_seconds")]
            ))  # fmt: skip
            holder = model["sizes"] if section == "sizes" else config.setdefault(section, {})
            holder[key] = draw(NUMBER)
    lines = yaml.safe_dump(config, allow_unicode=True, width=1 << 20).splitlines()
    twice = draw(st.booleans())
    if twice:  # a line that starts a key, repeated
        keyed = [index for index, line in enumerate(lines) if re.match(r"^\s*[\w-]+:", line)]
        index = draw(st.sampled_from(keyed))
        lines.insert(index + 1, lines[index])
    return "\n".join(lines) + "\n", config, twice


def _planned_arguments(config: dict) -> list[tuple[str, list[str]]]:
    """Each command-line text the workflow builds from config, with the arguments it must be."""
    planned = []
    for spec in config["models"].values():
        for asset in ("cfg", "weights"):
            expected = [part for source in spec[asset]["sources"] for part in ("--source", source)]
            if spec[asset].get("sha256"):
                expected += ["--sha256", spec[asset]["sha256"]]
            planned.append((fetch_arguments(spec[asset]), expected))
    for options in config.get("engine_options", {}).values():
        written = {
            key: str(value).lower() if isinstance(value, bool) else value for key, value in options.items()
        }
        expected = [part for key, value in written.items() for part in ("--option", f"{key}={value}")]
        planned.append((option_arguments(options), expected))
    for key in ("coco_annotations", "coco_images"):
        flag = "--" + key.replace("_", "-")
        values = config["images"].get(key, [])
        planned.append(
            (repeated_arguments(flag, values), [part for value in values for part in (flag, value)])
        )
    return planned


@settings(max_examples=200, deadline=5000, derandomize=True, suppress_health_check=list(HealthCheck))
@given(hostile_config())
@interrupt_hangs
def test_hostile_config_is_refused_in_one_line_or_quoted(scratch, drawn):
    text, config, twice = drawn
    path = scratch / "config.yaml"
    path.write_text(text)
    loaded = yaml.safe_load(text)  # as Snakemake reads it: a key written twice keeps the last
    try:
        check_config(loaded, SCHEMA, files=[path])
    except YoloforgeError as error:
        message = str(error)
        assert "\n" not in message and len(message) < 500, message
        assert message.startswith(("config: ", f"{path}: line ")), message
        event("refused")
        return
    event("accepted")
    assert not twice and loaded == config
    marker = scratch / MARKER
    for command_line, expected in _planned_arguments(loaded):
        run = subprocess.run(
            ["bash", "-c", f"printf '%s\\0' {command_line}"], cwd=scratch, capture_output=True
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.decode().split("\0")[:-1] == (expected or [""])  # printf prints once at least
        assert not marker.exists()


# Strings that pass the schema, each trying another way out of its quotes.
PLANNED_HOSTILE = [text for text in HOSTILE[:7] if "\n" not in text]
# Stands in for `python`: records its arguments, NUL-separated, one call a line.
# `cat` of outputs that the recorder never wrote (the report rule prints the summary) does nothing.
RECORDER = """python() { printf '%s\\0' "$@" >> "$CALLS"; printf '\\n' >> "$CALLS"; }; cat() { :; }; """


def _values_of(flag: str, arguments: list[str]) -> list[str]:
    return [arguments[index + 1] for index, argument in enumerate(arguments) if argument == flag]


def test_dry_run_plans_commands_that_run_no_injected_code(tmp_path):
    """The shell lines of `snakemake -n --printshellcmds`, run with `python` standing in for a
    command that records its arguments: no injected command runs, each string is one argument."""
    config = _base_config()
    spec = config["models"]["net"]
    spec["cfg"]["sources"] = [str(ROOT / "models" / "yolov3-tiny.cfg"), *PLANNED_HOSTILE]
    spec["weights"]["sources"] = [*PLANNED_HOSTILE, "synthetic"]
    config["images"] |= {"coco_annotations": PLANNED_HOSTILE, "coco_images": PLANNED_HOSTILE[::-1]}
    # Engine options are typed by each engine's declared facts, so no hostile string gets this far.
    config["engines"]["torch-aoti"] = ["fp32"]
    config["engine_options"]["torch-aoti"] = {"max_autotune": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    # This machine's device probe, so that the plan goes on to the build commands with their options.
    device = tmp_path / "results" / "device" / "local.json"
    probe = run_cli(
        "device",
        "--engine",
        "onnxruntime",
        "--engine",
        "torch-aoti",
        "--no-ceilings",
        "--output",
        str(device),
    )
    assert probe.returncode == 0, probe.stderr
    plan = snakemake(tmp_path, "-n", "--printshellcmds")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    lines = [
        line.split("Shell command: ", 1)[1] for line in plan.stdout.splitlines() if "Shell command: " in line
    ]
    lines = [line for line in lines if line != "None"]  # rule all runs nothing
    calls = tmp_path / "calls"
    for line in lines:
        for redirected in re.findall(r"> (\S+)", line):
            (tmp_path / redirected).parent.mkdir(parents=True, exist_ok=True)
        run = subprocess.run(
            ["bash", "-c", RECORDER + line], cwd=tmp_path, env={**os.environ, "CALLS": str(calls)}
        )
        assert run.returncode == 0, line
    assert not list(tmp_path.rglob(MARKER))
    arguments = [call.split("\0")[:-1] for call in calls.read_text().split("\n") if call]
    commands = {}
    for call in arguments:
        commands.setdefault(call[2], []).append(call)  # python -m yoloforge COMMAND ...
    assert sorted(_values_of("--source", call) for call in commands["fetch"]) == sorted(
        [spec["cfg"]["sources"], spec["weights"]["sources"]]
    )
    [images] = commands["images"]
    assert _values_of("--coco-annotations", images) == PLANNED_HOSTILE
    assert _values_of("--coco-images", images) == PLANNED_HOSTILE[::-1]
    builds = {call[call.index("--engine") + 1]: call for call in commands["build"]}
    assert _values_of("--option", builds["torch-aoti"]) == ["max_autotune=false"]
    assert _values_of("--option", builds["onnxruntime"]) == []
