"""The one error type the project raises for bad input; the CLI prints it as one line."""

from __future__ import annotations

import os


class YoloforgeError(Exception):
    """A user-facing error: names the file (when there is one) and the problem, on one line."""

    def __init__(self, problem: str, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = " ".join(str(problem).split())
        super().__init__(f"{self.path}: {self.problem}" if self.path else self.problem)
