"""The workflow's config, checked before any job: one-line errors, and shell arguments quoted.

The Snakefile calls check_config() after Snakemake has merged config.yaml, --configfile files
and --config values. Everything here is cheap: it runs each time Snakemake parses the workflow.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from yoloforge.errors import YoloforgeError

# Bytes per pixel of the first convolution's output in FP32 at 16 channels, the fewest any YOLO
# cfg starts with: the least memory a batch at a size needs while it runs.
FIRST_ACTIVATION_BYTES_PER_PIXEL = 16 * 4
MEMORY_HEADROOM = 0.5  # of this machine's memory, for the first activation alone
LONGEST_SHOWN = 60
MAX_SIDE = 4096  # as the schema's maximum of an integer size


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a mapping key written twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.MarkedYAMLError(
                    problem=f"key {key!r} is written twice (first on line {seen[key].line + 1})",
                    problem_mark=key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _UniqueKeyLoader.construct_mapping
)


def load_yaml(path: str | os.PathLike) -> Any:
    """A YAML file's content; a syntax error or a duplicate key is a YoloforgeError with its line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise YoloforgeError(f"unreadable config: {error}", path) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise YoloforgeError(f"{where}{error.problem or error.context}", path) from None
    except yaml.YAMLError as error:
        raise YoloforgeError(f"not YAML: {error}", path) from None


def typed_overrides(config: dict, overrides: Mapping[str, Any]) -> None:
    """Give `--config` values their YAML types in `config`.

    Snakemake reads `--config batches=[1,8]` as ['1', '8'] and `strict=true` as 'true'; each
    string that came from the command line is read again as YAML, as a config file's would be.
    """
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            typed_overrides(config[key], value)
        else:
            config[key] = _yaml_typed(value)


def _yaml_typed(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return yaml.safe_load(value) if value else value
        except yaml.YAMLError:
            return value
    if isinstance(value, list):
        return [_yaml_typed(item) for item in value]
    if isinstance(value, Mapping):
        return {key: _yaml_typed(item) for key, item in value.items()}
    return value


def key_path(path: Iterable[Any]) -> str:
    """models.yolov3.sizes[0] for the path ['models', 'yolov3', 'sizes', 0]."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "top level"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= LONGEST_SHOWN else text[: LONGEST_SHOWN - 3] + "..."


def schema_error(config: dict, schema: dict, folder: str | os.PathLike = ".") -> str | None:
    """The most relevant schema violation as one line naming the key path and what is allowed.
    References to other schema files are read from `folder`, as Snakemake's validate reads them."""
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT202012

    def retrieve(uri: str) -> Resource:
        return Resource.from_contents(load_yaml(Path(folder) / uri), default_specification=DRAFT202012)

    validator = jsonschema.Draft202012Validator(schema, registry=Registry(retrieve=retrieve))
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is None:
        return None
    where = key_path(error.absolute_path)
    kind, expected = error.validator, error.validator_value
    if kind == "additionalProperties" and isinstance(error.schema.get("properties"), dict):
        unexpected = sorted(set(error.instance) - set(error.schema["properties"]), key=str)
        allowed = ", ".join(error.schema["properties"]) or "none"
        return f"{where}: unexpected key {', '.join(map(_shown, unexpected))} (allowed: {allowed})"
    if kind == "enum":
        return f"{where}: {_shown(error.instance)} is not one of {', '.join(map(str, expected))}"
    if kind in ("oneOf", "anyOf"):
        described = [option.get("description") or _describe(option) for option in expected]
        return f"{where}: {_shown(error.instance)} is none of: {'; '.join(described)}"
    if error.schema_path and "propertyNames" in error.schema_path:
        where += " (a key)"
    if kind == "pattern":
        wanted = error.schema.get("description") or f"a match of {expected}"
        return f"{where}: {_shown(error.instance)} is not {wanted}"
    message = error.message if len(error.message) <= 200 else f"{_shown(error.instance)} is not valid"
    return f"{where}: {message}"


def _describe(option: dict) -> str:
    """A short text of one alternative of a oneOf: its type and limits."""
    limits = [
        f"{key} {option[key]}" for key in ("minimum", "maximum", "multipleOf", "pattern") if key in option
    ]
    return " ".join([str(option.get("type", "value")), *limits])


def semantic_error(config: dict, memory_bytes: int | None = None) -> str | None:
    """What the schema cannot say: finite numbers, an engine to build, strict's sha256s, sizes, memory."""
    for path, value in _leaves(config):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key_path(path)}: {value} is not a finite number"
    if not any(config.get("engines", {}).values()):
        return "engines: every engine has an empty list of precisions; give one at least"
    for model, spec in config["models"].items():
        for size in spec["sizes"]:
            if any(side % 32 for side in _sides(size)):
                return f"models.{model}.sizes: size {size} is not a multiple of 32 on each side"
            if max(_sides(size)) > MAX_SIDE:
                return f"models.{model}.sizes: size {size} has a side above the maximum of {MAX_SIDE}"
        if config.get("strict"):
            for asset in ("cfg", "weights"):
                if not spec[asset].get("sha256"):
                    return f"models.{model}.{asset}.sha256: strict is true, so every asset needs its sha256"
    if memory_bytes and _all_targets_local(config):
        batch = max(config["batches"])
        pixels, size = max(
            (width * height, f"{width}x{height}")
            for spec in config["models"].values()
            for width, height in map(_sides, spec["sizes"])
        )
        needed = batch * pixels * FIRST_ACTIVATION_BYTES_PER_PIXEL
        if needed > memory_bytes * MEMORY_HEADROOM:
            return (
                f"batches, models.*.sizes: batch {batch} at {size} needs about {needed / 2**30:.1f} GiB for"
                f" the first layer's output alone; this machine has {memory_bytes / 2**30:.1f} GiB"
            )
    return None


