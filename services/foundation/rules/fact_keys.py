"""Which facts a ruleset cannot tell apart, so the engine's answer for one serves them all.

A durable_rules evaluation costs tens of microseconds in its Python host (JSON both ways, an action
callback per firing, a session to delete), while the facts a service asks about repeat: a quote's
tier, period, category and merchant take a handful of values. `fact_key_function` reads a ruleset's
expressions once and returns a function mapping a fact to a key such that two facts with the same
key get the same answer from the engine, by construction:

- only the fields the expressions mention are in the key (the engine reads nothing else);
- a field that is only ever compared with numbers (gt/gte/lt/lte, equality or inequality with a
  number, exists) and holds a number is keyed by where it falls among those numbers, not by its
  value: amounts 250.00 and 310.00 are one key against `amount >= 200`;
- any other value is keyed by its type and value, so the engine's own coercions ("2" against 2)
  are never second-guessed: they are asked of the engine.

A fact that cannot be keyed (an unhashable value, NaN) gets None and goes to the engine.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from typing import Any

FactKey = tuple[Any, ...]
FactKeyFunction = Callable[[Mapping[str, Any]], FactKey | None]

_LOGICAL = ("$and", "$or")
_NUMERIC_TESTS = ("$gt", "$gte", "$lt", "$lte", "$neq")
_PRESENCE_TESTS = ("$ex", "$nex")
_MISSING = object()
_EXACT_INT = 2**53  # beyond this the engine's doubles no longer hold every integer


def fact_key_function(expressions: Sequence[Mapping[str, Any]]) -> FactKeyFunction:
    """The key function for facts matched against all of `expressions` (durable_rules form)."""
    constants: dict[str, list[Any]] = {}
    presence_only: set[str] = set()
    for expr in expressions:
        _collect(expr, constants, presence_only)
    fields: list[tuple[str, tuple[float, ...] | None]] = []
    for field in sorted(constants.keys() | presence_only):
        values = constants.get(field, [])
        numeric = all(_is_number(value) for value in values)
        fields.append((field, tuple(sorted({float(v) for v in values})) if numeric else None))
    spec = tuple(fields)

    def key(fact: Mapping[str, Any]) -> FactKey | None:
        parts: list[Any] = []
        for field, thresholds in spec:
            value = fact.get(field, _MISSING)
            if value is _MISSING:
                parts.append(_MISSING)
                continue
            kind = type(value)
            if thresholds is not None and (kind is int or kind is float):
                if value != value or (kind is int and not -_EXACT_INT <= value <= _EXACT_INT):
                    return None  # NaN orders against nothing, huge ints round in the engine: ask it
                at = bisect_left(thresholds, value)
                parts.append((at, at < len(thresholds) and thresholds[at] == value))
                continue
            if not (kind is str or kind is int or kind is float or kind is bool):
                return None
            parts.append((kind, value))
        return tuple(parts)

    return key


def _collect(expr: Mapping[str, Any], constants: dict[str, list[Any]], presence_only: set[str]) -> None:
    for op, operand in expr.items():
        if op in _LOGICAL:
            for child in operand:
                _collect(child, constants, presence_only)
        elif op in _PRESENCE_TESTS:
            presence_only.update(operand)
        elif op in _NUMERIC_TESTS:
            for field, value in operand.items():
                constants.setdefault(field, []).append(value)
        elif op.startswith("$"):
            # An operator this module does not know: key every field it names by value.
            for field in operand:
                constants.setdefault(field, []).append(_OPAQUE)
        else:
            constants.setdefault(op, []).append(operand)


_OPAQUE = object()


def _is_number(value: Any) -> bool:
    return type(value) is int or type(value) is float
