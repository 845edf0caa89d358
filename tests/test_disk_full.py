"""A full disk while writing an output: one-line error, the previous output intact, no .part left.

Each test writes onto a small tmpfs (mounting needs root; skipped, saying so, where it is refused).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.backends.base import sidecar_path
from yoloforge.darknet.convert import convert


@pytest.fixture
def disk(tmp_path):
    """A 4 MiB tmpfs, to be filled with `fill`."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mount.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", str(mountpoint)], check=True)


def fill(disk: Path) -> None:
    """Take every free byte of `disk`."""
    with open(disk / "filler", "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)


def _snapshot(folder: Path) -> dict[str, bytes]:
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != "filler")
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}


def _assert_refused_cleanly(result, output: Path, before: dict[str, bytes]) -> None:
    assert result.returncode == 2, result.stderr
    # Logging may say what the command was doing; the error is its one last line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("yoloforge: error:")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr
    assert str(output) in errors[0] and "cannot write" in errors[0], result.stderr
    assert _snapshot(output.parent) == before  # previous outputs intact
    assert not list(output.parent.rglob("*.part"))


def _timing_record(engine: str, median_ms: float) -> dict:
    return {
        "model": "every-layer", "width": 64, "height": 64, "engine": engine, "precision": "fp32",
        "batch": 1, "target": "local", "device": {"kind": "cpu", "name": "test"},
        "libraries": {"numpy": "1"},
        "scopes": [{"scope": "model", "iterations": 3, "median_ms": median_ms, "mean_ms": median_ms}],
    }  # fmt: skip


def test_onnx_on_a_full_disk(disk, synthetic_weights):
    weights = synthetic_weights(DATA / "every-layer.cfg")
    output = disk / "model.onnx"
    convert(DATA / "every-layer.cfg", weights, output, (64, 64), run_simplifier=False)
    before = _snapshot(disk)
    fill(disk)
    result = run_cli(
        "convert", "--cfg", str(DATA / "every-layer.cfg"), "--weights", str(weights), "--size", "64",
        "--no-simplify", "--output", str(output),
    )  # fmt: skip
    _assert_refused_cleanly(result, output, before)


def test_engine_on_a_full_disk(disk, every_layer_onnx):
    output = disk / "model.engine"
    get_backend("onnxruntime").build(BuildRequest(every_layer_onnx, "fp32", 1, output))
    before = _snapshot(disk)
    fill(disk)
    result = run_cli(
        "build", "--engine", "onnxruntime", "--onnx", str(every_layer_onnx), "--output", str(output)
    )
    _assert_refused_cleanly(result, output, before)
    get_backend("onnxruntime").load(output, every_layer_onnx)  # the previous engine still loads


def test_sidecar_on_a_full_disk(disk, every_layer_onnx, tmp_path):
    """The engine fits, its sidecar does not: neither replaces the previous pair."""
    output = disk / "model.engine"
    get_backend("onnxruntime").build(BuildRequest(every_layer_onnx, "fp32", 1, output))
    before = _snapshot(disk)
    fill(disk)
    # Free exactly the pages of one engine: the new engine is written whole, then its sidecar fails.
    filler, page = disk / "filler", 4096
    pages = -(-filler.stat().st_size // page) - -(-output.stat().st_size // page)
    os.truncate(filler, pages * page)
    result = run_cli(
        "build", "--engine", "onnxruntime", "--onnx", str(every_layer_onnx), "--output", str(output)
    )
    _assert_refused_cleanly(result, output, before)
    assert json.loads(sidecar_path(output).read_bytes()) == json.loads(before["model.engine.json"])


def test_timing_result_on_a_full_disk(disk, every_layer_onnx, tmp_path):
    from yoloforge.datasets import write_substitute_set

    engine = tmp_path / "model.engine"
    get_backend("onnxruntime").build(BuildRequest(every_layer_onnx, "fp32", 1, engine))
    write_substitute_set(tmp_path / "images", 2, calibration=True)
    output = disk / "result.json"
    output.write_text(json.dumps(_timing_record("onnxruntime", 5.0)))
    before = _snapshot(disk)
    fill(disk)
    result = run_cli(
        "bench", "--engine", "onnxruntime", "--engine-file", str(engine), "--model", "every-layer",
        "--images", str(tmp_path / "images"), "--warmup-seconds", "0", "--seconds", "0",
        "--output", str(output),
    )  # fmt: skip
    # The iterations beside the result are written first, so the error names them.
    _assert_refused_cleanly(result, output.with_suffix(".parquet"), before)


def test_table_on_a_full_disk(disk, tmp_path):
    results = []
    for engine, median in (("opencv-darknet", 10.0), ("onnxruntime", 5.0)):
        results.append(tmp_path / f"{engine}.json")
        results[-1].write_text(json.dumps(_timing_record(engine, median)))
    output = disk / "benchmark.csv"
    assert run_cli("table", "--output", str(output), *map(str, results)).returncode == 0
    before = _snapshot(disk)
    # A new table that needs more room than the disk has left: many rows.
    for index in range(2000):
        shutil.copy(results[1], tmp_path / f"row-{index}.json")
        record = _timing_record("onnxruntime", 5.0)
        record["model"] = f"model-{index}"
        (tmp_path / f"row-{index}.json").write_text(json.dumps(record))
    fill(disk)
    rows = [str(tmp_path / f"row-{index}.json") for index in range(2000)]
    result = run_cli("table", "--output", str(output), *map(str, results), *rows)
    _assert_refused_cleanly(result, output, before)


def test_image_sets_on_a_full_disk(disk, tmp_path):
    command = [
        "images", "--eval-dir", str(disk / "images"), "--eval-count", "2", "--calibration-dir",
        str(disk / "calibration"), "--calibration-count", "1", "--cache-dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    assert run_cli(*command).returncode == 0
    before = _snapshot(disk)
    fill(disk)
    _assert_refused_cleanly(run_cli(*command), disk / "images", before)
