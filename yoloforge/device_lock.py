"""One process at a time runs kernels on a device while another times. Timing jobs, the device
probe, accuracy runs and builds' output checks on an accelerator, and builds that time kernels
hold its lock; a build may release it while it only compiles (cudnn-fused's plans), so several
builds share a machine's cores and each still times alone. Snakemake's gpu resource keeps jobs
apart within one run; this lock also covers jobs it lets overlap and runs of other workflows on
the same machine."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from yoloforge.errors import YoloforgeError

log = logging.getLogger(__name__)


def lock_path() -> Path:
    """YOLOFORGE_DEVICE_LOCK, else a file in the temporary directory named by the devices this
    process sees (CUDA_VISIBLE_DEVICES), so jobs given different GPUs do not wait on each other."""
    explicit = os.environ.get("YOLOFORGE_DEVICE_LOCK")
    if explicit:
        return Path(explicit)
    visible = re.sub(r"[^A-Za-z0-9,-]", "_", os.environ.get("CUDA_VISIBLE_DEVICES", "all")) or "none"
    return Path(tempfile.gettempdir()) / f"yoloforge-device-{visible}.lock"


class DeviceLock:
    """An exclusive flock on lock_path(): `held` takes it (re-entrant), `released` lets it go for a
    block inside `held`. `waited_seconds` sums the time spent waiting for it."""

    def __init__(self) -> None:
        self._descriptor: int | None = None
        self._depth = 0
        self._released = False
        self.waited_seconds = 0.0

    def _acquire(self) -> None:
        assert self._descriptor is not None
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        log.info("waiting for the device lock %s", lock_path())
        start = time.perf_counter()
        fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        self.waited_seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        if self._depth == 0:
            path = lock_path()
            try:
                # Read-only: flock needs no write access, so a lock file another user made
                # (with their umask) serves every user of the machine.
                self._descriptor = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError as error:
                raise YoloforgeError(
                    f"cannot open the device lock ({error.strerror}); set YOLOFORGE_DEVICE_LOCK to a"
                    " writable file",
                    path,
                ) from None
            self._acquire()
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                assert self._descriptor is not None
                os.close(self._descriptor)  # closing the descriptor drops the flock
                self._descriptor = None

    def held_if(self, needed: bool) -> contextlib.AbstractContextManager[None]:
        """`held()` where `needed`, else nothing."""
        return self.held() if needed else contextlib.nullcontext()

    @contextlib.contextmanager
    def released(self) -> Iterator[None]:
        if self._depth == 0 or self._released:
            yield
            return
        assert self._descriptor is not None
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        self._released = True
        try:
            yield
        finally:
            self._released = False
            self._acquire()


DEVICE_LOCK = DeviceLock()
