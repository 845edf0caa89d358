"""The measured compute ceilings of the roofline, and `yoloforge device` storing them."""

import itertools
import json
import time

import pytest

from yoloforge.ceiling import AGREEMENT
from yoloforge.cli import main


def test_measure_ceilings_on_the_cpu():
    pytest.importorskip("torch")
    from yoloforge.ceiling import ceiling_device, measure_ceilings

    ceilings = measure_ceilings()
    if ceiling_device()["kind"] == "cpu":
        assert set(ceilings) == {"fp32"}
    assert ceilings["fp32"]["tflops"] > 0 and ceilings["fp32"]["ms"] > 0
    assert "3x3" in ceilings["fp32"]["shape"]
    assert len(ceilings["fp32"]["stretch_ms"]) == 3 and isinstance(ceilings["fp32"]["agree"], bool)
    for ceiling in ceilings.values():
        assert ceiling["route"] in ceiling["routes"]
        assert ceiling["routes"][ceiling["route"]] == round(ceiling["tflops"], 1)


def test_the_ceiling_is_the_fastest_route():
    torch = pytest.importorskip("torch")
    from yoloforge.ceiling import CPU_SHAPE, _fastest

    routes = {"slow": lambda: time.sleep(0.004), "fast": lambda: time.sleep(0.001)}
    ceiling = _fastest(torch, "cpu", routes, CPU_SHAPE)
    assert ceiling["route"] == "fast"
    assert ceiling["routes"]["fast"] > 2 * ceiling["routes"]["slow"] > 0


def test_the_fp8_ceiling_is_fp16_where_fp16_is_faster():
    """The fp8 engine runs a chain in FP16 wherever that is faster, so its ceiling may be an FP16
    route: never one below the fp16 engine's."""
    torch = pytest.importorskip("torch")
    from yoloforge.ceiling import CPU_SHAPE, _fastest, fp8_engine_routes

    routes = fp8_engine_routes(
        {"FP8 kernel": lambda: time.sleep(0.004)}, {"conv2d": lambda: time.sleep(0.001)}
    )
    ceiling = _fastest(torch, "cpu", routes, CPU_SHAPE)
    assert ceiling["route"] == "conv2d, FP16" and set(ceiling["routes"]) == {"FP8 kernel", "conv2d, FP16"}


def test_device_stores_the_ceilings_beside_the_engine_probes(tmp_path):
    pytest.importorskip("torch")
    output = tmp_path / "local.json"
    assert main(["device", "--engine", "onnxruntime", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert report["ceilings"]["device"]["kind"] in ("cpu", "cuda")
    assert report["ceilings"]["precisions"]["fp32"]["tflops"] > 0
    assert main(["device", "--engine", "onnxruntime", "--no-ceilings", "--output", str(output)]) == 0
    without = json.loads(output.read_text())
    assert "ceilings" not in without
    # Engine fingerprints hold no timing: engine folders stay put whatever the convolution took.
    assert without["engines"] == report["engines"]


def _sleeper(seconds_of_call):
    """A window that takes as long as the next figure says: a machine whose load changes."""

    def window() -> float:
        start = time.perf_counter()
        time.sleep(next(seconds_of_call))
        return (time.perf_counter() - start) * 1e3

    return window


def test_stretches_that_agree_publish_a_trusted_figure():
    from yoloforge.ceiling import agreement, timed_stretches

    stretches = timed_stretches(_sleeper(itertools.repeat(0.004)), 0.15, 3)
    figure = agreement(stretches)
    assert len(stretches) == 3 and all(stretches)
    assert figure["agree"] and figure["spread"] <= AGREEMENT and 4 <= figure["ms"] < 40


def test_a_machine_busy_for_part_of_the_probe_gives_no_trusted_figure():
    from yoloforge.ceiling import agreement, timed_stretches

    # Calls three times slower after the first stretch's worth of them, as when another process starts.
    durations = itertools.chain(itertools.repeat(0.002, 25), itertools.repeat(0.006))
    figure = agreement(timed_stretches(_sleeper(durations), 0.15, 3))
    assert not figure["agree"] and figure["spread"] > AGREEMENT


def test_the_table_gives_no_fraction_of_a_ceiling_whose_stretches_disagree(tmp_path):
    from yoloforge.table import _ceilings, _fraction_cell

    device = {"kind": "cpu", "name": "x"}
    figures = {
        "fp32": {"tflops": 0.029, "agree": False, "spread": 0.4},
        "fp16": {"tflops": 1.0, "agree": True},
    }
    (tmp_path / "local.json").write_text(json.dumps({"ceilings": {"device": device, "precisions": figures}}))
    assert _ceilings([tmp_path / "local.json"]) == {("local", "cpu", "fp16"): 1.0}
    assert _fraction_cell(0.5) == "50%"
    assert _fraction_cell(3.2) == "320% (faster than the ceiling's convolution)"
    assert _fraction_cell(float("nan")) == ""
