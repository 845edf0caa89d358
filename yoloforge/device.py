"""Device fingerprints: what an engine is valid on. Never reuse an engine across fingerprints."""

from __future__ import annotations

import hashlib
import os
import platform
import re
import subprocess
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


def share_cores_when_idle() -> None:
    """Make this process's CPU thread pools sleep when they run out of work, instead of spinning
    for more: for every command that may run beside other jobs, which is every one but timing.
    PyTorch's OpenMP pool reads OMP_WAIT_POLICY when PyTorch is imported, so call this first.
    On a small machine, processes whose pools spin steal each other's cores: several at once
    took far longer with OpenMP's default policy than with PASSIVE. A user's own
    OMP_WAIT_POLICY wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def idle_threads_sleep() -> bool:
    """Whether CPU engines should let idle threads sleep (see share_cores_when_idle)."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def cpu_fingerprint() -> dict[str, object]:
    return {
        "kind": "cpu",
        "name": _cpu_model(),
        "machine": platform.machine(),
        "features": _cpu_features(),
    }


def cuda_fingerprint() -> dict[str, object] | None:
    """The GPU that CUDA programs here get first (name, compute capability, driver), or None.

    Read from nvidia-smi, so it needs no framework: kernels compiled for one card, driver and
    stack are valid only there.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    try:
        result = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,compute_cap,driver_version",
                "--format=csv,noheader",
                "-i",
                visible,
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    fields = [field.strip() for field in result.stdout.strip().split(",")]
    if len(fields) != 3:
        return None
    name, capability, driver = fields
    return {"kind": "cuda", "name": name, "compute_capability": capability, "driver": driver}


def on_accelerator(fingerprint: dict[str, object]) -> bool:
    """Whether an engine of this device fingerprint runs on an accelerator, not the CPU."""
    return fingerprint.get("kind", "cpu") != "cpu"


def fingerprint_id(fingerprint: dict[str, object]) -> str:
    """A short, readable, filesystem-safe key: device name plus a hash of everything recorded."""
    name = re.sub(r"[^a-z0-9]+", "-", str(fingerprint.get("name", "device")).lower()).strip("-")
    digest = hashlib.sha256(repr(sorted(fingerprint.items())).encode()).hexdigest()[:10]
    return f"{name[:40]}-{digest}"
