"""Located errors and the located YAML reader."""

from __future__ import annotations

import pytest

from services.foundation.rules.errors import RuleFileError, format_path
from services.foundation.rules.located_yaml import parse_yaml

FILE = "rules/campaigns/x.yaml"


def test_error_text_names_file_line_path_and_reason() -> None:
    error = RuleFileError(FILE, 14, "points.rules[2].award.per_amount", "must be greater than 0")
    assert str(error) == "rules/campaigns/x.yaml:14: points.rules[2].award.per_amount: must be greater than 0"
    assert str(RuleFileError(FILE, None, "", "the file is empty")) == "rules/campaigns/x.yaml: the file is empty"
    assert str(RuleFileError(FILE, 3, "", "YAML syntax: oops")) == "rules/campaigns/x.yaml:3: YAML syntax: oops"


def test_error_with_several_problems_shows_the_first_and_counts_the_rest() -> None:
    problems = [RuleFileError(FILE, line, "title", f"problem {line}") for line in (2, 5, 9)]
    error = RuleFileError.from_problems(problems)
    assert str(error) == "rules/campaigns/x.yaml:2: title: problem 2 (and 2 more)"
    assert [p.line for p in error.problems] == [2, 5, 9]
    assert (error.file, error.line, error.path, error.reason) == (FILE, 2, "title", "problem 2")


def test_format_path() -> None:
    assert format_path(("points", "rules", 2, "award", "per_amount")) == "points.rules[2].award.per_amount"
    assert format_path(()) == ""
    assert format_path((0, "id")) == "[0].id"


def test_lines_of_keys_and_list_items_with_fallback_to_the_nearest_ancestor() -> None:
    text = "# comment\ncampaign: a\npoints:\n  rules:\n    - id: one\n      award: 5\n    - id: two\n      award: 7\n"
    data, index = parse_yaml(FILE, text)
    assert data["points"]["rules"][1] == {"id": "two", "award": 7}
    assert index.line(("campaign",)) == 2
    assert index.line(("points", "rules", 0)) == 5
    assert index.line(("points", "rules", 1, "award")) == 8
    # A missing field is located at the mapping that should hold it.
    assert index.line(("points", "rules", 1, "when", "event")) == 7


def test_syntax_error_is_located_at_the_problem() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_yaml(FILE, "campaign: a\ntitle: b\n  bad: indentation\n")
    assert caught.value.line == 3
    assert "YAML syntax" in caught.value.reason


def test_duplicate_key_is_an_error_at_the_second_occurrence() -> None:
    text = "campaign: a\npoints:\n  budget: 5\n  caps: {}\n  budget: 6\n"
    with pytest.raises(RuleFileError) as caught:
        parse_yaml(FILE, text)
    assert caught.value.line == 5
    assert caught.value.path == "points.budget"
    assert "duplicate key 'budget' (first written on line 3)" in caught.value.reason


def test_duplicate_key_in_a_flow_mapping_inside_a_list() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_yaml(FILE, "rules:\n  - a: 1\n  - {b: 1, b: 2}\n")
    assert (caught.value.line, caught.value.path) == (3, "rules[1].b")


def test_yaml_1_1_booleans_and_dates_stay_text() -> None:
    data, _ = parse_yaml(FILE, "on: 2027-12-31\ncountry: NO\nflag: yes\nreal: true\nat: 2026-09-01T08:00:00+08:00\n")
    assert data == {
        "on": "2027-12-31",
        "country": "NO",
        "flag": "yes",
        "real": True,
        "at": "2026-09-01T08:00:00+08:00",
    }


def test_numbers_nulls_and_keys_as_written() -> None:
    data, _ = parse_yaml(FILE, "a: 10\nb: 1.5\nc: ~\n10: x\n'quoted': y\n")
    assert data == {"a": 10, "b": 1.5, "c": None, "10": "x", "quoted": "y"}


def test_merge_keys_work_and_explicit_keys_win() -> None:
    text = "base: &base {x: 1, y: 2}\nother:\n  <<: *base\n  y: 3\n"
    data, index = parse_yaml(FILE, text)
    assert data["other"] == {"x": 1, "y": 3}
    assert index.line(("other", "y")) == 4


def test_a_self_referencing_alias_is_refused() -> None:
    with pytest.raises(RuleFileError, match="alias refers to the value that contains it"):
        parse_yaml(FILE, "a: &loop\n  - *loop\n")


def test_a_forbidden_character_is_located() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_yaml(FILE, "a: 1\nb: 2\nc: \x00\n")
    assert caught.value.line == 3


def test_several_documents_are_refused() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_yaml(FILE, "a: 1\n---\nb: 2\n")
    assert caught.value.line == 2


def test_empty_text_is_none() -> None:
    data, index = parse_yaml(FILE, "# only a comment\n")
    assert data is None
    assert index.line(("anything",)) is None
