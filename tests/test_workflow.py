"""The workflow itself, through Snakemake, on a tiny config."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ACCURACY_KEYS, DATA, ROOT

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        *args,
    ]
    # Rules call `python`: make it this interpreter, as an activated environment would.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env)


@pytest.fixture
def workdir(tmp_path, synthetic_weights):
    weights = synthetic_weights(DATA / "every-layer.cfg", seed=9)
    shutil.copy(weights, tmp_path / "local.weights")
    cfg = {"sources": [str(DATA / "every-layer.cfg")]}
    config = {
        "models": {
            "fetched-net": {
                "cfg": cfg,
                "weights": {"sources": [str(tmp_path / "local.weights")]},
                "sizes": [64, "96x64"],
            },
            "synthetic-net": {
                "cfg": cfg,
                "weights": {"sources": ["synthetic"], "synthetic_seed": 3},
                "sizes": [64],
            },
        },
        "engines": {"onnxruntime": ["fp32"], "opencv-darknet": ["fp32"], "tensorrt": ["fp16"]},
        "batches": [1, 2],
        "images": {"count": 3, "calibration_count": 2},
        "timing": {"warmup_seconds": 0, "seconds": 0.1, "min_iterations": 2, "rounds": 2},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def test_tiny_config_runs_end_to_end_and_reruns_nothing(workdir):
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    results = workdir / "results"
    table = pd.read_csv(results / "benchmark.csv")
    assert len(table) == 3 * 3 * 2 * 2  # model sizes x engines x batches x scopes
    assert set(table["engine"]) == {"onnxruntime", "opencv-darknet", "tensorrt"}
    assert table.groupby("scope").size().to_dict() == {"end-to-end": 18, "model": 18}
    pd.testing.assert_frame_equal(
        pd.read_parquet(results / "benchmark.parquet"), table, check_dtype=False, rtol=1e-3
    )
    # The markdown table holds the timed rows; the unavailable ones (tensorrt) are listed in the summary.
    assert (results / "benchmark.md").read_text().count("\n") == table["median_ms"].notna().sum() + 2
    # The tail beside the median, wherever latencies are shown.
    assert "| p50 ms | p99 ms |" in (results / "benchmark.md").read_text().splitlines()[0]
    timed_rows = table[table["median_ms"].notna()]
    assert (timed_rows["p99_ms"] >= timed_rows["median_ms"]).all()
    assert "<svg" in (results / "report.html").read_text()
    summary = (results / "summary.md").read_text()
    assert summary.startswith("# Which engine to deploy") and "| tensorrt fp16 |" in summary
    assert summary in result.stdout  # printed as the run's last output
    timed = 3 * 2 * 2  # timed sizes x engines x batches
    assert len(list((results / "bench").glob("*/*/*/*.parquet"))) == timed
    assert len(list((results / "bench").glob("*/*/*/*/round-*.parquet"))) == timed * 2
    assert (table["rounds"].dropna() == 2).all()
    # A later round waits behind every earlier one: round 0 of every engine before any round 1.
    started = [json.loads(path.read_text())["round_started"] for path in results.glob("bench/*/*/*/*.json")]
    assert max(first for first, _ in started) <= min(second for _, second in started)
    # Not installable here: its rows say why, instead of failing the workflow.
    tensorrt = table[table["engine"] == "tensorrt"]
    assert tensorrt["unavailable"].str.contains("tensorrt is not installed").all()
    assert tensorrt["median_ms"].isna().all()
    table = table[table["engine"] != "tensorrt"]
    assert (table.loc[table["engine"] == "opencv-darknet", "speedup"] == 1).all()
    assert (table["median_ms"] > 0).all() and (table["iterations"] >= 2).all()
    sources = dict(zip(table["model"], table["weights_source"], strict=False))
    assert sources["synthetic-net"] == "synthetic"
    assert sources["fetched-net"].endswith("local.weights")
    assert set(table["weights_verified"]) == {"no"}  # no sha256 in this config, synthetic or local
    assert set(table.loc[table["model"] == "fetched-net", "width"]) == {64, 96}
    assert set(table["images_source"]) == {"substitute"}
    end_to_end = table[table["scope"] == "end-to-end"]
    stages = end_to_end.filter(like="stage_")
    # Medians of stages, each a few ms here, against the median of whole iterations: on a loaded
    # CPU (the default config's run beside this one) their sum came out above 1.2x once.
    assert (stages > 0).all().all() and (stages.sum(axis=1) <= end_to_end["median_ms"] * 1.5).all()
    assert table[table["scope"] == "model"].filter(like="stage_").isna().all().all()
    assert (table["achieved_tflops"] > 0).all() and (table["gflops_per_image"] > 0).all()
    assert set(table["device_kind"]) == {"cpu"} and table["git_commit"].str.len().eq(40).all()
    assert table["config_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    # Every engine that runs here is scored against the reference on every image there is.
    accuracy = [
        json.loads(path.read_text()) for path in (workdir / "results" / "accuracy").glob("*/*/*/*-fp32.json")
    ]
    assert sorted((a["model"], a["width"], a["height"], a["engine"]) for a in accuracy) == sorted(
        (model, width, 64, engine)
        for model, width in (("fetched-net", 64), ("fetched-net", 96), ("synthetic-net", 64))
        for engine in ("onnxruntime", "opencv-darknet")
    )
    assert all(set(a) == ACCURACY_KEYS for a in accuracy)
    assert {(a["images"], a["batch"], a["reference"], a["accuracy_gate"]) for a in accuracy} == {
        (3, 1, "opencv-darknet fp32", "pass")
    }
    assert len(list((workdir / "results" / "detections").glob("*/*/*/*/*.jpg"))) == 6 * 3
    assert table.loc[table["engine"] != "tensorrt", "accuracy_gate"].eq("pass").all()

    again = snakemake(workdir, "--cores", "2")
    assert again.returncode == 0
    assert "Nothing to be done" in again.stdout + again.stderr

    # A results folder that holds only another device's (or library version's) engines and
    # timings, in their fingerprint folders, and no table: a run here leaves them alone and builds
    # and times this machine's own into its fingerprint's folders.
    for kind in ("engines", "bench", "accuracy", "detections"):
        for folder in list((results / kind / "local").iterdir()):
            folder.rename(folder.parent / f"other-device-{folder.name}")
    for table_file in results.glob("benchmark.*"):
        table_file.unlink()
    engines = results / "engines" / "local"
    elsewhere = {path: path.stat().st_mtime_ns for path in results.rglob("other-device-*/**/*")}
    rebuilt = snakemake(workdir, "--cores", "2")
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert {path: path.stat().st_mtime_ns for path in elsewhere} == elsewhere
    assert len(list(engines.glob("other-device-*/*/*.engine"))) == 3 * 2 * 2
    assert len(list(engines.glob("[!o]*/*/*.engine"))) == 3 * 2 * 2
    report = snakemake(workdir, "--report", str(workdir / "snakemake-report.zip"))
    assert report.returncode == 0, report.stderr[-3000:]
    assert (workdir / "snakemake-report.zip").stat().st_size > 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engines": {"tensorflow": ["fp32"]}}, "tensorflow"),
        ({"engines": {"onnxruntime": ["fp64"]}}, "fp64"),
        ({"batches": [0]}, "minimum"),
        ({"accuracy": {"images": 0}}, "minimum"),
        ({"accuracy": {"max_map_drop": 2}}, "maximum"),
        ({"colour": "red"}, "top level: unexpected key 'colour' (allowed: strict, download,"),
        ({"timing": {"warmup_seconds": 0, "seconds": -1, "min_iterations": 2}}, "minimum"),
        ({"targets": {"a100": {"resources": {"gpu": 2}}}}, "'gpu' should not be valid"),
        ({"targets": {"A100": {}}}, "targets (a key): 'A100' is not a match of"),
        ({"models.synthetic-net.sizes": ["96x65"]}, "size 96x65 is not a multiple of 32"),
    ],
)
def test_bad_config_is_rejected_before_any_job(workdir, change, message):
    _change_config(workdir, change)
    result = snakemake(workdir, "-n")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (workdir / "results").exists()


def _change_config(workdir: Path, change: dict) -> dict:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for key, value in change.items():  # "models.NAME.KEY" sets a key of one model
        *parents, last = key.split(".") if key.startswith("models.") else [key]
        target = config
        for parent in parents:
            target = target[parent]
        target[last] = value
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"timing": {"warmup_seconds": 0, "seconds": 1, "min_iterations": -3}},
            "-3 is less than the minimum",
        ),
        (
            {"timing": {"warmup_seconds": 0, "seconds": 1, "min_iterations": 2, "runs": 3}},
            "'runs' was unexpected",
        ),
        ({"images": {"count": 3, "colour": "red"}}, "'colour' was unexpected"),
        ({"images": {"count": 0}}, "0 is less than the minimum"),
        ({"batches": [1, "two"]}, "'two' is not of type 'integer'"),
        ({"batches": [1, 1]}, "non-unique elements"),
        ({"engines": {}}, "should be non-empty"),
        ({"engine_options": {"tensorflow": {}}}, "'tensorflow' is not one of"),
        ({"models.synthetic-net.sizes": [100]}, "100 is not valid under any of the given schemas"),
        ({"models.synthetic-net.sizes": [0]}, "0 is not valid under any of the given schemas"),
        ({"models.synthetic-net.precision": "fp16"}, "'precision' was unexpected"),
        ({"models.synthetic-net.weights": {"sources": [], "sha256": "0" * 64}}, "should be non-empty"),
        ({"models.synthetic-net.weights": {"sources": ["synthetic"], "sha256": "abc"}}, "does not match"),
        ({"strict": "yes"}, "'yes' is not of type 'boolean'"),
    ],
)
def test_schema_rejects_bad_values(workdir, change, message):
    """The schema the Snakefile validates against (in-process: a Snakemake start per case is slow)."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    config = _change_config(workdir, change)
    with pytest.raises(WorkflowError) as error:
        validate(config, str(ROOT / "workflow" / "schemas" / "config.schema.yaml"))
    assert message in str(error.value.args) + str(error.value.__cause__)


