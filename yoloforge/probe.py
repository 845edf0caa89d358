"""What this machine offers each engine (`yoloforge device`): per engine and precision whether it
runs here or why not, the fingerprint its engines are built for, and the measured compute ceilings.
"""

from __future__ import annotations

from typing import Any


def probe_device(engines: list[str], precisions: list[str], ceilings: bool = True) -> dict[str, Any]:
    """The device report: {"engines": {engine: Backend.probe}, "ceilings": ...} (ceilings only if asked)."""
    from yoloforge.backends import get_backend

    report: dict[str, Any] = {"engines": {name: get_backend(name).probe(precisions) for name in engines}}
    if ceilings:
        from yoloforge.ceiling import ceiling_device, measure_ceilings

        # Beside the engine probes, never inside their fingerprints: a timing varies from run to
        # run, and engine folders must not.
        report["ceilings"] = {"device": ceiling_device(), "precisions": measure_ceilings()}
    return report


def _fingerprint_text(fingerprint: dict[str, Any]) -> str:
    return ", ".join(
        f"{key} {value}" for key, value in fingerprint.items() if key not in ("kind", "features")
    )


def describe(report: dict[str, Any]) -> str:
    """The device report as plain-text tables: what runs here and why not, then each fingerprint
    (minus the CPU's feature list) and the ceilings."""
    rows = [("engine", "precision", "here")]
    for name, probe in report["engines"].items():
        for precision, reason in probe["precisions"].items():
            rows.append((name, precision, f"no: {reason}" if reason else f"runs, in {probe['id']}"))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    lines = [f"{engine:<{widths[0]}}  {precision:<{widths[1]}}  {here}" for engine, precision, here in rows]
    fingerprints = {
        probe["id"]: probe["fingerprint"] for probe in report["engines"].values() if probe["fingerprint"]
    }
    if fingerprints:
        lines += ["", "fingerprint (engines are built and kept per fingerprint)"]
        lines += [f"{key}: {_fingerprint_text(value)}" for key, value in fingerprints.items()]
    ceilings = report.get("ceilings") or {}
    measured = ceilings.get("precisions") or {}
    if measured:
        device = (ceilings.get("device") or {}).get("name", "this device")
        lines += ["", f"convolution ceilings of {device}"]
        for precision, ceiling in measured.items():
            if isinstance(ceiling, dict) and "tflops" in ceiling:
                route = f" ({ceiling['route']})" if "route" in ceiling else ""
                lines.append(f"{precision}: {ceiling['tflops']:.2f} TFLOP/s{route}")
    return "\n".join(lines) + "\n"
