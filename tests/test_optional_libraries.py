"""Without any optional engine library: the package imports, the CLI says why each engine cannot
run, and Snakemake plans the default workflow. The libraries are hidden from a fresh interpreter
by an import hook, as if they had never been installed."""

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import DATA, ROOT

OPTIONAL = ("onnxruntime", "openvino", "nncf", "torch", "cv2", "tensorrt", "polygraphy")


def _hiding(names: tuple[str, ...]) -> str:
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        class Hide(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {names!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, Hide())
        """
    )


def run_without_optional(
    code: str, cwd=ROOT, hidden: tuple[str, ...] = OPTIONAL
) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", _hiding(hidden) + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def test_convert_without_onnxsim_fails_in_one_line(synthetic_weights, tmp_path):
    cfg = DATA / "every-layer.cfg"
    output = tmp_path / "every-layer.onnx"
    result = run_without_optional(
        f"""
        import yoloforge.cli
        sys.exit(yoloforge.cli.main(["convert", "--cfg", {str(cfg)!r}, "--weights",
            {str(synthetic_weights(cfg))!r}, "--size", "64", "--output", {str(output)!r}]))
        """,
        hidden=("onnxsim",),
    )
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith(f"yoloforge: error: {output}: onnxsim") and "--no-simplify" in message
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_package_and_cli_without_engine_libraries(tmp_path):
    output = tmp_path / "device.json"
    result = run_without_optional(
        f"""
        import yoloforge.backends, yoloforge.cli, yoloforge.table, yoloforge.timing
        assert not {{"onnxruntime", "torch", "cv2", "openvino"}} & set(sys.modules)
        sys.exit(yoloforge.cli.main(["device", "--output", {str(output)!r}]))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert report["ceilings"] == {"device": None, "precisions": {}}  # no PyTorch, no roofline
    engines = report["engines"]
    for name, probe in engines.items():
        reasons = probe["precisions"].values()
        assert all(reasons), (name, probe)  # nothing claims to run
        assert probe["id"] is None
    assert "onnxruntime is not installed" in engines["onnxruntime"]["precisions"]["fp32"]
    assert "PyTorch is not installed" in engines["torch-eager"]["precisions"]["fp32"]


def test_dry_run_without_engine_libraries():
    result = run_without_optional(
        """
        from snakemake.cli import main
        main(["-n", "--quiet", "rules"])
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device" in result.stdout + result.stderr
