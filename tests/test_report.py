"""The comparison table, accuracy columns, the HTML report (in a real browser) and `compare`."""

import html
import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import DATA, ROOT
from yoloforge.cli import main
from yoloforge.darknet.convert import convert
from yoloforge.datasets import write_image_set
from yoloforge.errors import YoloforgeError
from yoloforge.report import FAIL_MARK, write_report
from yoloforge.summary import summarize
from yoloforge.table import build_table, read_table

ENGINES = ("onnxruntime", "opencv-darknet")
BATCHES = (1, 2)
MODEL = "every-layer"


def _bench(folder, images, onnx, engine, batch, output):
    engine_file = folder / f"{engine}-b{batch}.engine"
    if not engine_file.exists():
        cfg = DATA / "every-layer.cfg"
        args = ["build", "--engine", engine, "--onnx", str(onnx), "--batch", str(batch)]
        assert (
            main(
                [
                    *args,
                    "--cfg",
                    str(cfg),
                    "--weights",
                    str(folder / "w.weights"),
                    "--output",
                    str(engine_file),
                ]
            )
            == 0
        )
    args = ["bench", "--engine", engine, "--engine-file", str(engine_file), "--model", MODEL]
    args += ["--images", str(images), "--batch", str(batch), "--onnx", str(onnx), "--rotate", "2"]
    args += ["--warmup-seconds", "0", "--seconds", "0.1", "--rounds", "2"]
    rounds = [f"{output}-round-{index}.json" for index in range(2)]
    for index, round_output in enumerate(rounds):
        assert main([*args, "--round", str(index), "--output", round_output]) == 0
    assert main(["pool", "--output", f"{output}.json", *rounds]) == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory, synthetic_weights):
    """Two real timing runs (A and B) of two engines at two batch sizes on a tiny model."""
    folder = tmp_path_factory.mktemp("bench")
    shutil.copy(synthetic_weights(DATA / "every-layer.cfg", seed=2), folder / "w.weights")
    onnx = folder / "net.onnx"
    convert(DATA / "every-layer.cfg", folder / "w.weights", onnx, (64, 64))
    images = folder / "images"
    write_image_set(images, 4, "val2017", [], [], folder / "cache", strict=False)
    results = {}
    for run in ("a", "b"):
        results[run] = []
        for engine in ENGINES:
            for batch in BATCHES:
                output = folder / run / f"{engine}-b{batch}"
                output.parent.mkdir(exist_ok=True)
                _bench(folder, images, onnx, engine, batch, output)
                results[run].append(output)
    return folder, results


def _accuracy(folder, engine, gate, **figures):
    record = {
        "model": MODEL,
        "width": 64,
        "height": 64,
        "engine": engine,
        "precision": "fp32",
        "target": "local",
        "batch": 1,
        "images": 4,
        "images_source": "substitute",
        "reference": "opencv-darknet fp32",
        "reference_boxes": 250,
        "coco_map50_95": None,
        "coco_map50": None,
        "agreement_precision": 0.9,
        "agreement_recall": 0.8,
        "agreement_map50": 0.85,
        "non_finite_outputs": 0,
        "accuracy_gate": gate,
        **figures,
    }
    path = folder / "accuracy" / f"{engine}-fp32.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(record))
    return path


@pytest.fixture(scope="module")
def accuracy_files(runs):
    folder, _ = runs
    return [
        _accuracy(folder, "onnxruntime", "pass", agreement_map50=0.97),
        _accuracy(folder, "opencv-darknet", "fail: reference of itself", agreement_map50=1.0),
    ]


# `yoloforge device` output for the target "local" (bench's default) with a made-up CPU ceiling.
CEILING_TFLOPS = 0.5


def _device_probe(path, ceilings):
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"engines": {}, **ceilings}))
    return path


@pytest.fixture(scope="module")
def device_file(runs):
    folder, _ = runs
    ceiling = {"tflops": CEILING_TFLOPS, "shape": "conv 3x3", "ms": 6.4}
    device = {"kind": "cpu", "name": "test"}
    return _device_probe(
        folder / "device" / "local.json", {"ceilings": {"device": device, "precisions": {"fp32": ceiling}}}
    )


@pytest.fixture(scope="module")
def table_files(runs, accuracy_files, device_file):
    folder, results = runs
    output = folder / "table" / "benchmark.csv"
    args = ["table", "--output", str(output), "--parquet", str(output.with_suffix(".parquet"))]
    args += [
        "--markdown",
        str(output.with_suffix(".md")),
        "--checkout",
        str(ROOT),
        "--config-sha256",
        "c0ffee",
    ]
    args += ["--accuracy", *map(str, accuracy_files), "--device", str(device_file)]
    args += ["--", *(f"{p}.json" for p in results["a"])]
    assert main(args) == 0
    return output


