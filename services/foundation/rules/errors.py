"""The one error type of rule files: where (file, line, field path) and what is wrong."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Sequence[PathPart]) -> str:
    """("points", "rules", 2, "award") -> "points.rules[2].award"."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


class RuleFileError(Exception):
    """A rule file that cannot be used, located so that ops can fix it without reading code.

    One error may carry several problems (validation reports all it finds); the attributes
    describe the first one and `problems` lists them all, the first included.
    """

    def __init__(
        self,
        file: str,
        line: int | None,
        path: str,
        reason: str,
        problems: Sequence[RuleFileError] | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.reason = reason
        self.problems: list[RuleFileError] = list(problems) if problems else [self]
        super().__init__(self._text())

    @classmethod
    def from_problems(cls, problems: Iterable[RuleFileError]) -> RuleFileError:
        found = [p for error in problems for p in error.problems]
        if not found:
            raise ValueError("from_problems needs at least one problem")
        first = found[0]
        return cls(first.file, first.line, first.path, first.reason, found)

    def location(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}" if self.path else where

    def _text(self) -> str:
        text = f"{self.location()}: {self.reason}"
        more = len(self.problems) - 1
        return f"{text} (and {more} more)" if more > 0 else text
