"""Schema validation with located, human messages."""

from __future__ import annotations

import hashlib

import pytest

from services.foundation.rules.document import load_document
from services.foundation.rules.errors import RuleFileError

FILE = "rules/campaigns/x.yaml"

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z]+$", "errorMessage": "must be lowercase letters"},
        "budget": {"type": "integer", "exclusiveMinimum": 0},
        "stacking": {"enum": ["all", "highest"]},
        "starts": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "rules": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["id", "award"],
                "properties": {
                    "id": {"type": "string"},
                    "award": {
                        "oneOf": [
                            {"type": "integer", "exclusiveMinimum": 0},
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["per_amount"],
                                "properties": {"per_amount": {"type": "number", "exclusiveMinimum": 0}},
                            },
                        ],
                        "errorMessage": "must be points or a mapping with per_amount",
                    },
                },
            },
        },
    },
}


def load(text: str) -> object:
    data, _, _ = load_document(FILE, text.encode(), SCHEMA)
    return data


def problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RuleFileError) as caught:
        load_document(FILE, text.encode(), SCHEMA)
    return [(p.line, p.path, p.reason) for p in caught.value.problems]


def test_valid_document_with_version_of_the_bytes() -> None:
    content = b"name: abc\nstarts: 2026-09-01\n"
    data, index, version = load_document(FILE, content, SCHEMA)
    assert data == {"name": "abc", "starts": "2026-09-01"}  # the date is still text for the schema
    assert version == hashlib.sha256(content).hexdigest()[:12]
    assert index.line(("starts",)) == 2


def test_unknown_field_is_located_at_its_key_with_a_suggestion() -> None:
    assert problems("name: abc\n\nbugdet: 5\n") == [(3, "bugdet", "unknown field 'bugdet' (did you mean 'budget'?)")]


def test_bad_enum_value() -> None:
    assert problems("name: abc\nstacking: most\n") == [(2, "stacking", "must be one of all, highest (got 'most')")]


def test_missing_field_is_located_at_its_parent() -> None:
    assert problems("name: abc\nrules:\n  - id: a\n    award: 1\n  - id: b\n") == [(5, "rules[1].award", "is required")]


def test_wrong_type_deep_in_a_list() -> None:
    text = "name: abc\nrules:\n" + "".join(f"  - id: r{i}\n    award: {i + 1}\n" for i in range(3))
    text += "  - id: r3\n    award:\n      per_amount: ten\n"
    assert problems(text) == [(11, "rules[3].award.per_amount", "must be a number (got 'ten')")]


def test_one_of_explains_the_alternative_that_was_meant() -> None:
    assert problems("name: abc\nrules:\n  - id: a\n    award: {per_amount: 0}\n") == [
        (4, "rules[0].award.per_amount", "must be greater than 0")
    ]
    assert problems("name: abc\nrules:\n  - id: a\n    award: 0\n") == [(4, "rules[0].award", "must be greater than 0")]
    assert problems("name: abc\nrules:\n  - id: a\n    award: lots\n") == [
        (4, "rules[0].award", "must be points or a mapping with per_amount")
    ]


def test_custom_message_and_every_problem_in_line_order() -> None:
    found = problems("budget: 0\nname: ABC\nstacking: 3\n")
    assert found == [
        (1, "budget", "must be greater than 0"),
        (2, "name", "must be lowercase letters"),
        (3, "stacking", "must be one of all, highest (got 3)"),
    ]


def test_empty_file_and_non_mapping() -> None:
    assert problems("# nothing\n") == [(None, "", "the file is empty")]
    assert problems("- a\n") == [(1, "", "must be a mapping (got a list)")]


def test_not_utf8() -> None:
    with pytest.raises(RuleFileError, match="not UTF-8"):
        load_document(FILE, b"name: \xff\n", SCHEMA)