def test_pooled_result_holds_every_round(runs):
    _, results = runs
    output = results["a"][0]
    pooled = json.loads(output.with_name(output.name + ".json").read_text())
    rounds = [json.loads(output.with_name(f"{output.name}-round-{i}.json").read_text()) for i in range(2)]
    latencies = pd.read_parquet(output.with_name(output.name + ".parquet"))
    assert pooled["rounds"] == 2 and pooled["round_started"] == [r["round_started"][0] for r in rounds]
    for index, scope in enumerate(pooled["scopes"]):
        rows = latencies[latencies["scope"] == scope["scope"]]
        assert scope["iterations"] == len(rows) == sum(r["scopes"][index]["iterations"] for r in rounds)
        assert scope["round_medians_ms"] == [r["scopes"][index]["median_ms"] for r in rounds]
        assert scope["median_ms"] == pytest.approx(rows["latency_ms"].median())
    end_to_end = pooled["scopes"][1]
    images = sum(r["scopes"][1]["pipelined_images"] for r in rounds)
    seconds = sum(r["scopes"][1]["pipelined_seconds"] for r in rounds)
    assert end_to_end["images_per_second"] == pytest.approx(images / seconds)


def test_rerun_interval_pools_the_round_drift_of_every_row_of_a_target(tmp_path):
    def result(engine: str, target: str, round_medians: list[float]) -> str:
        median = float(np.median(round_medians))
        record = {
            "model": MODEL, "width": 64, "height": 64, "engine": engine, "precision": "fp32", "batch": 1,
            "target": target, "device": {"kind": "cpu", "name": "test"}, "libraries": {},
            "scopes": [{"scope": "model", "median_ms": median, "round_medians_ms": round_medians}],
        }  # fmt: skip
        path = tmp_path / f"{target}-{engine}.json"
        path.write_text(json.dumps(record))
        return str(path)

    files = [
        result("drifting", "here", [10.0, 12.0]),
        result("steady", "here", [20.0, 20.0, 20.0]),
        result("single", "there", [5.0]),
    ]
    table = build_table(files).set_index("engine")
    # log 10 and log 12 lie log(1.2) / 2 either side of their mean: 1 degree of freedom; the steady
    # row adds 2 more and no deviation.
    drift = np.sqrt(2 * (np.log(1.2) / 2) ** 2 / 3)
    assert table.loc[["drifting", "steady"], "round_drift"].tolist() == pytest.approx([drift, drift])
    for engine, rounds in (("drifting", 2), ("steady", 3)):
        half = 1.96 * drift * np.sqrt(2 / rounds)
        median = table.loc[engine, "median_ms"]
        assert table.loc[engine, "rerun_low_ms"] == pytest.approx(median * np.exp(-half))
        assert table.loc[engine, "rerun_high_ms"] == pytest.approx(median * np.exp(half))
    # One round on its target: no drift to go by, so no interval.
    assert table.loc["single", ["rerun_low_ms", "rerun_high_ms", "round_drift"]].isna().all()


def test_table_has_a_row_per_scope_with_statistics_and_provenance(table_files):
    table = read_table(table_files)
    assert len(table) == len(ENGINES) * len(BATCHES) * 2
    assert set(table["scope"]) == {"model", "end-to-end"}
    for column in ("mean_ms", "std_ms", "min_ms", "median_ms", "p90_ms", "p99_ms", "images_per_second"):
        assert table[column].notna().all(), column
    assert (table["p10_ms"] <= table["median_ms"]).all() and (table["median_ms"] <= table["p90_ms"]).all()
    # The device's baseline (opencv-darknet fp32 on a CPU) is 1x; everything else relative to it.
    baseline = table[table["engine"] == "opencv-darknet"]
    assert (baseline["speedup"] == 1).all() and set(table["baseline"]) == {"opencv-darknet fp32"}
    merged = table.merge(baseline, on=["batch", "scope"], suffixes=("", "_base"))
    np.testing.assert_allclose(
        merged["speedup"], merged["ms_per_image_base"] / merged["ms_per_image"], rtol=1e-3
    )
    np.testing.assert_allclose(
        table["achieved_tflops"], table["gflops_per_image"] * table["images_per_second"] / 1e3, rtol=1e-3
    )
    # One images/s, from p50 as the speedup is: its ratios are the speedups, in every scope. The
    # pipelined throughput of end-to-end rows is a column of its own.
    np.testing.assert_allclose(table["images_per_second"], 1000 / table["ms_per_image"], rtol=1e-3)
    np.testing.assert_allclose(
        merged["images_per_second"] / merged["images_per_second_base"], merged["speedup"], rtol=1e-3
    )
    end_to_end = table["scope"] == "end-to-end"
    assert table.loc[end_to_end, "pipelined_images_per_second"].gt(0).all()
    assert table.loc[~end_to_end, "pipelined_images_per_second"].isna().all()
    assert (table["build_seconds"] > 0).all() and (table["engine_bytes"] > 0).all()
    # Built one at a time on a CPU: no build waited for the device.
    assert table["build_wait_seconds"].between(0, table["build_seconds"]).all()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert set(table["git_commit"]) == {commit.strip()} and set(table["config_sha256"]) == {"c0ffee"}
    assert set(table["image_formats"]) == {"jpg"} and set(table["device_kind"]) == {"cpu"}
    assert pd.read_parquet(table_files.with_suffix(".parquet")).shape == table.shape


