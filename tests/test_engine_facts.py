"""Each engine's facts are declared once, on its backend class: the config schema, the workflow's
rules (resources, wildcards, conda envs), the table's baselines, the accuracy reference, the CLI's
choices, the pyproject extras and the conda envs must all agree with them."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from packaging.requirements import Requirement

from tests.conftest import ROOT
from yoloforge import accuracy, table
from yoloforge.backends import (
    BACKENDS,
    DEVICE_KINDS,
    ENGINES_SCHEMA,
    OPTION_TYPES,
    PRECISIONS,
    BuildRequest,
    baselines,
    engines_schema_text,
    get_backend,
    reference_engines,
)
from yoloforge.cli import build_parser
from yoloforge.errors import YoloforgeError

CONFIG_SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# A value of each option type, and one of another type.
SAMPLE = {bool: (True, "yes"), int: (2, "two"), float: (0.5, "half"), str: ("text", 3)}


def test_the_committed_engine_schema_is_the_one_the_facts_generate():
    committed = (ROOT / ENGINES_SCHEMA).read_text()
    assert committed == engines_schema_text(), f"run: python -m yoloforge schema --output {ENGINES_SCHEMA}"
    schema = yaml.safe_load(CONFIG_SCHEMA.read_text())["properties"]
    assert schema["engines"]["$ref"] == "engines.schema.yaml#/$defs/engines"
    assert schema["engine_options"]["$ref"] == "engines.schema.yaml#/$defs/engine_options"


def _validate(change: dict) -> None:
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config.yaml").read_text()) | change
    validate(config, str(CONFIG_SCHEMA))


@pytest.mark.parametrize("engine", list(BACKENDS))
def test_the_config_schema_takes_each_declared_precision_and_option_and_nothing_else(engine):
    facts = BACKENDS[engine].facts
    _validate({"engines": {engine: list(facts.precisions)}})
    for precision in set(PRECISIONS) - set(facts.precisions):
        with pytest.raises(Exception, match=f"'{precision}' is not one of"):
            _validate({"engines": {engine: [precision]}})
    for name, option in facts.options.items():
        good, bad = SAMPLE[option.type]
        _validate({"engine_options": {engine: {name: good}}})
        with pytest.raises(Exception, match=f"is not of type '{OPTION_TYPES[option.type]}'"):
            _validate({"engine_options": {engine: {name: bad}}})
    with pytest.raises(Exception, match="'undeclared' was unexpected"):
        _validate({"engine_options": {engine: {"undeclared": True}}})


def test_the_facts_hold_together():
    kinds_with_baseline = [kind for backend in BACKENDS.values() for kind in backend.facts.baseline_on]
    assert sorted(kinds_with_baseline) == sorted(DEVICE_KINDS), "one baseline per kind of device"
    ranks = [backend.facts.reference_rank for backend in BACKENDS.values() if backend.facts.reference_rank]
    assert len(ranks) == len(set(ranks)) >= 1
    for name, backend in BACKENDS.items():
        facts = backend.facts
        assert backend.name == name
        assert facts.precisions and set(facts.precisions) <= set(PRECISIONS), name
        assert facts.devices and set(facts.devices) <= set(DEVICE_KINDS), name
        assert set(facts.baseline_on) <= set(facts.devices), f"{name} is a baseline where it does not run"
        if facts.baseline_on or facts.reference_rank:
            assert "fp32" in facts.precisions, f"{name}: baselines and references run fp32"
        if isinstance(facts.times_kernels, str):
            assert facts.options[facts.times_kernels].type is bool, name
        for option_name, option in facts.options.items():
            assert option.type in OPTION_TYPES and option.help, (name, option_name)
            defaults = option.default if isinstance(option.default, dict) else {"any": option.default}
            if isinstance(option.default, dict):
                assert set(option.default) == set(facts.devices), (name, option_name)
            assert all(isinstance(value, option.type) for value in defaults.values()), (name, option_name)


def test_the_table_and_the_accuracy_reference_read_the_facts():
    assert baselines() == table.BASELINES
    for kind, (engine, precision) in table.BASELINES.items():
        assert kind in BACKENDS[engine].facts.baseline_on and precision == "fp32"
    assert reference_engines() == accuracy.REFERENCE_ENGINES
    ranks = [BACKENDS[engine].facts.reference_rank for engine in accuracy.REFERENCE_ENGINES]
    assert ranks == sorted(ranks)
    assert set(accuracy.REFERENCE_ENGINES) == {n for n, b in BACKENDS.items() if b.facts.reference_rank}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_cli_offers_the_declared_engines_and_precisions():
    offered = {}
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if action.dest in ("engine", "precision"):
                offered[(command, action.dest)] = action.choices
    assert {command for command, dest in offered if dest == "engine"} == {
        "build", "bench", "accuracy", "unavailable", "device",
    }  # fmt: skip
    for (command, dest), choices in offered.items():
        assert list(choices) == list(BACKENDS if dest == "engine" else PRECISIONS), (command, dest)


def test_a_build_refuses_options_its_engine_does_not_declare_or_of_the_wrong_type(tmp_path):
    request = BuildRequest(
        tmp_path / "missing.onnx", "fp32", 1, tmp_path / "e.engine", options={"compile": "true"}
    )
    with pytest.raises(YoloforgeError, match=r"onnxruntime has no build option compile \(it has none\)"):
        get_backend("onnxruntime").build(request)
    aoti = get_backend("torch-aoti")
    request = BuildRequest(tmp_path / "m.onnx", "fp32", 1, tmp_path / "e.engine")
    assert aoti.option(request, "max_autotune", "cuda") is True
    assert aoti.option(request, "max_autotune", "cpu") is False
    request.options["max_autotune"] = "False"
    assert aoti.option(request, "max_autotune", "cuda") is False
    request.options["max_autotune"] = "maybe"
    with pytest.raises(YoloforgeError, match="max_autotune='maybe': expected true or false"):
        aoti.option(request, "max_autotune", "cuda")


@pytest.fixture(scope="module")
def snakemake_workflow(tmp_path_factory):
    """The workflow as Snakemake loads it from the Snakefile, with the default config (no job runs)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        loaded = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[ROOT / "config.yaml"]),
            storage_settings=StorageSettings(),
            snakefile=ROOT / "Snakefile",
            workdir=tmp_path_factory.mktemp("workflow"),
        )
        yield loaded._workflow


