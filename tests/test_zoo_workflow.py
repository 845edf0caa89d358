"""The newer Darknet families through the whole workflow: CI's config .test/zoo/config.yaml
(yolov7-tiny and yolov4-csp on synthetic weights), every CPU engine at fp32 against the reference."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_workflow import snakemake
from yoloforge.backends.base import onnx_metadata

pytestmark = pytest.mark.workflow

ZOO_CONFIG = ROOT / ".test" / "zoo" / "config.yaml"
# Darknet's [net] letter_box of each cfg: yolov4-csp letterboxes, yolov7-tiny stretches (the default).
LETTER_BOX = {"yolov7-tiny": "0", "yolov4-csp": "1"}


def run_merged(config: Path, workdir: Path) -> Path:
    """Snakemake on config.yaml with `config` merged over it, in `workdir` (where models/ is the
    repository's); the results folder."""
    shutil.copy(ROOT / "config.yaml", workdir / "config.yaml")
    (workdir / "models").symlink_to(ROOT / "models")
    result = snakemake(workdir, "--configfile", str(workdir / "config.yaml"), str(config), "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "results"


def check_every_engine_agrees(results: Path, models: dict[str, int], engines: list[str]) -> None:
    """Every model (name -> size) and engine has timing rows and an accuracy row that passes the
    agreement gate against a reference that found boxes to agree on."""
    table = pd.read_csv(results / "benchmark.csv")
    pairs = sorted((model, engine) for model in models for engine in engines)
    assert sorted(set(zip(table["model"], table["engine"], strict=True))) == pairs
    assert table["unavailable"].isna().all() and (table["median_ms"] > 0).all()
    for model, size in models.items():
        reference = json.loads((results / "reference" / f"{model}-{size}.json").read_text())
        assert reference["reference"] == "opencv-darknet fp32"
        assert sum(len(image["boxes"]) for image in reference["images"]) > 0, model
    accuracy = [json.loads(path.read_text()) for path in (results / "accuracy").glob("*/*/*/*-fp32.json")]
    assert sorted((record["model"], record["engine"]) for record in accuracy) == pairs
    for record in accuracy:
        assert record["accuracy_gate"] == "pass", record
        assert record["agreement_map50"] >= 0.99, record


def test_zoo_models_agree_with_the_reference_on_every_cpu_engine(tmp_path):
    config = yaml.safe_load(ZOO_CONFIG.read_text())
    models = {name: entry["sizes"][0] for name, entry in config["models"].items() if entry["sizes"]}
    assert sorted(models) == sorted(LETTER_BOX)
    engines = [engine for engine, precisions in config["engines"].items() if precisions]
    results = run_merged(ZOO_CONFIG, tmp_path)
    check_every_engine_agrees(results, models, engines)
    # Each model was fitted to its input as its cfg says, by the reference and every engine.
    for model, letter_box in LETTER_BOX.items():
        assert onnx_metadata(results / "onnx" / f"{model}-{models[model]}.onnx")["letter_box"] == letter_box
        reference = json.loads((results / "reference" / f"{model}-{models[model]}.json").read_text())
        assert reference["letter_box"] is (letter_box == "1")