def test_accuracy_columns_join_every_batch_and_scope(table_files):
    table = read_table(table_files).set_index("engine")
    assert (table.loc["onnxruntime", "accuracy_gate"] == "pass").all()
    assert table.loc["opencv-darknet", "accuracy_gate"].str.startswith("fail: ").all()
    assert (table.loc["onnxruntime", "agreement_map50"] == 0.97).all()
    assert table["coco_map50_95"].isna().all() and (table["accuracy_images"] == 4).all()
    assert set(table["images_source"]) == {"substitute"}  # the timing's own column is kept
    markdown = table_files.with_suffix(".md").read_text()
    assert markdown.count("| pass: agreement mAP50 0.97 on 250 reference boxes |") == len(BATCHES) * 2
    assert markdown.count("| FAIL: agreement mAP50 1 on 250 reference boxes; reference of itself |") == 4


def test_table_joins_the_ceiling_of_the_rows_target(table_files):
    table = read_table(table_files.with_suffix(".parquet"))  # unrounded, as the markdown was written
    assert (table["ceiling_tflops"] == CEILING_TFLOPS).all()
    np.testing.assert_allclose(table["fraction_of_ceiling"], table["achieved_tflops"] / CEILING_TFLOPS)
    markdown = table_files.with_suffix(".md").read_text()
    assert "| of ceiling |" in markdown
    fraction = table["fraction_of_ceiling"].iloc[0] * 100
    assert f"| {fraction:.3g}% |" in markdown


def test_rows_without_a_ceiling_keep_numeric_nan_columns(runs, device_file, tmp_path):
    _, results = runs
    files = [f"{p}.json" for p in results["a"]]
    gpu_only = {"device": {"kind": "cuda", "name": "GPU"}, "precisions": {"fp32": {"tflops": 44.0}}}
    for devices in (
        [],  # no probe given
        [_device_probe(tmp_path / "other-target.json", json.loads(device_file.read_text()))],
        [_device_probe(tmp_path / "local.json", {})],  # probed with --no-ceilings
        # A GPU node's ceiling is not the roof of its CPU engines.
        [_device_probe(tmp_path / "gpu" / "local.json", {"ceilings": gpu_only})],
    ):
        table = build_table(files, device_files=devices)
        assert table["ceiling_tflops"].isna().all(), devices
        assert table["fraction_of_ceiling"].dtype == float and table["ceiling_tflops"].dtype == float


def test_table_without_accuracy_and_bad_accuracy_files(runs, tmp_path):
    _, results = runs
    table = build_table([f"{p}.json" for p in results["a"]])
    assert table["accuracy_gate"].isna().all() and len(table) == len(ENGINES) * len(BATCHES) * 2
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"model": MODEL, "engine": "onnxruntime"}))
    with pytest.raises(YoloforgeError, match="lacks target, width, height, precision") as error:
        build_table([f"{results['a'][0]}.json"], [broken])
    assert str(broken) in str(error.value)


def test_report_holds_the_table_and_every_plot(runs, table_files, tmp_path):
    _, results = runs
    latencies = [f"{p}.parquet" for p in results["a"]]
    plots = write_report(read_table(table_files), latencies, tmp_path / "report.html")
    assert plots == [
        "plot-latency",
        "plot-speedup",
        "plot-batch",
        "plot-roofline",
        "plot-distribution",
        "plot-accuracy",
    ]
    text = (tmp_path / "report.html").read_text()
    assert text.count("<svg") == len(plots)
    roofline = re.search(r'<figure id="plot-roofline">.*?</figure>', text, re.DOTALL).group(0)
    assert f"FP32 ceiling {CEILING_TFLOPS:.3g} TFLOP/s" in roofline
    assert "<th>of ceiling</th>" in text
    assert not re.search(r"<script|<link|@import|(src|href)=\"(?!#)", text)  # nothing to fetch
    without_accuracy = build_table([f"{p}.json" for p in results["a"]])
    assert "plot-accuracy" not in write_report(without_accuracy, latencies, tmp_path / "plain.html")


