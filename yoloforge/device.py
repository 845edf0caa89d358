"""Device fingerprints: what an engine is valid on. Never reuse an engine across fingerprints."""

from __future__ import annotations

import hashlib
import os
import platform
import re
from pathlib import Path

# CPU features that change which kernels an engine library picks.
CPU_FEATURES = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    match = re.search(r"^(model name|Hardware|CPU part)\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(2).strip() if match else platform.machine()


def _cpu_features() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    match = re.search(r"^(flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = set(match.group(2).split()) if match else set()
    return [feature for feature in CPU_FEATURES if feature in flags]


def cpu_threads() -> int:
    """Threads for CPU engines: YOLOFORGE_THREADS (set by timing jobs), never more than the cores."""
    cores = os.cpu_count() or 1
    return max(1, min(int(os.environ.get("YOLOFORGE_THREADS", cores)), cores))


def cpu_fingerprint() -> dict[str, object]:
    return {
        "kind": "cpu",
        "name": _cpu_model(),
        "machine": platform.machine(),
        "features": _cpu_features(),
    }


def fingerprint_id(fingerprint: dict[str, object]) -> str:
    """A short, readable, filesystem-safe key: device name plus a hash of everything recorded."""
    name = re.sub(r"[^a-z0-9]+", "-", str(fingerprint.get("name", "device")).lower()).strip("-")
    digest = hashlib.sha256(repr(sorted(fingerprint.items())).encode()).hexdigest()[:10]
    return f"{name[:40]}-{digest}"
