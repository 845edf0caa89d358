"""A bench's records as the package makes them: one timing round of a real engine, the pooling of
rounds, and the row of an engine that cannot run here."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from yoloforge.backends import BuildRequest, get_backend
from yoloforge.bench import (
    Round,
    latencies_path,
    pool,
    probe_reason,
    time_round,
    unavailable_row,
    write_result,
)
from yoloforge.datasets import write_substitute_set
from yoloforge.errors import YoloforgeError
from yoloforge.probe import probe_device
from yoloforge.timing import SCOPES, STAGES, TimingBudget

# The keys of a timing result, in order: the table and the workflow read them.
RESULT_KEYS = [
    "model", "width", "height", "engine", "precision", "batch", "target", "threads", "rounds",
    "round_started", "round_seconds", "scopes", "flops_per_image", "build_seconds", "build_wait_seconds",
    "engine_bytes", "weights_source", "weights_verified", "images_source", "image_formats", "device",
    "libraries",
]  # fmt: skip
LATENCY_COLUMNS = [
    "scope", "round", "iteration", "latency_ms", *(f"stage_{stage}_ms" for stage in STAGES),
    "model", "width", "height", "engine", "precision", "batch",
]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    write_substitute_set(folder, 2, calibration=False)
    return folder


@pytest.fixture(scope="module")
def engine(every_layer_onnx, tmp_path_factory):
    output = tmp_path_factory.mktemp("engines") / "model-b2.engine"
    get_backend("onnxruntime").build(BuildRequest(every_layer_onnx, "fp32", 2, output))
    return output


def _round(engine, images, index: int, **changes) -> Round:
    budget = TimingBudget(warmup_seconds=0, seconds=0.02, min_iterations=4, rounds=2)
    spec = {"engine": "onnxruntime", "engine_file": engine, "images": images, "model": "m", "batch": 2}
    return Round(**(spec | {"rotate": 1, "budget": budget, "index": index, "target": "t"} | changes))


def test_a_round_records_its_row_and_every_iteration(engine, images):
    result, latencies = time_round(_round(engine, images, index=1))
    assert list(result) == RESULT_KEYS
    assert (result["model"], result["engine"], result["precision"], result["batch"]) == (
        "m",
        "onnxruntime",
        "fp32",
        2,
    )
    assert (result["target"], result["rounds"], len(result["round_started"])) == ("t", 2, 1)
    [phases] = result["round_seconds"]
    assert list(phases) == ["inputs", "load", "timing"] and all(seconds >= 0 for seconds in phases.values())
    # The timing phase holds at least the round's budget: its warm-up and its share of seconds.
    assert phases["timing"] >= 0.01
    assert [scope["scope"] for scope in result["scopes"]] == list(SCOPES)
    # Half of min_iterations per round, in each scope.
    assert all(scope["iterations"] >= 2 for scope in result["scopes"])
    assert list(latencies.columns) == LATENCY_COLUMNS
    assert set(latencies["round"]) == {1}
    assert (latencies["engine"] == "onnxruntime").all() and (latencies["batch"] == 2).all()
    assert latencies.groupby("scope").size().to_dict() == {
        scope["scope"]: scope["iterations"] for scope in result["scopes"]
    }


def test_a_round_outside_the_bench_is_refused_before_the_engine_loads(engine, images):
    with pytest.raises(YoloforgeError, match="round 2 of 2: rounds count from 0"):
        time_round(_round(engine, images, index=2))


def test_pooling_keeps_every_round_iteration_and_start(engine, images, tmp_path):
    paths = []
    for index in range(2):
        paths.append(tmp_path / f"round-{index}.json")
        write_result(paths[-1], *time_round(_round(engine, images, index)))
        assert latencies_path(paths[-1]).exists()
    rounds = [json.loads(path.read_text()) for path in paths]
    result, latencies = pool(paths)
    assert sorted(result) == sorted(RESULT_KEYS)  # as read back from JSON
    assert result["round_started"] == [start for record in rounds for start in record["round_started"]]
    assert result["round_seconds"] == [phases for record in rounds for phases in record["round_seconds"]]
    for scope in result["scopes"]:
        per_round = [next(s for s in record["scopes"] if s["scope"] == scope["scope"]) for record in rounds]
        assert scope["iterations"] == sum(s["iterations"] for s in per_round)
        assert scope["round_medians_ms"] == pytest.approx([s["median_ms"] for s in per_round])
    frames = [pd.read_parquet(latencies_path(path)) for path in paths]
    assert len(latencies) == sum(len(frame) for frame in frames)
    assert set(latencies["round"]) == {0, 1}


def test_pooling_refuses_rounds_of_another_bench(engine, images, tmp_path):
    paths = [tmp_path / "round-0.json", tmp_path / "round-1.json"]
    write_result(paths[0], *time_round(_round(engine, images, 0)))
    write_result(paths[1], *time_round(_round(engine, images, 1, target="elsewhere")))
    with pytest.raises(YoloforgeError, match="target differ") as error:
        pool(paths)
    assert str(paths[1]) in str(error.value)


def test_an_unavailable_row_says_why_in_every_scope(tmp_path):
    device = tmp_path / "device.json"
    device.write_text(json.dumps(probe_device(["onnxruntime", "cudnn-fused"], ["bf16"], ceilings=False)))
    row = unavailable_row(
        probe_reason(device, "onnxruntime", "bf16"),
        model="m",
        width=64,
        height=32,
        engine="onnxruntime",
        precision="bf16",
        batch=4,
        target="t",
    )
    assert row["unavailable"] == "onnxruntime has no bf16 mode"
    assert [scope["scope"] for scope in row["scopes"]] == list(SCOPES)
    assert (row["model"], row["width"], row["height"], row["batch"], row["target"]) == ("m", 64, 32, 4, "t")
    with pytest.raises(YoloforgeError, match="the device probe has no openvino bf16") as error:
        probe_reason(device, "openvino", "bf16")
    assert str(device) in str(error.value)
