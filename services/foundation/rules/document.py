"""Load a rule file: YAML with lines, validated by a JSON Schema, every problem located and worded
for the people who edit the file ("unknown field 'bugdet'", not a jsonschema repr).

Schemas may carry `errorMessage` (the ajv-errors convention) on a subschema: a string used when
that subschema fails on its shape (pattern, oneOf, ...), or a {keyword: message} mapping.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path as FilePath
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from services.foundation.rules.errors import Path, RuleFileError, format_path
from services.foundation.rules.located_yaml import LineIndex, parse_yaml

# Failures whose generic wording is already precise; a string errorMessage does not replace them.
_PRECISE = {"type", "required", "additionalProperties", "enum", "const"}

_TYPE_WORDS = {
    "integer": "a whole number",
    "number": "a number",
    "string": "text",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "empty",
}


def content_version(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:12]


SCHEMA_DIR_ENV = "ALLIANCE_SCHEMA_DIR"


def rule_schema_path(name: str) -> FilePath:
    """A rule file kind's JSON Schema: $ALLIANCE_SCHEMA_DIR/<name> if set (installed images), else
    the repository's rules/schema/<name> found above this package."""
    configured = os.environ.get(SCHEMA_DIR_ENV)
    if configured:
        return FilePath(configured) / name
    for parent in FilePath(__file__).resolve().parents:
        candidate = parent / "rules" / "schema" / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{name} not found above {FilePath(__file__).parent}; set {SCHEMA_DIR_ENV}")


def rule_schema(name: str) -> dict[str, Any]:
    return _read_schema(str(rule_schema_path(name)))


