"""The condition language of rule files (a rule's `when:`), compiled to a durable_rules expression
that tests one fact.

    when:
      event: merchant.spend                        # equality
      merchant_category: {in: [cinema, hotel]}     # one of
      channel: {not_in: [staff], exists: true}     # several operators on a field: all must hold
      amount: {gte: 10, lt: 5000}                  # numbers
      coupon: {exists: false}

Operators: in, not_in, ne, gt, gte, lt, lte, exists. Fields AND together.

Semantics worth knowing:
- `ne` and `not_in` hold when the field is absent ("a fact without a product is not a credit
  card"); add `exists: true` to require it. durable_rules' own $neq is false on a missing field.
- durable_rules compares a text value with a number as text ("10" > 5 is false, "abc" > 5 is
  true), and not even consistently from one call to the next (see engine.py), so callers must put
  numeric comparisons only on fields that carry numbers.
- durable_rules fires a rule once per satisfied alternative of an $or, and refuses a fact that
  fires more than 64 times. The alternatives compiled here are mutually exclusive (`in` values
  are de-duplicated and of one type; `ne` splits absent/present), so each rule fires at most once.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from services.foundation.rules.errors import Path, format_path

OPERATORS = ("in", "not_in", "ne", "gt", "gte", "lt", "lte", "exists")
NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")
# durable_rules keys a fact's session and identity on these; a condition on them would test the
# engine's bookkeeping, not the caller's data.
RESERVED_FIELDS = frozenset({"sid", "id"})
# A long `in` list is one engine node per value; the engine hangs while building a ruleset past
# ~512 nodes, so one list must stay well under that (see engine.py).
MAX_LIST_VALUES = 200

Expression = dict[str, Any]


class ConditionError(ValueError):
    """A condition that does not compile. `path` is relative to the `when` mapping."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{format_path(path)}: {reason}" if path else reason)


def compile_condition(when: Mapping[str, Any]) -> Expression:
    """`when` mapping -> durable_rules expression (for the `m` of a rule)."""
    if not isinstance(when, Mapping):
        raise ConditionError((), "must be a mapping of field: condition")
    if not when:
        raise ConditionError((), "needs at least one condition")
    clauses: list[Expression] = []
    for field, spec in when.items():
        _check_field(field)
        clauses.extend(_field_clauses(field, spec))
    return all_of(clauses)


def values_pinned(conditions: Iterable[Mapping[str, Any]], field: str) -> frozenset[str] | None:
    """Every value `field` can have for one of these `when` conditions to hold, when each pins it
    (`field: x` or `field: {in: [...]}`); None when one does not (it may hold for any value).
    Callers skip whole rule sets that cannot apply, without asking the engine."""
    found: set[str] = set()
    for when in conditions:
        spec = when.get(field)
        if isinstance(spec, str):
            found.add(spec)
        elif isinstance(spec, Mapping) and set(spec) == {"in"}:
            found.update(str(value) for value in spec["in"])
        else:
            return None
    return frozenset(found)


def all_of(clauses: list[Expression]) -> Expression:
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _check_field(field: object) -> None:
    if not isinstance(field, str) or not field:
        raise ConditionError((str(field),), "a field name must be non-empty text")
    if field.startswith("$") or "." in field:
        raise ConditionError((field,), "a field name cannot start with '$' or contain '.'")
    if field in RESERVED_FIELDS:
        raise ConditionError((field,), f"'{field}' is reserved by the rules engine; use another name")


def _field_clauses(field: str, spec: Any) -> list[Expression]:
    if isinstance(spec, Mapping):
        if not spec:
            raise ConditionError((field,), f"needs an operator ({', '.join(OPERATORS)}) or a value")
        return [_operator(field, str(op), arg) for op, arg in spec.items()]
    if isinstance(spec, list):
        raise ConditionError((field,), "a list of values needs `in:` (e.g. {in: [a, b]})")
    _check_scalar((field,), spec)
    return [{field: spec}]


def _operator(field: str, op: str, arg: Any) -> Expression:
    path = (field, op)
    match op:
        case "in":
            values = _values(path, arg)
            return any_of([{field: value} for value in values])
        case "not_in":
            values = _values(path, arg)
            return _absent_or(field, all_of([{"$neq": {field: value}} for value in values]))
        case "ne":
            _check_scalar(path, arg)
            return _absent_or(field, {"$neq": {field: arg}})
        case "gt" | "gte" | "lt" | "lte":
            if isinstance(arg, bool) or not isinstance(arg, int | float):
                raise ConditionError(path, f"{op} compares numbers; got {_kind(arg)}")
            return {f"${op}": {field: arg}}
        case "exists":
            if not isinstance(arg, bool):
                raise ConditionError(path, f"exists takes true or false; got {_kind(arg)}")
            return {"$ex" if arg else "$nex": {field: 1}}
    close = difflib.get_close_matches(op, OPERATORS, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(OPERATORS)}"
    raise ConditionError(path, f"unknown operator '{op}' ({hint})")


def any_of(clauses: list[Expression]) -> Expression:
    return clauses[0] if len(clauses) == 1 else {"$or": clauses}


def _absent_or(field: str, present_test: Expression) -> Expression:
    # The two alternatives exclude each other, so the rule still fires once (see module doc).
    return {"$or": [{"$nex": {field: 1}}, present_test]}


def _values(path: Path, arg: Any) -> list[Any]:
    if not isinstance(arg, list):
        raise ConditionError(path, f"takes a list of values, e.g. [a, b]; got {_kind(arg)}")
    if not arg:
        raise ConditionError(path, "needs at least one value")
    if len(arg) > MAX_LIST_VALUES:
        raise ConditionError(path, f"has {len(arg)} values; at most {MAX_LIST_VALUES} fit in one condition")
    for i, value in enumerate(arg):
        _check_scalar((*path, i), value)
        if isinstance(value, bool):
            raise ConditionError((*path, i), "a list cannot hold true/false; use the value itself")
    if len({isinstance(value, str) for value in arg}) > 1:
        # The engine equates "2" and 2, so a mixed list could match twice (see module doc).
        raise ConditionError(path, "mixes text and numbers; quote the numbers or unquote the text")
    unique: dict[Any, Any] = {}
    for value in arg:
        unique.setdefault(value if isinstance(value, str) else float(value), value)
    return list(unique.values())


def _check_scalar(path: Path, value: Any) -> None:
    if value is None:
        raise ConditionError(path, "needs a value")
    if not isinstance(value, str | int | float | bool):
        raise ConditionError(path, f"must be a single value; got {_kind(value)}")


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"text '{value}'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    return str(value)
