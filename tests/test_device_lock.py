"""The device lock: one process at a time times kernels, builds release it while they compile."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time

import pytest

from yoloforge.device_lock import DeviceLock, lock_path
from yoloforge.errors import YoloforgeError

# Takes the lock without waiting and reports whether it could: another process's view.
PROBE = """
import fcntl, os, sys
descriptor = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT)
try:
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("taken")
"""


def other_process_sees(path) -> str:
    return subprocess.run(
        [sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def lock_file(tmp_path, monkeypatch):
    path = tmp_path / "device.lock"
    monkeypatch.setenv("YOLOFORGE_DEVICE_LOCK", str(path))
    return path


def test_held_excludes_other_processes_and_released_lets_them_in(lock_file):
    lock = DeviceLock()
    assert other_process_sees(lock_file) == "free"
    with lock.held():
        assert other_process_sees(lock_file) == "taken"
        with lock.held():  # re-entrant: an inner block neither waits nor lets go
            assert other_process_sees(lock_file) == "taken"
        assert other_process_sees(lock_file) == "taken"
        with lock.released():
            assert other_process_sees(lock_file) == "free"
            with lock.released():  # nested: still released, and no double acquire afterwards
                assert other_process_sees(lock_file) == "free"
        assert other_process_sees(lock_file) == "taken"
    assert other_process_sees(lock_file) == "free"


def test_a_lock_file_that_is_read_only_still_locks(lock_file):
    lock_file.touch(mode=0o444)
    with DeviceLock().held():
        assert other_process_sees(lock_file) == "taken"
    assert lock_file.stat().st_mode & 0o777 == 0o444


def test_released_outside_held_does_nothing(lock_file):
    lock = DeviceLock()
    with lock.released():
        assert other_process_sees(lock_file) == "free"
    assert lock.waited_seconds == 0


def test_taking_it_back_waits_for_another_holder_and_counts_the_wait(lock_file):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "d = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(d, fcntl.LOCK_EX)\nprint('holding', flush=True)\ntime.sleep(1.5)",
            str(lock_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lock = DeviceLock()
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        with lock.held():
            assert time.perf_counter() - start >= 1.0
            assert other_process_sees(lock_file) == "taken"
    finally:
        holder.wait(timeout=30)
    assert lock.waited_seconds >= 1.0


def test_a_lock_file_that_cannot_be_opened_is_a_one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "missing-folder" / "device.lock"
    monkeypatch.setenv("YOLOFORGE_DEVICE_LOCK", str(path))
    with pytest.raises(YoloforgeError, match="cannot open the device lock") as raised, DeviceLock().held():
        pass
    assert str(path) in str(raised.value)


def test_jobs_given_different_gpus_take_different_locks(monkeypatch):
    monkeypatch.delenv("YOLOFORGE_DEVICE_LOCK", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    first = lock_path()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert lock_path() != first
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1a/../x")
    assert lock_path().parent == first.parent  # a device list never names another folder


def test_the_device_probe_waits_for_a_timing_job(lock_file, tmp_path):
    output = tmp_path / "device.json"
    descriptor = os.open(lock_file, os.O_RDWR | os.O_CREAT)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    probe = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yoloforge",
            "device",
            "--engine",
            "onnxruntime",
            "--precision",
            "fp32",
            "--no-ceilings",
            "--output",
            str(output),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "YOLOFORGE_DEVICE_LOCK": str(lock_file)},
    )
    try:
        time.sleep(3)
        assert not output.exists()
    finally:
        os.close(descriptor)
    _, errors = probe.communicate(timeout=120)
    assert probe.returncode == 0, errors
    assert "waiting for the device lock" in errors
    assert output.exists()


def test_held_if_takes_the_lock_only_where_needed(lock_file):
    from yoloforge.device import on_accelerator

    lock = DeviceLock()
    for fingerprint, taken in (({"kind": "cuda", "name": "GPU"}, "taken"), ({"kind": "cpu"}, "free")):
        with lock.held_if(on_accelerator(fingerprint)):
            assert other_process_sees(lock_file) == taken
    assert other_process_sees(lock_file) == "free"
