"""Two targets: run locally, and through a real Slurm (a single-node cluster on 127.0.0.1).

The Slurm test needs root and Debian's slurm-wlm and munge; it is skipped otherwise, unless
YOLOFORGE_REQUIRE_SLURM is set (CI), where a cluster that cannot start is a failure.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import datetime

import pandas as pd
import pytest
import yaml

from tests.conftest import DATA, ROOT
from tests.slurm_cluster import FEATURE, PARTITION, ClusterUnavailable, SlurmCluster
from tests.test_workflow import snakemake

pytestmark = pytest.mark.workflow

# Two targets on the one node: the second is placed by partition and node feature, as a GPU
# model would be on a real cluster.
TARGETS = {"local": {}, "second": {"resources": {"slurm_partition": PARTITION, "constraint": FEATURE}}}
ENGINES = {"onnxruntime": ["fp32"], "opencv-darknet": ["fp32"]}
ROUNDS = 2
ROW_KEY = ["target", "model", "width", "height", "engine", "precision", "batch", "scope", "device"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    # Stopped by the daemons' process ids whatever happens, a failed start included.
    request.addfinalizer(cluster.stop)
    try:
        cluster.start()
    except ClusterUnavailable as error:
        if os.environ.get("YOLOFORGE_REQUIRE_SLURM"):
            pytest.fail(f"the Slurm test cluster did not start: {error}")
        pytest.skip(f"no Slurm test cluster: {error}")
    return cluster


def tiny_config(workdir):
    workdir.mkdir(parents=True)
    config = {
        "models": {
            "net": {
                "cfg": {"sources": [str(DATA / "every-layer.cfg")]},
                "weights": {"sources": ["synthetic"], "synthetic_seed": 3},
                "sizes": [64],
            }
        },
        "engines": ENGINES,
        "batches": [1],
        "images": {"count": 3, "calibration_count": 2},
        "timing": {"warmup_seconds": 0, "seconds": 0.1, "min_iterations": 2, "rounds": ROUNDS},
        "targets": TARGETS,
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return workdir


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def assert_two_targets(workdir):
    """One engine folder and one row set per target."""
    engines = workdir / "results" / "engines"
    assert sorted(path.name for path in engines.iterdir()) == sorted(TARGETS)
    for target in TARGETS:
        assert len(list((engines / target).rglob("*.engine"))) == len(ENGINES)
    table = pd.read_csv(workdir / "results" / "benchmark.csv")
    scopes = sorted(set(table["scope"]))
    assert scopes == ["end-to-end", "model"]
    assert sorted(table["target"]) == sorted(list(TARGETS) * len(ENGINES) * len(scopes))
    assert (table["median_ms"] > 0).all()
    # Each target's speedups are against its own baseline.
    assert (table.loc[table["engine"] == "opencv-darknet", "speedup"] == 1).all()
    return table


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same config run by the local executor (the default profile)."""
    workdir = tiny_config(tmp_path_factory.mktemp("local") / "run")
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_two_targets_run_locally_into_two_engine_folders_and_row_sets(local_run):
    assert_two_targets(local_run)


def test_slurm_run_submits_every_job_and_matches_local_run(cluster, local_run, tmp_path):
    slurm_dir = tiny_config(tmp_path / "slurm")
    slurm = snakemake(
        slurm_dir,
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / "slurm"),
        "--cores",
        "2",
        # No accounting database on the test cluster: job states come from squeue.
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "1",
    )
    output = slurm.stdout + slurm.stderr
    assert slurm.returncode == 0, output[-3000:] + cluster.logs()

    # Every job but the local rules went through sbatch, and Slurm ran each to completion.
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", output))
    jobs = [job for job in cluster.jobs() if job["WorkDir"] == str(slurm_dir)]
    assert {job["JobId"] for job in jobs} == submitted
    assert {job["JobState"] for job in jobs} == {"COMPLETED"}
    assert set(re.findall(r"^localrule (\w+):", output, re.MULTILINE)) == {
        "fetch_cfg",
        "fetch_weights",
        "images",
        "pool",
        "table",
        "report",
        "all",
    }
    # One device probe per target, on it; per target, each engine built in one job, timed in one
    # job per round and scored in another; one reference per model size, for every target.
    accuracy = [job for job in jobs if job["Comment"].startswith("rule_accuracy_wildcards_")]
    assert sorted(job["Comment"].split("_")[3] for job in accuracy) == sorted(list(TARGETS) * len(ENGINES))
    devices = [job["Comment"] for job in jobs if job["Comment"].startswith("rule_device_")]
    assert sorted(devices) == ["rule_device_wildcards_local", "rule_device_wildcards_second"]
    assert Counter(job["Comment"].split("_wildcards_")[0] for job in jobs) == {
        "rule_device": len(TARGETS),
        "rule_convert": 1,
        "rule_reference": 1,
        "rule_build": len(TARGETS) * len(ENGINES),
        "rule_bench": len(TARGETS) * len(ENGINES) * ROUNDS,
        "rule_accuracy": len(TARGETS) * len(ENGINES),
    }
    placed = [job for job in jobs if job["Features"] == FEATURE]
    assert len(placed) == 1 + (2 + ROUNDS) * len(ENGINES)
    assert "rule_device_wildcards_second" in {job["Comment"] for job in placed}
    assert {job["Partition"] for job in placed} == {PARTITION}

    # The device probes and timing jobs asked Slurm for its one GPU, and so never overlapped,
    # though they were queued together and the node had the cores to run them at once. Scoring
    # these engines, which run on the CPU, asked for none.
    gpu_jobs = sorted(
        (job for job in jobs if "gpu:1" in job.get("TresPerJob", "")), key=lambda job: job["StartTime"]
    )
    assert len(gpu_jobs) == len(TARGETS) * (1 + ROUNDS * len(ENGINES))
    assert not any("gpu" in job.get("TresPerJob", "") for job in accuracy)
    for before, after in zip(gpu_jobs, gpu_jobs[1:], strict=False):
        assert _time(after["StartTime"]) >= _time(before["EndTime"]), (before, after)
    assert any(
        _time(after["SubmitTime"]) < _time(before["EndTime"])
        for before, after in zip(gpu_jobs, gpu_jobs[1:], strict=False)
    )

    # Two engine folders and two row sets, the same rows and columns as the local run's.
    slurm_table = assert_two_targets(slurm_dir)
    local_table = pd.read_csv(local_run / "results" / "benchmark.csv")
    assert list(slurm_table.columns) == list(local_table.columns)
    pd.testing.assert_frame_equal(
        slurm_table[ROW_KEY].sort_values(ROW_KEY).reset_index(drop=True),
        local_table[ROW_KEY].sort_values(ROW_KEY).reset_index(drop=True),
    )