def test_report_of_rows_whose_reference_found_no_boxes(runs, tmp_path):
    """A small model on a few images can leave the reference without a box: the gate passes with
    no agreement figure, and the report has no accuracy plot rather than failing."""
    folder, results = runs
    boxless = tmp_path / "boxless"
    boxless.mkdir()
    accuracy = [
        _accuracy(boxless, engine, "pass", reference_boxes=0, agreement_map50=None)
        for engine in ("onnxruntime", "opencv-darknet")
    ]
    table = build_table([f"{p}.json" for p in results["a"]], accuracy)
    latencies = [f"{p}.parquet" for p in results["a"]]
    plots = write_report(table, latencies, tmp_path / "report.html")
    assert "plot-latency" in plots and "plot-accuracy" not in plots


def test_compare_two_runs(runs, table_files, tmp_path, capsys):
    folder, results = runs
    second = tmp_path / "b.csv"
    assert main(["table", "--output", str(second), *(f"{p}.json" for p in results["b"])]) == 0
    output = tmp_path / "compare.md"
    assert main(["compare", str(table_files), str(second), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert printed == output.read_text()
    rows = [line for line in printed.splitlines() if line.startswith("| every-layer")]
    assert len(rows) == len(ENGINES) * len(BATCHES) * 2
    a, b = read_table(table_files), read_table(second)
    first = a.iloc[0]
    match = b[
        (b["engine"] == first["engine"]) & (b["batch"] == first["batch"]) & (b["scope"] == first["scope"])
    ]
    ratio = match["median_ms"].iloc[0] / first["median_ms"]
    assert f"| {ratio:.3f} |" in printed


# ---- the report in a real browser --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(url, timeout=30)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(json.loads(self.socket.recv()))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _open_in_chromium(report, profile, expression: str, screenshot=None):
    """Load `report` in headless Chromium; return the value of the JavaScript `expression` (a JSON
    string), the page's errors, and save a PNG of the page's top (1400x1000) to `screenshot`."""
    pytest.importorskip("websocket")
    import base64
    import urllib.request

    port = _free_port()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--hide-scrollbars",
    ]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={profile}"]
    browser = subprocess.Popen(
        [CHROMIUM, *flags, f"--remote-debugging-port={port}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as response:
                    pages = [t for t in json.load(response) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
            time.sleep(0.2)
        page = DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Runtime", "Log", "Page"):
            page.call(f"{domain}.enable")
        page.call(
            "Emulation.setDeviceMetricsOverride", width=1400, height=1000, deviceScaleFactor=1, mobile=False
        )
        page.call("Page.navigate", url=report.as_uri())
        page.wait_for("Page.loadEventFired")
        shown = json.loads(page.call("Runtime.evaluate", expression=expression)["result"]["value"])
        if screenshot:
            image = page.call("Page.captureScreenshot", format="png")["data"]
            screenshot.write_bytes(base64.b64decode(image))
        errors = [
            event
            for event in page.events
            if event.get("method") == "Runtime.exceptionThrown"
            or (event.get("method") == "Runtime.consoleAPICalled" and event["params"]["type"] == "error")
            or (event.get("method") == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")
        ]
        page.socket.close()
    finally:
        browser.terminate()
        browser.wait(timeout=30)
    return shown, errors


# What the top of the report shows in the browser: the decision's rows, warnings, and where the
# decision table ends (it must be on the first screen).
SHOWN = """JSON.stringify({
    rows: document.querySelectorAll('#benchmark-table tbody tr').length,
    failing: document.querySelectorAll('#benchmark-table tbody tr.fails').length,
    decisions: [...document.querySelectorAll('#decision tbody tr')].map(
        row => [...row.querySelectorAll('td')].map(cell => cell.textContent)),
    decision_bottom: document.querySelector('#decision')?.getBoundingClientRect().bottom,
    warnings: [...document.querySelectorAll('#summary > p.warning')].map(w => w.textContent),
    plots: [...document.querySelectorAll('figure')].map(f => {
        const box = f.querySelector('svg').getBoundingClientRect();
        return [f.id, box.width > 100 && box.height > 100];
    }),
})"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_loads_in_chromium_without_errors(runs, table_files, tmp_path):
    _, results = runs
    report = tmp_path / "report.html"
    plots = write_report(read_table(table_files), [f"{p}.parquet" for p in results["a"]], report)
    screenshot = tmp_path / "report-top.png"
    shown, errors = _open_in_chromium(report, tmp_path / "profile", SHOWN, screenshot)
    print(f"screenshot of the report's top: {screenshot}")
    assert errors == []
    assert shown["rows"] == len(ENGINES) * len(BATCHES) * 2
    assert shown["failing"] == len(BATCHES) * 2  # opencv-darknet's rows, failed by the fixture
    assert shown["plots"] == [[plot, True] for plot in plots]
    # Every batch and scope decided, on the first screen: onnxruntime passes, the baseline fails.
    assert len(shown["decisions"]) == len(BATCHES) * 2 and shown["decision_bottom"] < 1000
    assert {row[4] for row in shown["decisions"]} == {"onnxruntime fp32"}
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_bad_inputs_are_one_line_errors(runs, tmp_path):
    from tests.conftest import run_cli

    _, results = runs
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"model": MODEL, "scope": "model", "median_ms": 1.0}))
    table = run_cli("table", "--output", str(tmp_path / "t.csv"), str(old))
    assert table.returncode == 2 and f"{old}: timing result has no scopes" in table.stderr
    assert not (tmp_path / "t.csv").exists()
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    compare = run_cli("compare", f"{results['a'][0]}.json", str(other))
    assert compare.returncode == 2 and compare.stderr.count("\n") == 1


# ---- the decision, from a small synthetic table through the CLI ---------------------------------

# (target, model, size, engine, precision, batch) -> round medians (ms per batch) of the model scope;
# the end-to-end scope takes 1.5x as long. "quiet" drifts by a few percent between rounds, "busy" by
# about 40%.
SYNTHETIC_ROUNDS = {
    ("quiet", "tiny", 64, "opencv-darknet", "fp32", 1): [10.0, 10.4, 9.7],
    ("quiet", "tiny", 64, "onnxruntime", "fp32", 1): [5.0, 5.2, 4.9],
    ("quiet", "tiny", 64, "openvino", "fp32", 1): [5.3, 5.1, 5.4],  # within noise of onnxruntime
    ("quiet", "tiny", 64, "openvino", "int8", 1): [2.0, 2.1, 1.9],  # fastest, fails the gate
    ("quiet", "tiny", 64, "opencv-darknet", "fp32", 2): [19.0, 20.0, 19.5],
    ("quiet", "tiny", 64, "onnxruntime", "fp32", 2): [8.0, 8.3, 7.9],
    ("quiet", "tiny", 64, "openvino", "fp32", 2): [14.0, 14.4, 13.8],  # clearly slower
    ("quiet", "tiny", 64, "openvino", "int8", 2): [3.0, 3.1, 2.9],
    ("busy", "few", 32, "opencv-darknet", "fp32", 1): [4.0, 6.5, 3.0],
    ("busy", "few", 32, "onnxruntime", "fp32", 1): [2.0, 3.4, 1.6],
}
# (model, engine, precision) -> accuracy gate; "few" has too few reference boxes to mean much.
SYNTHETIC_GATES = {
    ("tiny", "opencv-darknet", "fp32"): "pass",
    ("tiny", "onnxruntime", "fp32"): "pass",
    ("tiny", "openvino", "fp32"): "pass",
    ("tiny", "openvino", "int8"): "fail: agreement mAP@0.5 drops 0.412 (> 0.01)",
    ("few", "opencv-darknet", "fp32"): "pass",
    ("few", "onnxruntime", "fp32"): "pass",
}
SYNTHETIC_BOXES = {"tiny": 350, "few": 4}
TENSORRT_REASON = "tensorrt is not installed (its wheels come only from NVIDIA's package index)"


def _synthetic_results(folder, synthetic_rounds=SYNTHETIC_ROUNDS):
    """Bench, unavailable and accuracy JSONs as the workflow writes them, for SYNTHETIC_*."""
    folder.mkdir()
    results, accuracy = [], []
    for (target, model, size, engine, precision, batch), rounds in synthetic_rounds.items():
        scopes = []
        for scope, factor in (("model", 1.0), ("end-to-end", 1.5)):
            medians = [factor * median for median in rounds]
            p50 = float(np.median(medians))
            scopes.append(
                {
                    "scope": scope, "iterations": 30, "rounds": len(medians), "median_ms": p50,
                    "p10_ms": 0.9 * p50, "p90_ms": 1.2 * p50, "p99_ms": 1.7 * p50,
                    "round_medians_ms": medians,
                    "images_per_second": batch * 1000 / p50 * (1.4 if scope == "end-to-end" else 1),
                }
            )  # fmt: skip
        record = {
            "model": model, "width": size, "height": size, "engine": engine, "precision": precision,
            "batch": batch, "target": target, "device": {"kind": "cpu", "name": f"{target} CPU"},
            "libraries": {}, "scopes": scopes,
        }  # fmt: skip
        results.append(folder / f"{target}-{model}-{engine}-{precision}-b{batch}.json")
        results[-1].write_text(json.dumps(record))
    for batch in (1, 2):
        results.append(folder / f"quiet-tiny-tensorrt-fp16-b{batch}.json")
        results[-1].write_text(
            json.dumps(
                {
                    "model": "tiny",
                    "width": 64,
                    "height": 64,
                    "engine": "tensorrt",
                    "precision": "fp16",
                    "batch": batch,
                    "target": "quiet",
                    "scopes": [{"scope": "model"}, {"scope": "end-to-end"}],
                    "unavailable": TENSORRT_REASON,
                }  # fmt: skip
            )
        )
    for (model, engine, precision), gate in SYNTHETIC_GATES.items():
        target = "quiet" if model == "tiny" else "busy"
        size = 64 if model == "tiny" else 32
        record = {
            "model": model, "width": size, "height": size, "engine": engine, "precision": precision,
            "target": target, "batch": 1, "images": 8, "images_source": "substitute",
            "reference": "opencv-darknet fp32", "reference_boxes": SYNTHETIC_BOXES[model],
            "coco_map50_95": None, "coco_map50": None, "agreement_precision": 0.9, "agreement_recall": 0.9,
            "agreement_map50": 0.99 if gate == "pass" else 0.588, "non_finite_outputs": 0,
            "accuracy_gate": gate,
        }  # fmt: skip
        accuracy.append(folder / f"accuracy-{model}-{engine}-{precision}.json")
        accuracy[-1].write_text(json.dumps(record))
    return results, accuracy


def _markdown_rows(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table in `text` whose header starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split(" | ")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")), strict=True)))
    return rows


def _has_interval(row) -> bool:
    return not (pd.isna(row["rerun_low_ms"]) or pd.isna(row["rerun_high_ms"]))


def _expected_confidence(chosen, runner_up) -> str:
    """The confidence words the rerun intervals of the two rows call for (docs/reading-results.md)."""
    if not (_has_interval(chosen) and _has_interval(runner_up)):
        return "unknown: no rerun interval (one round a row)"
    if chosen["rerun_high_ms"] < runner_up["rerun_low_ms"]:
        return "clear: intervals do not overlap"
    return f"within noise of {runner_up['engine']} {runner_up['precision']}: intervals overlap"


def _check_summary_against_table(table: pd.DataFrame, text: str) -> set[str]:
    """Check every decision of the summary `text` against `table`, worked out here from the table's
    own columns; return the kinds of confidence met."""
    name = lambda row: f"{row['engine']} {row['precision']}"  # noqa: E731
    decisions = _markdown_rows(text, "model" if table["target"].nunique() == 1 else "target")
    timed = table[table["median_ms"].notna()]
    groups = timed.groupby(["target", "model", "width", "height", "batch", "scope"])
    assert len(decisions) == groups.ngroups
    confidences = set()
    for (target, model, width, height, batch, scope), rows in groups:
        [decision] = [
            d
            for d in decisions
            if (d.get("target", target), d["model"], d["size"], d["batch"], d["scope"])
            == (target, model, f"{width}x{height}", str(batch), scope)
        ]
        checked = rows["accuracy_gate"].notna().any()
        passing = rows[rows["accuracy_gate"].eq("pass") | (not checked)].sort_values("ms_per_image")
        if passing.empty:
            assert decision["deploy"].startswith("none"), decision
            continue
        chosen = passing.iloc[0]
        assert decision["deploy"] == name(chosen) + ("" if checked else " (accuracy not measured)")
        # The tail beside the median: p99 per image, from the same row.
        assert float(decision["p99 ms/img"]) == pytest.approx(chosen["p99_ms"] / chosen["batch"], rel=5e-3)
        if len(passing) > 1:
            # Margins: ratios of p50 ms per image, ranges from the rerun intervals' far ends.
            runner_up = passing.iloc[1]
            ratio = runner_up["ms_per_image"] / chosen["ms_per_image"]
            margin = f"{ratio:.2f}x over {name(runner_up)}"
            if _has_interval(chosen) and _has_interval(runner_up):
                low = runner_up["rerun_low_ms"] / chosen["rerun_high_ms"]
                high = runner_up["rerun_high_ms"] / chosen["rerun_low_ms"]
                margin += f" ({low:.2f}-{high:.2f}x)"
                assert decision["confidence"].startswith("clear") == (low > 1)  # the range says the same
            assert decision["over the next"] == margin
            expected = _expected_confidence(chosen, runner_up)
            assert decision["confidence"] == expected, decision
            confidences.add(expected.split(":")[0].split(" of ")[0])
        if chosen["baseline"] == name(chosen):
            assert decision["over the baseline"] == "is the baseline"
        elif (rows["engine"] + " " + rows["precision"]).eq(chosen["baseline"]).any() and chosen[
            "speedup"
        ] > 0:
            # The margin over the baseline is the table's speedup.
            assert decision["over the baseline"].startswith(
                f"{chosen['speedup']:.2f}x over {chosen['baseline']}"
            )
        # A faster row that fails the gate is never chosen, and is named with its margin.
        failing = rows[rows["accuracy_gate"].str.startswith("fail", na=False)]
        for _, row in failing[failing["ms_per_image"] < chosen["ms_per_image"]].iterrows():
            faster = chosen["ms_per_image"] / row["ms_per_image"]
            assert f"{name(row)} ({faster:.2f}x faster): fails the gate" in decision["faster, not deployable"]
        assert not failing["engine"].add(" " + failing["precision"]).eq(decision["deploy"]).any()
    # Unavailable rows: none decided on, each engine listed with its reason.
    unavailable = table[table["unavailable"].notna()]
    if len(unavailable):
        listed = _markdown_rows(
            text.split("## Unavailable here")[1], "engine" if "target" not in decisions[0] else "target"
        )
        pairs = {(row["engine"], row["reason"]) for row in listed}
        for _, row in unavailable.iterrows():
            assert (name(row), row["unavailable"]) in pairs
    return confidences


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    """The table, report and summary of the synthetic results, made by the CLI as the workflow does."""
    folder = tmp_path_factory.mktemp("synthetic")
    results, accuracy = _synthetic_results(folder / "results")
    table = folder / "benchmark.parquet"
    args = ["table", "--output", str(folder / "benchmark.csv"), "--parquet", str(table)]
    assert main([*args, "--accuracy", *map(str, accuracy), "--", *map(str, results)]) == 0
    report, summary = folder / "report.html", folder / "summary.md"
    assert main(["report", "--table", str(table), "--output", str(report), "--summary", str(summary)]) == 0
    return read_table(table), report, summary


def test_summary_decides_for_the_fastest_passing_row_from_the_table(synthetic_report):
    table, _, summary = synthetic_report
    text = summary.read_text()
    # The synthetic rows exercise both ends of the scale; the failing, fastest row is never chosen.
    assert _check_summary_against_table(table, text) == {"clear", "within noise"}
    decisions = _markdown_rows(text, "target")
    assert len(decisions) == 6 and "openvino int8" not in {d["deploy"] for d in decisions}
    assert sum("openvino int8" in d["faster, not deployable"] for d in decisions) == 4

    # The busy target's drift is far above a quiet machine's, and "few" rests on 4 boxes.
    drift = table.groupby("target")["round_drift"].first()
    assert drift["busy"] > 0.2 > drift["quiet"]
    warnings = [line for line in text.splitlines() if line.startswith("**Warning:**")]
    assert len(warnings) == 2
    assert f"busy (busy CPU), 3 rounds a row: round drift {drift['busy']:.3f}, far above" in warnings[0]
    assert "the accuracy figures of few 32x32 rest on fewer than 100 reference boxes" in warnings[1]
    assert "- few 32x32: agreement on 4 reference boxes over 8 images (too few: under 100)." in text
    assert "- tiny 64x64: agreement on 350 reference boxes over 8 images." in text
    assert f"quiet (quiet CPU), 3 rounds a row: round drift {drift['quiet']:.3f}: quiet" in text
    # Unavailable rows are listed once per engine with their reason, not decided on.
    [unavailable] = _markdown_rows(text.split("## Unavailable here")[1], "target")
    assert unavailable == {
        "target": "quiet", "engine": "tensorrt fp16", "reason": TENSORRT_REASON, "rows": "4 (tiny 64x64)"
    }  # fmt: skip


def test_report_marks_failing_rows_and_folds_out_unavailable_ones(synthetic_report):
    table, report, _ = synthetic_report
    text = report.read_text()
    # The decision comes first, then the comparison table.
    assert text.index('id="summary"') < text.index('id="decision"') < text.index('id="benchmark-table"')
    main_table = re.search(r'<table id="benchmark-table">.*?</table>', text, re.DOTALL).group(0)
    failing = table["accuracy_gate"].str.startswith("fail", na=False) & table["median_ms"].notna()
    assert main_table.count('<tr class="fails">') == failing.sum() == 4
    assert main_table.count("<tr") - 1 == table["median_ms"].notna().sum()  # one header row
    assert "tensorrt" not in main_table
    unavailable = re.search(r'<table id="unavailable">.*?</table>', text, re.DOTALL).group(0)
    assert "tensorrt fp16" in unavailable and html.escape(TENSORRT_REASON) in unavailable
    # Every plot names the failing rows with the mark.
    figures = re.findall(r'<figure id="(plot-[a-z]+)">(.*?)</figure>', text, re.DOTALL)
    assert [plot for plot, _ in figures] == ["plot-latency", "plot-speedup", "plot-batch", "plot-accuracy"]
    for plot, svg in figures:
        assert f"tiny 64x64 openvino int8{FAIL_MARK}" in svg or f"openvino int8{FAIL_MARK}" in svg, plot
        assert "opencv-darknet fp32" + FAIL_MARK not in svg, plot


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_screenshot_of_the_reports_top_shows_the_decision(synthetic_report, tmp_path):
    table, report, summary = synthetic_report
    screenshot = tmp_path / "report-top.png"
    shown, errors = _open_in_chromium(report, tmp_path / "profile", SHOWN, screenshot)
    print(f"screenshot of the report's top: {screenshot}")
    assert errors == []
    # The decision table, as the summary has it, with both warnings, on the first screen.
    decisions = _markdown_rows(summary.read_text(), "target")
    assert shown["decisions"] == [list(row.values()) for row in decisions]
    assert shown["decision_bottom"] < 1000
    assert len(shown["warnings"]) == 2 and all("Warning:" in w for w in shown["warnings"])
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 20_000


def test_rows_of_one_round_get_no_confidence_and_a_warning(tmp_path):
    rounds = {
        key: medians[:1] for key, medians in SYNTHETIC_ROUNDS.items() if key[0] == "quiet" and key[-1] == 1
    }
    results, accuracy = _synthetic_results(tmp_path / "results", rounds)
    summary = summarize(build_table(results, accuracy))
    decisions = summary.decisions
    assert set(decisions["deploy"]) == {"onnxruntime fp32"}
    assert set(decisions["confidence"]) == {"unknown: no rerun interval (one round a row)"}
    assert decisions["over the next"].str.fullmatch(r"\d\.\d\dx over openvino fp32").all()  # no range
    [warning] = [w for w in summary.warnings() if "round" in w]
    assert warning.startswith("quiet (quiet CPU), 1 round a row: no round drift, so no rerun intervals")


# Each device's committed run (docs/results/<device>/benchmark.parquet and its bench/ latencies).
COMMITTED_RUNS = sorted((ROOT / "docs" / "results").glob("*/benchmark.parquet"))


@pytest.mark.parametrize("table_file", COMMITTED_RUNS, ids=lambda path: path.parent.name)
def test_report_of_a_committed_run_decides_from_its_table(table_file, tmp_path):
    """The report and summary remade from a committed run's files, as docs/reading-results.md says,
    checked against that run's table and, with Chromium, photographed at the top. With
    YOLOFORGE_SCREENSHOTS=DIR the screenshot is also copied to DIR/<device>-report-top.png."""
    latencies = [
        str(path)
        for path in sorted(table_file.parent.glob("bench/**/*.parquet"))
        if not path.name.startswith("round-")
    ]
    report, summary = tmp_path / "report.html", tmp_path / "summary.md"
    args = ["report", "--table", str(table_file), "--output", str(report), "--summary", str(summary)]
    assert main([*args, *latencies]) == 0
    table = read_table(table_file)
    _check_summary_against_table(table, summary.read_text())
    if CHROMIUM is None:
        return
    screenshot = tmp_path / "report-top.png"
    shown, errors = _open_in_chromium(report, tmp_path / "profile", SHOWN, screenshot)
    print(f"screenshot of the report's top: {screenshot}")
    assert errors == [] and shown["decisions"]
    first_column = "model" if table["target"].nunique() == 1 else "target"
    decisions = _markdown_rows(summary.read_text(), first_column)
    assert shown["decisions"] == [list(row.values()) for row in decisions]
    if os.environ.get("YOLOFORGE_SCREENSHOTS"):
        folder = Path(os.environ["YOLOFORGE_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, folder / f"{table_file.parent.name}-report-top.png")


def test_pareto_front_keeps_the_rows_nothing_beats_on_both_speed_and_accuracy():
    from yoloforge.report import pareto_front

    points = pd.DataFrame(
        {"ms": [1.0, 2.0, 2.0, 3.0, 4.0, 0.5], "accuracy": [0.9, 0.95, 0.99, 0.97, 1.0, 0.2]},
        index=list("abcdef"),
    )
    # b is beaten by c (as fast, more accurate), d by c (faster, more accurate).
    assert list(pareto_front(points, "ms", "accuracy")) == ["f", "a", "c", "e"]