def _leaves(value: Any, path: tuple = ()) -> Iterable[tuple[tuple, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path, value


def _sides(size: int | str) -> tuple[int, int]:
    width, _, height = str(size).partition("x")
    return int(width), int(height or width)


def _all_targets_local(config: dict) -> bool:
    """True when no target has scheduler settings, so every job runs on this machine."""
    return not any(target.get("resources") for target in config.get("targets", {"local": {}}).values())


def machine_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def check_config(
    config: dict,
    schema_path: str | os.PathLike,
    files: Iterable[str | os.PathLike] = (),
    overrides: Mapping[str, Any] | None = None,
) -> None:
    """Everything about the config that can be wrong before any job runs, as a YoloforgeError.

    `files`: the config files Snakemake read (read again here for duplicate keys and syntax);
    `overrides`: the --config values, given their YAML types in `config` first.
    """
    for path in files:
        load_yaml(path)
    typed_overrides(config, overrides or {})
    schema = load_yaml(schema_path)
    problem = schema_error(config, schema, Path(schema_path).parent) or semantic_error(
        config, machine_memory()
    )
    if problem:
        raise YoloforgeError(f"config: {problem}")


def fetch_arguments(asset: Mapping[str, Any]) -> str:
    """Command-line arguments of `yoloforge fetch` for one asset of the config, quoted."""
    arguments = [part for source in asset["sources"] for part in ("--source", source)]
    if asset.get("sha256"):
        arguments += ["--sha256", asset["sha256"]]
    return shlex.join(arguments)


def option_arguments(options: Mapping[str, Any]) -> str:
    """`--option KEY=VALUE` arguments of `yoloforge build`, quoted; booleans as true/false."""
    return shlex.join(
        part
        for key, value in options.items()
        for part in ("--option", f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    )


def repeated_arguments(flag: str, values: Iterable[str]) -> str:
    """`flag VALUE` for each value, quoted."""
    return shlex.join(part for value in values for part in (flag, value))
