"""Inputs a user can get wrong around engines: each is refused in one line naming the file."""

from __future__ import annotations

import json
import shutil

import onnx
import pytest

from tests.conftest import DATA, run_cli
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.backends.base import sidecar_path
from yoloforge.datasets import write_substitute_set
from yoloforge.device import fingerprint_id
from yoloforge.errors import YoloforgeError


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_substitute_set(folder, 2, calibration=True)
    return folder


@pytest.fixture(scope="module")
def engine(every_layer_onnx, tmp_path_factory):
    """An ONNX Runtime engine in the folder of this machine's fingerprint, as the workflow keeps it."""
    backend = get_backend("onnxruntime")
    here = fingerprint_id(backend.device_fingerprint())
    output = tmp_path_factory.mktemp("engines") / here / "onnxruntime" / "model.engine"
    backend.build(BuildRequest(every_layer_onnx, "fp32", 1, output))
    return output


def _bench(engine_file, onnx_file, images, tmp_path, fingerprint):
    output = tmp_path / "result.json"
    result = run_cli(
        "bench", "--engine", "onnxruntime", "--engine-file", str(engine_file), "--onnx", str(onnx_file),
        "--fingerprint", fingerprint, "--model", "m", "--images", str(images), "--warmup-seconds", "0",
        "--seconds", "0", "--output", str(output),
    )  # fmt: skip
    return result, output


def _one_line(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_bench_accepts_the_engine_where_it_was_built(engine, every_layer_onnx, images, tmp_path):
    result, output = _bench(engine, every_layer_onnx, images, tmp_path, engine.parent.parent.name)
    assert result.returncode == 0, result.stderr
    assert all(scope["iterations"] >= 3 for scope in json.loads(output.read_text())["scopes"])


def test_pool_takes_each_round_of_one_bench_once(engine, every_layer_onnx, images, tmp_path):
    rounds = []
    for index in range(2):
        rounds.append(tmp_path / f"round-{index}.json")
        result = run_cli(
            "bench", "--engine", "onnxruntime", "--engine-file", str(engine), "--model", "m",
            "--images", str(images), "--warmup-seconds", "0", "--seconds", "0", "--rounds", "2",
            "--round", str(index), "--output", str(rounds[-1]),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    output = tmp_path / "pooled.json"
    for given, fragment in (
        ([rounds[0]], "1 rounds given, the bench has 2"),
        ([rounds[0], rounds[0]], "not each of 0..1 once"),
    ):
        _one_line(run_cli("pool", "--output", str(output), *map(str, given)), str(rounds[0]), fragment)
        assert not output.exists() and not output.with_suffix(".parquet").exists()
    other = json.loads(rounds[1].read_text()) | {"precision": "fp16"}
    rounds[1].write_text(json.dumps(other))
    _one_line(run_cli("pool", "--output", str(output), *map(str, rounds)), str(rounds[1]), "precision differ")
    assert not output.exists()


def test_engine_copied_into_another_fingerprint_folder(engine, every_layer_onnx, images, tmp_path):
    copy = tmp_path / "intel-xeon-0123456789" / "onnxruntime" / engine.name
    copy.parent.mkdir(parents=True)
    shutil.copy(engine, copy)
    shutil.copy(sidecar_path(engine), sidecar_path(copy))
    result, output = _bench(copy, every_layer_onnx, images, tmp_path, "intel-xeon-0123456789")
    _one_line(result, str(copy), "lies in the folder of intel-xeon-0123456789")
    assert not output.exists()


def test_onnx_edited_after_the_build(engine, every_layer_onnx, images, tmp_path):
    model = onnx.load(every_layer_onnx)
    model.metadata_props.add(key="edited", value="by hand")
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    result, output = _bench(engine, edited, images, tmp_path, engine.parent.parent.name)
    _one_line(result, str(edited), "ONNX file changed since the engine", "rebuild the engine")
    assert not output.exists()


# Named to sort first: the build's output check reads only the first CHECK_IMAGES images.
@pytest.mark.parametrize(
    ("name", "content"),
    [("0-notes.png", b"these are not pixels\n"), ("0-cut.jpg", None), ("0-empty.jpg", b"")],
)
def test_image_that_is_not_an_image(every_layer_onnx, images, tmp_path, name, content):
    folder = tmp_path / "images"
    shutil.copytree(images, folder)
    if content is None:  # a real JPEG, cut short
        content = next(folder.glob("*.jpg")).read_bytes()[:200]
    (folder / name).write_bytes(content)
    output = tmp_path / "engine" / "model.engine"
    result = run_cli(
        "build", "--engine", "onnxruntime", "--onnx", str(every_layer_onnx), "--check-images", str(folder),
        "--output", str(output),
    )  # fmt: skip
    _one_line(result, str(folder / name), "not a readable image")
    assert not output.parent.exists() or not list(output.parent.iterdir())


def test_darknet_weights_changed_after_the_build(every_layer_onnx, synthetic_weights, tmp_path):
    weights = tmp_path / "model.weights"
    shutil.copy(synthetic_weights(DATA / "every-layer.cfg"), weights)
    output = tmp_path / "opencv.engine"
    backend = get_backend("opencv-darknet")
    backend.build(BuildRequest(every_layer_onnx, "fp32", 1, output, DATA / "every-layer.cfg", weights))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(YoloforgeError, match="weights changed or moved since this engine was built"):
        backend.load(output)
