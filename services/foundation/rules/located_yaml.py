"""YAML to plain data, remembering the line of every key and list item.

Built on PyYAML's composer (nodes keep `start_mark`) and its safe constructor for scalars. Three
deliberate departures from `yaml.safe_load`, all because ops staff edit these files by hand:

- a mapping with the same key twice is an error (safe_load silently keeps the last one);
- only `true`/`false` are booleans (YAML 1.2). YAML 1.1 also reads yes/no/on/off as booleans,
  which would turn a key named `on:` into `True:` and a country code `NO` into `False`;
- dates and timestamps stay text. JSON Schema has no date type, so the schema checks their shape
  and the model parses them, one place for both.

Keys are kept as the text written (`10:` gives the key "10"), since the data goes to JSON Schema.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from services.foundation.rules.errors import Path, PathPart, RuleFileError, format_path

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_BOOL = "tag:yaml.org,2002:bool"
_MERGE = "tag:yaml.org,2002:merge"
# Aliases can expand a small file into a huge document ("billion laughs"); no rule file is this big.
_MAX_NODES = 200_000


class _Loader(yaml.SafeLoader):
    pass


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_TIMESTAMP, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


class LineIndex:
    """Path tuple -> 1-based line. A mapping entry is located at its key, a list item at its start."""

    def __init__(self, lines: Mapping[Path, int]) -> None:
        self._lines = dict(lines)

    def line(self, path: Sequence[PathPart]) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one (e.g. for a missing field)."""
        probe = tuple(path)
        while True:
            if probe in self._lines:
                return self._lines[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def __contains__(self, path: object) -> bool:
        return path in self._lines


def parse_yaml(file: str, text: str) -> tuple[Any, LineIndex]:
    """Parse one YAML document. Raises RuleFileError located at the problem."""
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        root = loader.get_single_node()
        lines: dict[Path, int] = {}
        if root is None:
            return None, LineIndex(lines)
        builder = _Builder(file, loader, lines)
        return builder.build(root, ()), LineIndex(lines)
    except yaml.MarkedYAMLError as error:
        raise _syntax_error(file, error) from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        raise RuleFileError(file, line, "", f"character #x{error.character:04x} is not allowed in YAML") from None
    except yaml.YAMLError as error:
        raise RuleFileError(file, None, "", f"not valid YAML: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _syntax_error(file: str, error: yaml.MarkedYAMLError) -> RuleFileError:
    mark = error.problem_mark or error.context_mark
    reason = " ".join(part for part in (error.context, error.problem) if part)
    return RuleFileError(file, mark.line + 1 if mark else None, "", f"YAML syntax: {reason}")


class _Builder:
    def __init__(self, file: str, loader: _Loader, lines: dict[Path, int]) -> None:
        self._file = file
        self._loader = loader
        self._lines = lines
        self._active: set[int] = set()  # nodes being built, to refuse self-referencing aliases
        self._count = 0

    def _error(self, node: Node, path: Path, reason: str) -> RuleFileError:
        return RuleFileError(self._file, node.start_mark.line + 1, format_path(path), reason)

    def build(self, node: Node, path: Path) -> Any:
        self._lines.setdefault(path, node.start_mark.line + 1)
        self._count += 1
        if self._count > _MAX_NODES:
            raise self._error(node, path, f"the document has more than {_MAX_NODES} values (aliases?)")
        if isinstance(node, ScalarNode):
            return self._loader.construct_object(node, deep=True)
        if id(node) in self._active:
            raise self._error(node, path, "an alias refers to the value that contains it")
        self._active.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self._item(item, (*path, i)) for i, item in enumerate(node.value)]
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            raise self._error(node, path, f"unsupported YAML node {type(node).__name__}")
        finally:
            self._active.discard(id(node))

    def _item(self, node: Node, path: Path) -> Any:
        self._lines[path] = node.start_mark.line + 1
        return self.build(node, path)

    def _mapping(self, node: MappingNode, path: Path) -> dict[str, Any]:
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue  # `<<: *defaults` merges; keys written here override merged ones
            key = self._key(key_node, path)
            if key in seen:
                raise self._error(key_node, (*path, key), f"duplicate key '{key}' (first written on line {seen[key]})")
            seen[key] = key_node.start_mark.line + 1
        self._loader.flatten_mapping(node)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self._key(key_node, path)
            # Merged entries come first, so an explicit key written later wins, with its own line.
            self._lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def _key(self, node: Node, path: Path) -> str:
        if not isinstance(node, ScalarNode):
            raise self._error(node, path, "a key must be plain text, not a list or mapping")
        return str(node.value)
