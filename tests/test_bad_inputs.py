"""Inputs a user can get wrong around engines and in the config: each is refused in one line naming
the file or the key."""

from __future__ import annotations

import fcntl
import json
import os
import shutil

import onnx
import pytest
import yaml

from tests.conftest import DATA, ROOT, run_cli
from tests.test_workflow import snakemake
from yoloforge.backends import BuildRequest, get_backend
from yoloforge.backends.base import sidecar_path
from yoloforge.config import check_config, load_yaml, semantic_error
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


@pytest.fixture
def device_taken(tmp_path, monkeypatch):
    """Another job holds the device lock for the test: a bad engine must be refused at once, not
    after waiting for it."""
    lock_file = tmp_path / "device.lock"
    monkeypatch.setenv("YOLOFORGE_DEVICE_LOCK", str(lock_file))
    descriptor = os.open(lock_file, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    yield
    os.close(descriptor)


def test_engine_copied_into_another_fingerprint_folder(
    engine, every_layer_onnx, images, tmp_path, device_taken
):
    copy = tmp_path / "intel-xeon-0123456789" / "onnxruntime" / engine.name
    copy.parent.mkdir(parents=True)
    shutil.copy(engine, copy)
    shutil.copy(sidecar_path(engine), sidecar_path(copy))
    result, output = _bench(copy, every_layer_onnx, images, tmp_path, "intel-xeon-0123456789")
    _one_line(result, str(copy), "lies in the folder of intel-xeon-0123456789")
    assert not output.exists()


def test_onnx_edited_after_the_build(engine, every_layer_onnx, images, tmp_path, device_taken):
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


# The config: every mistake stops the run before any job, in one line naming the key path.
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def small_config() -> dict:
    return {
        "models": {
            "net": {
                "cfg": {"sources": [str(DATA / "every-layer.cfg")]},
                "weights": {"sources": ["synthetic"]},
                "sizes": [64],
            }
        },
        "engines": {"onnxruntime": ["fp32"]},
        "batches": [1],
        "images": {"count": 2, "calibration_count": 2},
        "timing": {"warmup_seconds": 0, "seconds": 0.1, "min_iterations": 2},
    }


def _config_error(config: dict, overrides: dict | None = None) -> str:
    with pytest.raises(YoloforgeError) as error:
        check_config(config, SCHEMA, overrides=overrides)
    message = str(error.value)
    assert message.startswith("config: ") and "\n" not in message and len(message) < 400, message
    return message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"engines": {"onnxruntime": [], "openvino": []}}, "engines: every engine has an empty list"),
        ({"batches": [1, 100000]}, "batches[1]: 100000 is greater than the maximum of 1024"),
        ({"images": {"count": 100000}}, "images.count: 100000 is greater than the maximum of 5000"),
        ({"timing": {"warmup_seconds": 0, "seconds": 1e9, "min_iterations": 1}}, "timing.seconds: "),
        ({"colour": "red"}, "top level: unexpected key 'colour' (allowed: strict, download, models,"),
        ({"engines": {"onnx": ["fp32"]}}, "engines: 'onnx' is not one of tensorrt, onnxruntime,"),
        ({"strict": True}, "models.net.cfg.sha256: strict is true, so every asset needs its sha256"),
        (
            {"engine_options": {"onnxruntime": {"x; rm": 1}}},
            "engine_options.onnxruntime: unexpected key 'x; rm' (allowed: none)",
        ),
    ],
)
def test_config_mistakes_are_one_line_naming_the_key(change, expected):
    assert expected in _config_error(small_config() | change)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (8192, "models.net.sizes[0]: 8192 is greater than the maximum of 4096"),
        ("96x65", "models.net.sizes: size 96x65 is not a multiple of 32 on each side"),
        ("8192x64", "models.net.sizes: size 8192x64 has a side above the maximum of 4096"),
        ("a'b", 'models.net.sizes[0]: "a\'b" is not WIDTHxHEIGHT, each a multiple of 32 up to 4096'),
    ],
)
def test_sizes_have_bounds(size, expected):
    config = small_config()
    config["models"]["net"]["sizes"] = [size]
    assert expected in _config_error(config)


def test_a_plan_that_cannot_fit_this_machine_stops_before_any_job():
    config = small_config() | {"batches": [1024]}
    config["models"]["net"]["sizes"] = [4096]  # 1024 images of 4096x4096: 1 TiB for the first layer
    assert semantic_error(config, memory_bytes=64 * 2**30).startswith("batches, models.*.sizes: batch 1024")
    # On a cluster target the submitting machine's memory says nothing.
    config["targets"] = {"gpu": {"resources": {"slurm_partition": "gpu"}}}
    assert semantic_error(config, memory_bytes=64 * 2**30) is None


def test_command_line_overrides_get_yaml_types():
    """What Snakemake hands over for --config batches=[1,8] strict=false 'timing={seconds: 2}'."""
    config = small_config()
    check_config(
        config, SCHEMA, overrides={"batches": ["1", "8"], "strict": "false", "timing": {"seconds": "2"}}
    )
    assert config["batches"] == [1, 8] and config["strict"] is False
    assert config["timing"] == {"warmup_seconds": 0, "seconds": 2, "min_iterations": 2}
    assert "strict: 'yes' is not of type 'boolean'" in _config_error(small_config(), {"strict": "'yes'"})


def test_a_key_written_twice_and_a_yaml_error_name_their_line(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("engines:\n  onnxruntime: [fp32, fp16]\n  openvino: [fp32]\n  onnxruntime: [int8]\n")
    with pytest.raises(YoloforgeError) as error:
        load_yaml(twice)
    assert (
        str(error.value) == f"{twice}: line 4, column 3: key 'onnxruntime' is written twice (first on line 2)"
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text("batches: [1, 2\nimages: {count: 2}\n")
    with pytest.raises(YoloforgeError, match=rf"^{broken}: line 2, column \d+: "):
        load_yaml(broken)


@pytest.mark.workflow
def test_the_workflow_refuses_a_configfile_with_a_key_twice(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(small_config()))
    (tmp_path / "extra.yaml").write_text("engines:\n  onnxruntime: [fp32]\n  onnxruntime: [fp16]\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "extra.yaml"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        f"yoloforge: error: {tmp_path / 'extra.yaml'}: line 3, column 3: key 'onnxruntime' is written twice"
        " (first on line 2)"
    )


@pytest.mark.workflow
def test_a_failed_jobs_reason_is_on_the_console(tmp_path):
    config = small_config()
    config["models"]["net"]["cfg"]["sources"] = [str(tmp_path / "missing.cfg"), str(tmp_path)]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "1", "resources/models/net.cfg")
    assert result.returncode != 0
    reason = (
        f"yoloforge: error: resources/models/net.cfg: every source failed: {tmp_path / 'missing.cfg'}:"
        f" local source does not exist; {tmp_path}: local source is not a file"
    )
    assert reason in result.stderr.splitlines()
    assert reason in (tmp_path / "logs" / "fetch" / "net-cfg.log").read_text()
