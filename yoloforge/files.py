"""File helpers: outputs appear whole or not at all, and content is identified by sha256."""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yoloforge.errors import YoloforgeError

_UMASK = os.umask(0)
os.umask(_UMASK)


# Below this many free bytes, a library's failure to write is reported as a full disk.
DISK_FULL_BYTES = 1 << 20
# Test hook, for killing a job at a known point: an output whose absolute path matches this
# fnmatch pattern waits PAUSE_SECONDS, fully written, before its rename.
PAUSE_VARIABLE = "YOLOFORGE_PAUSE_BEFORE_RENAME"
PAUSE_SECONDS = 60


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    The temporary file lives in the same directory so the rename is atomic, and a crash or an
    error leaves no half-written file under the final name. Temporary files that a killed
    earlier writer of the same output left behind are removed first. Writing errors come out
    as a YoloforgeError naming the file.
    """
    final = Path(path)
    prefix = _prepare(final)
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; outputs get ordinary permissions
    try:
        yield tmp
        _pause_before_rename(final)
        os.replace(tmp, final)
    except OSError as error:
        raise _os_error(error, final, tmp) from None
    except YoloforgeError:
        raise
    except Exception as error:
        # Libraries that write files themselves (ONNX Runtime, say) report a full disk in their
        # own words; the free space, measured before the partial file goes, says what happened.
        free = shutil.disk_usage(final.parent).free
        if free < DISK_FULL_BYTES:
            raise YoloforgeError(
                f"cannot write: the disk is full ({free} bytes free); the writer said:"
                f" {error.__class__.__name__}: {error}",
                final,
            ) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` whole.

    Between the two renames of a replacement, `path` is briefly missing, never partial.
    """
    final = Path(path)
    prefix = _prepare(final)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        _pause_before_rename(final)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".part", dir=final.parent))
            os.replace(final, old / final.name)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
    except OSError as error:
        raise _os_error(error, final, tmp) from None
    except YoloforgeError as error:
        if error.path is None or not Path(error.path).is_relative_to(tmp):
            raise
        # Name the file by where it was going, not by the temporary folder about to vanish.
        raise YoloforgeError(error.problem, final / Path(error.path).relative_to(tmp)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prepare(final: Path) -> str:
    """Make the output's folder; remove temporaries a killed writer of it left; their prefix."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}."
    for stale in final.parent.glob(f"{glob.escape(prefix)}*.part"):
        if "." in stale.name[len(prefix) : -len(".part")]:
            continue  # another output's, e.g. x.json's beside x
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    return prefix


def _os_error(error: OSError, final: Path, tmp: Path) -> YoloforgeError:
    """An OSError while making `final`: about the output, or about a file it was read from."""
    if error.filename is None or Path(error.filename).resolve().is_relative_to(tmp.resolve()):
        return YoloforgeError(f"cannot write: {error.strerror}", final)
    return YoloforgeError(error.strerror, error.filename)


def _pause_before_rename(final: Path) -> None:
    pattern = os.environ.get(PAUSE_VARIABLE)
    if pattern and fnmatch.fnmatch(os.path.abspath(final), pattern):
        time.sleep(PAUSE_SECONDS)


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
