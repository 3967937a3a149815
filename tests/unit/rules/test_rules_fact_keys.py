"""Remembered engine answers: facts the rules cannot tell apart share a key, and the answer from
memory is always the engine's own answer for that fact.

The random facts keep each field to one type (numbers where rules compare numbers, text where
they compare text): measured, durable_rules answers a text value against a number differently
from one call to the next for the very same fact, so there is no single answer to remember.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from services.foundation.rules.conditions import compile_condition
from services.foundation.rules.engine import Matcher
from services.foundation.rules.fact_keys import fact_key_function

CONDITIONS = [
    {"category": "cinema", "amount": {"gte": 200}},
    {"category": {"in": ["cinema", "ktv"]}, "amount": {"lt": 50.5}},
    {"tier": {"ne": "basic"}, "period": "off_peak"},
    {"channel": {"not_in": ["staff", "test"]}},
    {"coupon": {"exists": False}, "amount": {"gt": 99.99, "lte": 500}},
    {"code": "7"},
    {"code": {"in": ["8", "9"]}, "amount": {"lt": 100}},
    {"amount": 200},
]

VALUES = {
    "category": ["cinema", "ktv", "hotel", ""],
    "amount": [0, 49, 50.5, 50.49, 99.99, 100, 199.99, 200, 200.0, 250, 500, 500.01, 10**6, -1.5],
    "tier": ["basic", "gold", None],
    "period": ["off_peak", "peak"],
    "channel": ["staff", "app", ""],
    "coupon": ["c-1", 0],
    "code": ["7", "8", "9", "x", ""],
    "unrelated": ["a", 1],
}


@pytest.fixture
def engines() -> Iterator[tuple[Matcher, Matcher]]:
    remembering, asking = Matcher(), Matcher(memo_size=0)
    yield remembering, asking
    remembering.close()
    asking.close()


def random_fact(rng: random.Random) -> dict[str, object]:
    fact: dict[str, object] = {}
    for field, choices in VALUES.items():
        value = rng.choice([*choices, "<absent>"])
        if value != "<absent>" and value is not None:
            fact[field] = value
    return fact


def test_remembered_answers_are_the_engines_answers(engines: tuple[Matcher, Matcher]) -> None:
    remembering, asking = engines
    rules = [(f"r{i}", compile_condition(when)) for i, when in enumerate(CONDITIONS)]
    with_memo, without = remembering.add("memo", rules), asking.add("plain", rules)
    rng = random.Random(20261123)
    for _ in range(3000):
        fact = random_fact(rng)
        assert remembering.match(with_memo, fact) == asking.match(without, fact), fact
    assert with_memo._memo, "the answers were remembered"


def test_amounts_on_the_same_side_of_every_threshold_share_a_key() -> None:
    key = fact_key_function([compile_condition({"category": "cinema", "amount": {"gte": 200}})])
    assert key({"category": "cinema", "amount": 250.0}) == key({"category": "cinema", "amount": 310})
    assert key({"category": "cinema", "amount": 199.99}) != key({"category": "cinema", "amount": 200})
    assert key({"category": "cinema", "amount": 200}) != key({"category": "cinema", "amount": 200.01})
    # Fields no rule reads are not in the key.
    assert key({"category": "cinema", "amount": 1, "user": "a"}) == key({"category": "cinema", "amount": 2})


def test_values_the_engine_might_coerce_are_keyed_by_type_and_value() -> None:
    key = fact_key_function([compile_condition({"code": {"in": ["7", "8"]}})])
    assert key({"code": "7"}) != key({"code": 7})
    assert key({"code": True}) != key({"code": 1})


def test_unkeyable_facts_go_to_the_engine() -> None:
    key = fact_key_function([compile_condition({"amount": {"gte": 1}, "tags": {"exists": True}})])
    assert key({"amount": float("nan")}) is None
    assert key({"amount": 2**60}) is None
    assert key({"amount": 1, "tags": ["a"]}) is None


def test_the_memory_is_bounded(engines: tuple[Matcher, Matcher]) -> None:
    small = Matcher(memo_size=8)
    try:
        compiled = small.add("bounded", [("r", compile_condition({"user": {"ne": "x"}}))])
        for i in range(100):
            assert small.match(compiled, {"user": f"u{i}"}) == ["r"]
        assert len(compiled._memo) == 8
    finally:
        small.close()
