"""SIGKILL the whole workflow in the middle of a job, then run it again.

Each kill lands while one output is fully written but not yet renamed (the test hook in
yoloforge.files holds it there), so whatever the job left lies beside its output, never under
its name. The rerun must redo only what did not finish, and finish.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import DATA, ROOT
from tests.test_workflow import snakemake
from yoloforge.backends import get_backend
from yoloforge.files import PAUSE_VARIABLE

pytestmark = pytest.mark.workflow


@pytest.fixture
def workdir(tmp_path):
    config = {
        "models": {
            "net": {
                "cfg": {"sources": [str(DATA / "every-layer.cfg")]},
                "weights": {"sources": ["synthetic"]},
                "sizes": [64],
            }
        },
        "engines": {"onnxruntime": ["fp32"], "opencv-darknet": ["fp32"]},
        "batches": [1],
        "images": {"count": 2, "calibration_count": 1},
        "timing": {"warmup_seconds": 0, "seconds": 0.1, "min_iterations": 2, "rounds": 2},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def kill_when_writing(workdir: Path, output_pattern: str, timeout: float = 180) -> Path:
    """Run the workflow until a job holds a written output matching `output_pattern` (a glob
    below workdir), then SIGKILL Snakemake's process group, jobs included. Returns the .part."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(workdir / "config.yaml"), "--cores", "2"]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PAUSE_VARIABLE: f"*/{output_pattern}",
    }
    folder, name = os.path.split(output_pattern)
    part_pattern = os.path.join(folder, f".{name}.*.part")
    with open(workdir / "killed-run.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while not (parts := list(workdir.glob(part_pattern))):
                assert process.poll() is None, (workdir / "killed-run.log").read_text()[-3000:]
                assert time.monotonic() < deadline, f"no {part_pattern} within {timeout} s"
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return parts[0]


def outputs(workdir: Path) -> dict[str, float]:
    """Every file the workflow made, with its modification time."""
    return {
        str(path.relative_to(workdir)): path.stat().st_mtime_ns
        for folder in ("results", "resources")
        if (workdir / folder).exists()
        for path in (workdir / folder).rglob("*")
        if path.is_file()
    }


def jobs_run(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Snakemake's own count of the jobs it ran, per rule."""
    table = re.search(r"Job stats:\njob\s+count\n-+\s+-+\n(.*?)\ntotal", result.stdout + result.stderr, re.S)
    assert table, result.stderr[-3000:]
    return {rule: int(count) for rule, count in (line.split() for line in table.group(1).splitlines())}


def finished_jobs(log: str) -> list[str]:
    """The rules of the jobs Snakemake saw finish, in order."""
    return re.findall(r"Finished jobid: \d+ \(Rule: ([\w-]+)\)", log)


# Every job of the fixture's workflow once: what a run that is never killed does.
ALL_JOBS = Counter(
    fetch_cfg=1, fetch_weights=1, images=1, convert=1, device=1, build=2, bench=4, pool=2, reference=1,
    accuracy=2, table=1, report=1, all=1,
)  # fmt: skip
# Where to kill, and what the killed job may already have put in place (to be redone with it).
KILL_POINTS = [
    # The second of the images job's two folders: the first is in place, whole; Snakemake must
    # still run the job again (it does not check incomplete markers of jobs that a checkpoint adds).
    ("resources/calibration", "resources/images/"),
    ("results/engines/*/*/*/*.engine", None),
    # A timing round writes its per-iteration Parquet file before its summary JSON.
    ("results/bench/*/*/*/*/round-*.json", "results/bench/"),
    ("results/benchmark.csv", None),
]


def test_killed_runs_redo_only_what_did_not_finish(workdir):
    finished: list[str] = []
    done: dict[str, int] = {}
    for pattern, left_by_killed_job in KILL_POINTS:
        part = kill_when_writing(workdir, pattern)
        finished += finished_jobs((workdir / "killed-run.log").read_text())
        assert not (part.parent / part.name[1:].rsplit(".", 2)[0]).exists()  # nothing under its name
        now = outputs(workdir)
        # What was finished before stays as it was, whatever ran since.
        assert {name: now.get(name) for name in done} == done
        done = {
            name: mtime
            for name, mtime in now.items()
            if ".part" not in name and not (left_by_killed_job and name.startswith(left_by_killed_job))
        }
        # After a SIGKILL, Snakemake's lock stays: it says to unlock, as does the README.
        assert snakemake(workdir, "--unlock").returncode == 0
    rerun = snakemake(workdir, "--cores", "2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    finished += finished_jobs(rerun.stderr)
    # Over all five runs, no job finished twice. (Usually each finished exactly once; one whose
    # process ended in the instant of a kill is done but never reported, hence "at most".)
    assert not Counter(finished) - ALL_JOBS, finished
    assert len(finished) >= ALL_JOBS.total() - 1
    now = outputs(workdir)
    assert {name: now.get(name) for name in done} == done
    assert not [name for name in now if name.endswith(".part")]

    table = pd.read_csv(workdir / "results" / "benchmark.csv")
    assert sorted(table["engine"]) == ["onnxruntime"] * 2 + ["opencv-darknet"] * 2  # two scopes each
    assert (table["median_ms"] > 0).all()
    for engine in (workdir / "results" / "engines").glob("*/*/*/*.engine"):
        get_backend(engine.parent.name).load(engine)  # whole: its checksum matches its sidecar


def test_edited_onnx_rebuilds_its_engines(workdir):
    import onnx

    assert snakemake(workdir, "--cores", "2").returncode == 0
    onnx_file = workdir / "results" / "onnx" / "net-64.onnx"
    model = onnx.load(onnx_file)
    model.metadata_props.add(key="edited", value="by hand")
    onnx.save(model, onnx_file)
    plan = snakemake(workdir, "-n", "--quiet", "rules")
    counts = dict(re.findall(r"^([\w-]+)\s+(\d+)$", plan.stdout + plan.stderr, re.M))
    expected = {"build": "2", "bench": "4", "pool": "2", "reference": "1", "accuracy": "2"}
    expected |= {"table": "1", "report": "1", "all": "1", "total": "14"}
    assert counts == expected, plan.stdout
