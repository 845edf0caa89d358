"""The measured compute ceilings of the roofline, and `yoloforge device` storing them."""

import json

import pytest

from yoloforge.cli import main


def test_measure_ceilings_on_the_cpu():
    pytest.importorskip("torch")
    from yoloforge.ceiling import ceiling_device, measure_ceilings

    ceilings = measure_ceilings()
    if ceiling_device()["kind"] == "cpu":
        assert set(ceilings) == {"fp32"}
    assert ceilings["fp32"]["tflops"] > 0 and ceilings["fp32"]["ms"] > 0
    assert "3x3" in ceilings["fp32"]["shape"]


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