def test_the_rules_read_the_facts(snakemake_workflow, tmp_path, monkeypatch):
    workflow = snakemake_workflow
    precision = re.compile(workflow.wildcard_constraints["precision"])
    assert [p for p in [*PRECISIONS, "fp64", "fp4"] if precision.fullmatch(p)] == list(PRECISIONS)
    build_gpu = workflow.globals["build_gpu"]
    assert workflow.get_rule("build").resources["gpu"]._evaluator is build_gpu
    config = workflow.globals["config"]
    for name, backend in BACKENDS.items():
        declared = backend.facts.times_kernels
        alone = not backend.facts.compiles_off_device
        wildcards = SimpleNamespace(engine=name, target="local")
        # Unset, a switch counts as on; set in the config, it decides.
        config["engine_options"] = {}
        assert build_gpu(wildcards) == int(bool(declared) and alone), name
        for value in (True, False):
            config["engine_options"] = {name: {declared: value}} if isinstance(declared, str) else {}
            times = declared is True or (bool(declared) and value)
            assert build_gpu(wildcards) == int(times and alone), name
    assert any(backend.facts.compiles_off_device for backend in BACKENDS.values())

    # Submitted to a cluster, where gpu=1 is what gives a job a GPU, every build of an engine on
    # the target's accelerator asks for one: those that compile off the device too.
    config["engine_options"] = {}
    (tmp_path / "results" / "device").mkdir(parents=True)
    kinds = {"cudnn-fused": "cuda", "tensorrt": "cuda", "onnxruntime": "cpu"}
    probe = {"engines": {name: {"fingerprint": {"kind": kind}} for name, kind in kinds.items()}}
    (tmp_path / "results" / "device" / "local.json").write_text(json.dumps(probe))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        workflow, "_executor_plugin", SimpleNamespace(common_settings=SimpleNamespace(local_exec=False))
    )
    assert {name: build_gpu(SimpleNamespace(engine=name, target="local")) for name in kinds} == {
        "cudnn-fused": 1,
        "tensorrt": 1,
        "onnxruntime": 0,
    }


def test_each_engine_job_runs_in_its_family_env_and_every_env_exists(snakemake_workflow):
    engine_env = snakemake_workflow.globals["engine_env"]
    for rule in snakemake_workflow.rules:
        if rule.shellcmd is None:
            continue  # a target rule such as `all`
        env = rule._conda_env
        assert env is not None, f"rule {rule.name} has no conda env"
        if callable(env):
            assert env is engine_env, rule.name
            assert "engine" in rule.wildcard_names, f"rule {rule.name} is not per engine"
            continue
        assert (Path(rule.basedir.get_path_or_uri(secret_free=True)) / env).resolve().is_file(), rule.name
    for name, backend in BACKENDS.items():
        env = engine_env(SimpleNamespace(engine=name))
        assert env == f"../envs/{backend.facts.family}.yaml"
        assert (ROOT / "rules" / env).resolve().is_file(), env


def test_no_rule_names_an_engine():
    names = re.compile("|".join(re.escape(f'"{name}"') for name in BACKENDS))
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        code = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if names.search(line)], path


def _pip_requirements(path: Path) -> dict[str, Requirement]:
    environment = yaml.safe_load(path.read_text())
    pip = next(item["pip"] for item in environment["dependencies"] if isinstance(item, dict))
    return {Requirement(line).name: Requirement(line) for line in pip}


def test_each_family_env_installs_the_family_at_the_versions_the_device_probe_sees():
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = [Requirement(line) for line in PYPROJECT["project"]["dependencies"]]
    probe_env = _pip_requirements(ROOT / "envs" / "engines.yaml")
    for name, backend in BACKENDS.items():
        facts = backend.facts
        env = _pip_requirements(ROOT / "envs" / f"{facts.family}.yaml")
        family = [Requirement(line) for extra in facts.extras for line in extras[extra]]
        for requirement in (
            core + family + [Requirement(line) for line in extras["coco"] + extras["onnxruntime"]]
        ):
            assert requirement.name in env, f"envs/{facts.family}.yaml lacks {requirement.name} ({name})"
            pinned = env[requirement.name]
            for version in (spec.version for spec in pinned.specifier if spec.operator == "=="):
                assert requirement.specifier.contains(version), (facts.family, str(pinned), str(requirement))
        for requirement in family:
            pinned = env[requirement.name]
            assert [spec.operator for spec in pinned.specifier] == ["=="], f"{pinned} is not pinned"
            # The device probe runs in envs/engines.yaml: its fingerprint must be the jobs'.
            assert probe_env.get(requirement.name) == pinned, (facts.family, str(pinned))
