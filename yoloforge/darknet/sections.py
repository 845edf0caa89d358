"""The section parser of Darknet .cfg files, shared by the network builder and every layer kind.

Parsing keeps every key, known or not, with the line it came from, so errors can point at it.
Values are read as Darknet reads them: a `#` or `;` after a value starts a comment
(`layers=180 ###P6` is 180).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yoloforge.errors import YoloforgeError


@dataclass
class Section:
    """One `[name]` block of a cfg file: its options as written, and where it starts.

    `problems` collects what a layer kind refuses without stopping the parse, so that one error
    can list every unsupported layer and option of a cfg.
    """

    name: str
    line: int
    options: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    problems: list[str] = field(default_factory=list)

    def fail(self, problem: str) -> YoloforgeError:
        return YoloforgeError(f"line {self.line} [{self.name}]: {problem}", self.path)

    def refuse(self, problem: str) -> None:
        """Record a problem and let parsing go on, so later problems are reported too."""
        self.problems.append(f"line {self.line} [{self.name}]: {problem}")

    def refuse_options(self, reasons: dict[str, str]) -> None:
        """Refuse each option of `reasons` that is set, unless to 0 (Darknet's "off")."""
        for key, reason in reasons.items():
            value = self.options.get(key)
            if value is not None and value != "0":
                self.refuse(f"{key}={value}: {reason}")

    def _convert(self, key: str, raw: str, kind: type):
        try:
            return kind(raw)
        except ValueError:
            raise self.fail(f"{key}={raw!r} is not a valid {kind.__name__}") from None

    def has(self, key: str) -> bool:
        return key in self.options

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise self.fail(f"missing required key {key!r}")
            return default
        return self._convert(key, self.options[key], int)

    def get_float(self, key: str, default: float) -> float:
        if key not in self.options:
            return default
        return self._convert(key, self.options[key], float)

    def get_str(self, key: str, default: str) -> str:
        return self.options.get(key, default)

    def get_list(self, key: str, kind: type, default: list | None = None) -> list:
        if key not in self.options:
            if default is None:
                raise self.fail(f"missing required key {key!r}")
            return default
        items = [item.strip() for item in self.options[key].split(",") if item.strip()]
        return [self._convert(key, item, kind) for item in items]


def _without_comment(value: str) -> str:
    for mark in "#;":
        value = value.split(mark, 1)[0]
    return value.strip()


def parse_cfg_text(text: str, path: str | None = None) -> list[Section]:
    """Split cfg text into sections; `#` and `;` start comments; keys keep their raw string value."""
    sections: list[Section] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise YoloforgeError(f"line {number}: malformed section header {line!r}", path)
            sections.append(Section(name=line[1:-1].strip().lower(), line=number, path=path))
            continue
        if "=" not in line:
            raise YoloforgeError(f"line {number}: expected key=value, found {line!r}", path)
        if not sections:
            raise YoloforgeError(f"line {number}: option {line!r} before any [section]", path)
        key, value = line.split("=", 1)
        sections[-1].options[key.strip()] = _without_comment(value)
    return sections
