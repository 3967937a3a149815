"""The condition language, checked through the real engine."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.foundation.rules.conditions import ConditionError, compile_condition
from services.foundation.rules.engine import Matcher


@pytest.fixture(scope="module")
def matcher() -> Iterator[Matcher]:
    shared = Matcher()
    yield shared
    shared.close()


def matches(matcher: Matcher, when: dict[str, Any], fact: dict[str, Any]) -> bool:
    compiled = matcher.add("cond", [("rule", compile_condition(when))])
    try:
        return matcher.match(compiled, fact) == ["rule"]
    finally:
        matcher.remove(compiled)


CASES = [
    # equality
    ({"event": "merchant.spend"}, {"event": "merchant.spend"}, True),
    ({"event": "merchant.spend"}, {"event": "merchant.refund"}, False),
    ({"event": "merchant.spend"}, {}, False),
    ({"product": "credit_card"}, {"product": "Credit_Card"}, False),
    ({"amount": 10}, {"amount": 10.0}, True),
    # in / not_in
    ({"product": {"in": ["loan", "credit_card"]}}, {"product": "credit_card"}, True),
    ({"product": {"in": ["loan", "credit_card"]}}, {"product": "mobile_banking"}, False),
    ({"product": {"in": ["loan", "credit_card"]}}, {}, False),
    ({"product": {"not_in": ["loan", "credit_card"]}}, {"product": "mobile_banking"}, True),
    ({"product": {"not_in": ["loan", "credit_card"]}}, {"product": "loan"}, False),
    ({"product": {"not_in": ["loan"]}}, {}, True),  # absent is not in the list
    # ne
    ({"channel": {"ne": "internal"}}, {"channel": "wechat"}, True),
    ({"channel": {"ne": "internal"}}, {"channel": "internal"}, False),
    ({"channel": {"ne": "internal"}}, {}, True),
    ({"channel": {"ne": "internal", "exists": True}}, {}, False),
    # numbers
    ({"amount": {"gt": 10}}, {"amount": 10.01}, True),
    ({"amount": {"gt": 10}}, {"amount": 10}, False),
    ({"amount": {"gte": 10}}, {"amount": 10}, True),
    ({"amount": {"gte": 10}}, {"amount": 9.99}, False),
    ({"amount": {"lt": 10}}, {"amount": 9.99}, True),
    ({"amount": {"lt": 10}}, {"amount": 10}, False),
    ({"amount": {"lte": 10}}, {"amount": 10}, True),
    ({"amount": {"lte": 10}}, {"amount": 10.5}, False),
    ({"amount": {"gte": 10}}, {}, False),
    ({"amount": {"gte": 10, "lt": 100}}, {"amount": 50}, True),
    ({"amount": {"gte": 10, "lt": 100}}, {"amount": 100}, False),
    # exists
    ({"coupon": {"exists": True}}, {"coupon": "c-1"}, True),
    ({"coupon": {"exists": True}}, {}, False),
    ({"coupon": {"exists": False}}, {}, True),
    ({"coupon": {"exists": False}}, {"coupon": "c-1"}, False),
    # several fields AND together
    ({"event": "merchant.spend", "merchant_category": {"in": ["cinema"]}, "amount": {"gte": 10}},
     {"event": "merchant.spend", "merchant_category": "cinema", "amount": 10}, True),
    ({"event": "merchant.spend", "merchant_category": {"in": ["cinema"]}, "amount": {"gte": 10}},
     {"event": "merchant.spend", "merchant_category": "hotel", "amount": 10}, False),
]  # fmt: skip


@pytest.mark.parametrize(("when", "fact", "expected"), CASES)
def test_operator_through_the_engine(matcher: Matcher, when: dict, fact: dict, expected: bool) -> None:
    assert matches(matcher, when, fact) is expected


def test_duplicate_in_values_still_fire_once(matcher: Matcher) -> None:
    compiled = compile_condition({"product": {"in": ["loan", "loan", "card"]}})
    assert compiled == {"$or": [{"product": "loan"}, {"product": "card"}]}
    assert matches(matcher, {"product": {"in": ["loan", "loan"]}}, {"product": "loan"})


@pytest.mark.parametrize(
    ("when", "path", "reason"),
    [
        ({}, (), "needs at least one condition"),
        ({"product": ["a", "b"]}, ("product",), "a list of values needs `in:`"),
        ({"product": {"inn": ["a"]}}, ("product", "inn"), "unknown operator 'inn' (did you mean 'in'?)"),
        ({"product": {"in": []}}, ("product", "in"), "needs at least one value"),
        ({"product": {"in": "a"}}, ("product", "in"), "takes a list of values"),
        ({"product": {"in": ["a", 1]}}, ("product", "in"), "mixes text and numbers"),
        ({"product": {"in": ["a", {"x": 1}]}}, ("product", "in", 1), "must be a single value"),
        ({"amount": {"gt": "10"}}, ("amount", "gt"), "gt compares numbers; got text '10'"),
        ({"amount": {"gte": True}}, ("amount", "gte"), "gte compares numbers; got true"),
        ({"coupon": {"exists": "yes"}}, ("coupon", "exists"), "exists takes true or false"),
        ({"coupon": {}}, ("coupon",), "needs an operator"),
        ({"coupon": None}, ("coupon",), "needs a value"),
        ({"sid": "x"}, ("sid",), "reserved by the rules engine"),
        ({"$or": "x"}, ("$or",), "cannot start with '$'"),
    ],
)
def test_bad_conditions_name_the_sub_path(when: dict, path: tuple, reason: str) -> None:
    with pytest.raises(ConditionError) as caught:
        compile_condition(when)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)


def test_values_pinned_lists_what_every_condition_pins_or_none() -> None:
    from services.foundation.rules.conditions import values_pinned

    pinned = [{"category": "cinema", "tier": "gold"}, {"category": {"in": ["hotel", "cinema"]}}]
    assert values_pinned(pinned, "category") == frozenset({"cinema", "hotel"})
    assert values_pinned([], "category") == frozenset()  # no condition: nothing can apply
    assert values_pinned([*pinned, {"tier": "gold"}], "category") is None  # one holds for any category
    assert values_pinned([{"category": {"ne": "cinema"}}], "category") is None  # not a list of values
