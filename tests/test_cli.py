"""The command line: bad inputs (one line naming the file, non-zero exit, no output), and the
process settings each command makes."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import DATA, MODELS, ROOT, run_cli
from yoloforge.cli import build_parser


@pytest.fixture(scope="module")
def every_layer_weights(synthetic_weights):
    return synthetic_weights(DATA / "every-layer.cfg")


def _convert(tmp_path, cfg, weights, *extra):
    output = tmp_path / "out" / "model.onnx"
    result = run_cli("convert", "--cfg", str(cfg), "--weights", str(weights), "--output", str(output), *extra)
    return result, output


def _assert_clean_failure(result, output, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    assert not output.exists()
    assert not list(output.parent.glob("*")) if output.parent.exists() else True


def test_convert_writes_the_onnx_file(tmp_path, every_layer_weights):
    result, output = _convert(tmp_path, DATA / "every-layer.cfg", every_layer_weights, "--size", "64x96")
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 0
    assert [p.name for p in output.parent.iterdir()] == ["model.onnx"]


def test_truncated_weights(tmp_path, every_layer_weights):
    weights = tmp_path / "truncated.weights"
    weights.write_bytes(every_layer_weights.read_bytes()[:-400])
    result, output = _convert(tmp_path, DATA / "every-layer.cfg", weights)
    _assert_clean_failure(result, output, str(weights), "truncated: expected", "found")


def test_weights_with_extra_bytes(tmp_path, every_layer_weights):
    weights = tmp_path / "extra.weights"
    weights.write_bytes(every_layer_weights.read_bytes() + b"\0" * 16)
    result, output = _convert(tmp_path, DATA / "every-layer.cfg", weights)
    _assert_clean_failure(result, output, str(weights), "has extra data")


def test_weights_for_another_cfg(tmp_path, every_layer_weights):
    result, output = _convert(tmp_path, MODELS / "yolov3-tiny.cfg", every_layer_weights)
    expected = "expected 8858734 floats for yolov3-tiny.cfg"
    _assert_clean_failure(result, output, str(every_layer_weights), expected)


def test_cfg_with_unknown_section(tmp_path, every_layer_weights):
    cfg = tmp_path / "unknown.cfg"
    cfg.write_text((DATA / "every-layer.cfg").read_text().replace("[upsample]", "[crnn]", 1))
    result, output = _convert(tmp_path, cfg, every_layer_weights)
    _assert_clean_failure(result, output, str(cfg), "unknown layer type [crnn]")


def test_route_to_missing_layer(tmp_path, every_layer_weights):
    cfg = tmp_path / "route.cfg"
    cfg.write_text((DATA / "every-layer.cfg").read_text().replace("layers=-1,10", "layers=-1,99"))
    result, output = _convert(tmp_path, cfg, every_layer_weights)
    _assert_clean_failure(result, output, str(cfg), "refers to layer 99, which does not exist")


@pytest.mark.parametrize("size", ["400", "416x250", "0"])
def test_size_not_divisible_by_32(tmp_path, every_layer_weights, size):
    result, output = _convert(tmp_path, DATA / "every-layer.cfg", every_layer_weights, "--size", size)
    assert result.returncode != 0
    assert "multiples of 32" in result.stderr
    assert not output.exists()


def test_missing_weights_file(tmp_path):
    result, output = _convert(tmp_path, DATA / "every-layer.cfg", tmp_path / "nope.weights")
    _assert_clean_failure(result, output, "nope.weights", "cannot read weights")


def test_unknown_engine(tmp_path):
    output = tmp_path / "e.engine"
    result = run_cli("build", "--engine", "darknet9000", "--onnx", "x.onnx", "--output", str(output))
    _assert_clean_failure(result, output, "--engine: invalid choice: 'darknet9000'", "'onnxruntime'")


def test_every_option_of_every_command_says_what_it_is():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands.choices, "no subcommands"
    for name, command in commands.choices.items():
        assert commands._choices_actions and any(a.dest == name and a.help for a in commands._choices_actions)
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"yoloforge {name} {'/'.join(action.option_strings) or action.dest}"


def test_device_prints_what_runs_here_and_writes_the_same_as_json(tmp_path):
    output = tmp_path / "device.json"
    args = ["--engine", "onnxruntime", "--engine", "tensorrt", "--precision", "fp32", "--precision", "bf16"]
    result = run_cli("device", *args, "--no-ceilings", "--output", str(output))
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["engine", "precision", "here"]
    rows = {tuple(line.split()[:2]): line for line in lines[1:5]}
    assert set(rows) == {(e, p) for e in ("onnxruntime", "tensorrt") for p in ("fp32", "bf16")}
    for (engine, precision), line in rows.items():
        probe = report["engines"][engine]
        reason = probe["precisions"][precision]
        assert line.endswith(f"no: {reason}" if reason else f"runs, in {probe['id']}"), line
    # Each fingerprint that engines are kept under, once.
    assert f"{report['engines']['onnxruntime']['id']}: name " in result.stdout


def test_compare_tells_whether_b_p50_lies_in_a_spread(tmp_path, capsys):
    import pandas as pd

    from yoloforge.cli import main

    def table(name: str, figures: list[tuple[float, float, float, float | None, float | None]]) -> str:
        rows = [
            {
                "target": "local",
                "model": "m",
                "width": 64,
                "height": 64,
                "engine": engine,
                "precision": "fp32",
                "batch": 1,
                "scope": "model",
                "median_ms": p50,
                "p10_ms": p10,
                "p90_ms": p90,
                "rerun_low_ms": low,
                "rerun_high_ms": high,
                "images_per_second": 1000 / p50,
            }
            for engine, (p10, p50, p90, low, high) in zip(
                ("a-engine", "b-engine", "c-engine"), figures, strict=True
            )
        ]
        path = tmp_path / f"{name}.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        return str(path)

    a = table("a", [(9, 10, 12, 8, 12.5), (19, 20, 22, 17, 24), (29, 30, 32, None, None)])
    b = table("b", [(9, 11, 12, 9, 13), (22, 23, 24, 20, 26), (29, 29, 30, 25, 33)])
    assert main(["compare", a, b]) == 0
    printed = capsys.readouterr().out
    rows = {line.split(" | ")[2]: line for line in printed.splitlines() if line.startswith("| m ")}
    assert rows["a-engine"].endswith("| true | true |")
    assert rows["b-engine"].endswith("| false | true |")
    assert rows["c-engine"].endswith("| true |  |")  # A has no rerun interval there
    assert printed.splitlines()[-2:] == [
        "2 of 3 rows: B's p50 inside A's p10-p90",
        "2 of 2 rows: B's p50 inside A's rerun interval",
    ]


@pytest.mark.parametrize(
    ("command", "policy"),
    [
        (["synth-weights", "--cfg", str(DATA / "every-layer.cfg"), "--output", "{tmp}/w.weights"], "PASSIVE"),
        # Timing keeps the libraries' defaults (here it stops at its bad round, before loading).
        (
            ["bench", "--engine", "onnxruntime", "--engine-file", "x", "--model", "m", "--images", "i"]
            + ["--round", "2", "--rounds", "2", "--output", "{tmp}/b.json"],
            "None",
        ),
    ],
)
def test_only_timing_keeps_thread_pools_spinning(command, policy, tmp_path):
    code = (
        "import os, sys; from yoloforge.cli import main; main(sys.argv[1:]);"
        " print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    args = [part.replace("{tmp}", str(tmp_path)) for part in command]
    result = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert result.stdout.strip().splitlines()[-1] == policy, result.stderr