@lru_cache(maxsize=8)
def _read_schema(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        schema: dict[str, Any] = json.load(handle)
    return schema


def load_document(file: str, content: bytes, schema: Mapping[str, Any]) -> tuple[Any, LineIndex, str]:
    """Parse and validate one rule file. Returns (data, line index, version).

    version is the first 12 hex digits of the sha256 of the bytes: it names what decided an
    outcome (ledger entries record it) and changes with any edit, comments included.
    Raises RuleFileError carrying every problem found, in line order.
    """
    version = content_version(content)
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RuleFileError(file, None, "", f"not UTF-8 text (byte {error.start})") from None
    data, index = parse_yaml(file, text)
    if data is None:
        raise RuleFileError(file, None, "", "the file is empty")
    problems = validation_problems(file, data, index, schema)
    if problems:
        raise RuleFileError.from_problems(problems)
    return data, index, version


def validation_problems(file: str, data: Any, index: LineIndex, schema: Mapping[str, Any]) -> list[RuleFileError]:
    validator = Draft202012Validator(schema)
    found: dict[tuple[Path, str], None] = {}
    for error in validator.iter_errors(data):
        for path, reason in describe(error):
            found.setdefault((path, reason), None)
    problems = [RuleFileError(file, index.line(path), format_path(path), reason) for path, reason in found]
    return sorted(problems, key=lambda p: (p.line or 0, p.path))


def describe(error: ValidationError) -> list[tuple[Path, str]]:
    """One jsonschema error -> located human sentences (path, reason)."""
    path: Path = tuple(error.absolute_path)
    keyword = str(error.validator)
    value: Any = error.validator_value
    instance: Any = error.instance
    custom = _custom_message(error)

    if "propertyNames" in error.relative_schema_path:
        # jsonschema reports a bad key with the key itself as instance and the object's path.
        reason = custom or _sentence(keyword, value, None) or _fallback(error)
        return [((*path, str(instance)), f"field name '{instance}' {reason}")]
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = sorted(_schema_of(error).get("properties", {}))
        return [((*path, key), _unknown_field(key, allowed)) for key in _extra_keys(error)]
    if keyword == "required" and isinstance(instance, dict):
        return [((*path, name), "is required") for name in value if name not in instance]
    if keyword in ("oneOf", "anyOf"):
        return _alternatives(error, path, custom)
    if custom:
        return [(path, custom)]
    return [(path, _sentence(keyword, value, instance) or _fallback(error))]


def _schema_of(error: ValidationError) -> Mapping[str, Any]:
    """The schema that failed; a boolean schema (false) has no keywords."""
    return error.schema if isinstance(error.schema, Mapping) else {}


def _custom_message(error: ValidationError) -> str | None:
    message = _schema_of(error).get("errorMessage")
    if isinstance(message, dict):
        return message.get(str(error.validator))
    if isinstance(message, str) and error.validator not in _PRECISE:
        return message
    return None


def _extra_keys(error: ValidationError) -> list[str]:
    schema = _schema_of(error)
    known = set(schema.get("properties", {}))
    patterns = list(schema.get("patternProperties", {}))
    instance: Any = error.instance
    return [key for key in instance if key not in known and not any(re.search(pattern, key) for pattern in patterns)]


def _unknown_field(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f"unknown field '{key}' (did you mean '{close[0]}'?)"
    if allowed:
        return f"unknown field '{key}' (allowed here: {', '.join(allowed)})"
    return f"unknown field '{key}'"


def _alternatives(error: ValidationError, path: Path, custom: str | None) -> list[tuple[Path, str]]:
    """oneOf/anyOf: explain the alternative the writer evidently meant.

    An alternative whose type does not fit (a number where a mapping is expected) was not meant;
    among the others, the one that got deepest into the value is the best explanation.
    """
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    meant = [
        errors for errors in branches.values() if not any(e.validator == "type" and not e.relative_path for e in errors)
    ]
    if meant:
        best = max(meant, key=lambda errors: max(len(e.relative_path) for e in errors))
        return [located for sub in best for located in describe(sub)]
    if custom:
        return [(path, custom)]
    if not error.context:  # oneOf matched more than one alternative
        return [(path, "matches more than one of the allowed forms")]
    kinds = [_TYPE_WORDS.get(str(e.validator_value), str(e.validator_value)) for e in error.context]
    return [(path, f"must be {_join_or(dict.fromkeys(kinds))}{_got(error.instance)}")]


def _sentence(keyword: str, value: Any, instance: Any) -> str | None:
    match keyword:
        case "type":
            kinds = value if isinstance(value, list) else [value]
            return f"must be {_join_or(_TYPE_WORDS.get(str(k), str(k)) for k in kinds)}{_got(instance)}"
        case "enum":
            return f"must be one of {', '.join(str(v) for v in value)}{_got(instance)}"
        case "const":
            return f"must be {value}"
        case "minimum":
            return f"must be at least {value}"
        case "exclusiveMinimum":
            return f"must be greater than {value}"
        case "maximum":
            return f"must be at most {value}"
        case "exclusiveMaximum":
            return f"must be less than {value}"
        case "minItems":
            return "must not be empty" if value == 1 else f"must have at least {value} items"
        case "maxItems":
            return f"must have at most {value} items"
        case "minLength":
            return "must not be empty" if value == 1 else f"must be at least {value} characters"
        case "maxLength":
            return f"must be at most {value} characters"
        case "minProperties":
            return "must not be empty" if value == 1 else f"must have at least {value} fields"
        case "maxProperties":
            return f"must have at most {value} fields"
        case "uniqueItems":
            return "must not repeat a value"
        case "pattern":
            return f"must match {value}{_got(instance)}"
    return None


def _fallback(error: ValidationError) -> str:
    return error.message


def _got(instance: Any) -> str:
    if isinstance(instance, bool):
        return f" (got {str(instance).lower()})"
    if isinstance(instance, str):
        return f" (got '{instance}')"
    if isinstance(instance, int | float):
        return f" (got {instance})"
    if isinstance(instance, dict):
        return " (got a mapping)"
    if isinstance(instance, list):
        return " (got a list)"
    if instance is None:
        return " (got nothing)"
    return ""


def _join_or(words: Iterable[str]) -> str:
    items = list(words)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]
