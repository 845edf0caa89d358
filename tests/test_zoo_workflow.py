"""The newer Darknet families through the whole workflow: CI's config .test/zoo/config.yaml
(yolov7-tiny and yolov4-csp on synthetic weights), every CPU engine at fp32 against the reference."""

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT
from tests.test_workflow import snakemake
from yoloforge.backends.base import onnx_metadata

pytestmark = pytest.mark.workflow

CI_CONFIG = ROOT / ".test" / "zoo" / "config.yaml"
# Darknet's [net] letter_box of each cfg: yolov4-csp letterboxes, yolov7-tiny stretches (the default).
LETTER_BOX = {"yolov7-tiny": "0", "yolov4-csp": "1"}


def run_config(config: dict, workdir: Path) -> Path:
    """Snakemake on `config` in `workdir`, its local cfg paths taken from the repository root;
    the results folder."""
    for model in config["models"].values():
        model["cfg"]["sources"] = [
            source if "://" in source else str(ROOT / source) for source in model["cfg"]["sources"]
        ]
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "results"


def check_every_engine_agrees(results: Path, config: dict) -> None:
    """Every configured model and engine has timing rows and an accuracy row that passes the
    agreement gate against a reference that found boxes to agree on."""
    engines = sorted(config["engines"])
    models = sorted(config["models"])
    table = pd.read_csv(results / "benchmark.csv")
    assert sorted(set(zip(table["model"], table["engine"], strict=True))) == [
        (model, engine) for model in models for engine in engines
    ]
    assert "unavailable" not in table or table["unavailable"].isna().all()
    assert (table["median_ms"] > 0).all()
    for model in models:
        reference = json.loads(
            (results / "reference" / f"{model}-{config['models'][model]['sizes'][0]}.json").read_text()
        )
        assert reference["reference"] == "opencv-darknet fp32"
        assert sum(len(image["boxes"]) for image in reference["images"]) > 0, model
    accuracy = [json.loads(path.read_text()) for path in (results / "accuracy").glob("*/*/*/*-fp32.json")]
    assert sorted((record["model"], record["engine"]) for record in accuracy) == [
        (model, engine) for model in models for engine in engines
    ]
    for record in accuracy:
        assert record["accuracy_gate"] == "pass", record
        assert record["agreement_map50"] >= 0.99, record


def test_zoo_models_agree_with_the_reference_on_every_cpu_engine(tmp_path):
    config = yaml.safe_load(CI_CONFIG.read_text())
    assert sorted(config["models"]) == sorted(LETTER_BOX)
    results = run_config(config, tmp_path)
    check_every_engine_agrees(results, config)
    # Each model was fitted to its input as its cfg says, by the reference and every engine.
    for model, letter_box in LETTER_BOX.items():
        size = config["models"][model]["sizes"][0]
        assert onnx_metadata(results / "onnx" / f"{model}-{size}.onnx")["letter_box"] == letter_box
        reference = json.loads((results / "reference" / f"{model}-{size}.json").read_text())
        assert reference["letter_box"] is (letter_box == "1")