def test_default_config_dry_run_and_lint():
    assert (
        subprocess.run([sys.executable, "-m", "snakemake", "-n"], cwd=ROOT, capture_output=True).returncode
        == 0
    )
    lint = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _network_namespace_works() -> bool:
    return subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0


offline = pytest.mark.skipif(not _network_namespace_works(), reason="needs `unshare --net` (root)")


TEST_CONFIG = ROOT / ".test" / "offline" / "config.yaml"


@pytest.fixture
def offline_run(tmp_path):
    """The default config with .test/offline/config.yaml merged over it (every rule and engine of
    the default run, on a small model), in a fresh directory, inside a network namespace with no
    network."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / "models").symlink_to(ROOT / "models")

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [
            "unshare",
            "--net",
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
        ]
        command += [
            "--directory",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "config.yaml"),
            str(TEST_CONFIG),
        ]
        command += ["--cores", "2", *args]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(command, capture_output=True, text=True, env=env)

    return run


@offline
@pytest.mark.slow
def test_test_config_completes_offline_on_fallbacks(offline_run, tmp_path):
    result = offline_run()
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "results" / "benchmark.csv")
    config = yaml.safe_load(TEST_CONFIG.read_text())
    rows = sum(len(p) for p in config["engines"].values()) * len(config["batches"])
    assert len(table) == rows * 2  # one model size; scopes: model, end-to-end
    assert set(table["model"]) == {"yolov3-tiny"}
    assert (tmp_path / "results" / "report.html").exists()
    timed = table[table["unavailable"].isna()]
    # Every engine that runs on a CPU is timed and scored; the GPU-only ones say why they are not.
    assert set(timed["engine"]) == {"onnxruntime", "openvino", "torch-eager", "torch-aoti", "opencv-darknet"}
    assert set(table.loc[table["unavailable"].notna(), "engine"]) == {"tensorrt", "cudnn-fused"}
    assert set(timed["weights_source"]) == {"synthetic"}
    assert set(timed["images_source"]) == {"substitute"}
    assert (timed["median_ms"] > 0).all() and (timed["rounds"] == 2).all()
    assert timed["accuracy_gate"].notna().all()
    fp32 = timed[timed["precision"] == "fp32"]
    assert fp32["accuracy_gate"].eq("pass").all()
    provenance = yaml.safe_load((tmp_path / "resources" / "weights" / "yolov3-tiny.weights.json").read_text())
    assert [failure.split(": ")[0] for failure in provenance["failed_sources"]] == config["models"][
        "yolov3-tiny"
    ]["weights"]["sources"][:-1]
    again = offline_run()
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


@offline
def test_strict_offline_stops_before_any_engine(offline_run, tmp_path):
    result = offline_run("--config", "strict=True", "--keep-going")
    assert result.returncode != 0
    assert not (tmp_path / "results" / "engines").exists()
    # Whichever fallback is reached first (synthetic weights, substitute images, an engine that cannot
    # run here) stops the run, naming strict mode.
    logs = "".join(path.read_text() for path in (tmp_path / "logs").rglob("*.log"))
    messages = result.stdout + result.stderr + logs
    assert "strict mode allows no" in messages or "strict: tensorrt" in messages


@pytest.mark.parametrize(
    "extra",
    [
        *[[path.name] for path in sorted((ROOT / "workflow" / "configs").glob("*.yaml"))],
        ["gpu.yaml", "zoo.yaml", "offline.yaml"],  # the GPU run's merge
    ],
)
def test_each_shipped_config_plans(tmp_path, extra):
    """Every config under workflow/configs, merged over config.yaml as its header says, passes
    the schema and the checks and plans a run."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    files = [str(tmp_path / "config.yaml"), *(str(ROOT / "workflow" / "configs" / name) for name in extra)]
    result = snakemake(tmp_path, "-n", "--configfile", *files)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "results/device/local.json" in result.stdout + result.stderr
