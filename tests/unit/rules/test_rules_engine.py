"""The durable_rules adapter: every matching rule, chunking, sids, reloads, threads."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from services.foundation.rules.conditions import compile_condition
from services.foundation.rules.engine import (
    MAX_FIRINGS_PER_RULESET,
    Matcher,
    RulesetRemovedError,
    count_nodes,
    firing_bound,
)


@pytest.fixture
def matcher() -> Iterator[Matcher]:
    engine = Matcher()
    yield engine
    engine.close()


def spend_rules(count: int) -> list[tuple[str, dict]]:
    # Distinct thresholds so that the engine cannot share one node between the rules.
    return [(f"r{i}", compile_condition({"event": "spend", "amount": {"gte": i}})) for i in range(count)]


def test_returns_every_matching_rule_in_rule_order(matcher: Matcher) -> None:
    rules = [
        ("b-card", compile_condition({"event": "referral.converted", "product": "credit_card"})),
        ("a-any", compile_condition({"event": "referral.converted"})),
        ("c-loan", compile_condition({"event": "referral.converted", "product": "loan"})),
    ]
    compiled = matcher.add("referral@v1", rules)
    assert matcher.match(compiled, {"event": "referral.converted", "product": "credit_card"}) == ["b-card", "a-any"]
    assert matcher.match(compiled, {"event": "referral.converted", "product": "loan"}) == ["a-any", "c-loan"]


def test_a_fact_matching_nothing_gives_an_empty_list_even_as_the_first_evaluation(matcher: Matcher) -> None:
    # Measured: without the adapter's warm-up, delete_state after a first no-match segfaults.
    compiled = matcher.add("fresh", [("r", compile_condition({"event": "x"}))])
    assert matcher.match(compiled, {"event": "y"}) == []
    assert matcher.match(compiled, {}) == []
    assert matcher.match(compiled, {"event": "x"}) == ["r"]


def test_more_than_64_rules_matching_one_fact_are_all_returned(matcher: Matcher) -> None:
    compiled = matcher.add("big", spend_rules(200))
    assert compiled.engine_rulesets >= 200 // MAX_FIRINGS_PER_RULESET
    assert matcher.match(compiled, {"event": "spend", "amount": 1000.0}) == [f"r{i}" for i in range(200)]
    assert matcher.match(compiled, {"event": "spend", "amount": 70}) == [f"r{i}" for i in range(71)]


def test_long_in_lists_are_split_by_size_and_do_not_hang_the_engine(matcher: Matcher) -> None:
    # 12 rules of 100 values each: ~1,200 comparisons, far past what one engine ruleset can build.
    rules = [(f"list{i}", compile_condition({"code": {"in": [f"c{i}-{j}" for j in range(100)]}})) for i in range(12)]
    compiled = matcher.add("lists", rules)
    assert compiled.engine_rulesets >= 5
    assert matcher.match(compiled, {"code": "c7-99"}) == ["list7"]


def test_sequential_evaluations_do_not_exhaust_the_sid_limit(matcher: Matcher) -> None:
    compiled = matcher.add("many", [("hit", compile_condition({"event": "x"}))])
    results = [matcher.match(compiled, {"event": "x" if i % 2 else "y"}) for i in range(2000)]
    assert results.count(["hit"]) == 1000
    assert results.count([]) == 1000


def test_add_remove_add_again_under_the_same_name(matcher: Matcher) -> None:
    first = matcher.add("campaign@abc", [("r", compile_condition({"event": "x"}))])
    matcher.remove(first)
    matcher.remove(first)  # idempotent
    with pytest.raises(RulesetRemovedError):
        matcher.match(first, {"event": "x"})
    second = matcher.add("campaign@abc", [("r", compile_condition({"event": "y"}))])
    assert matcher.match(second, {"event": "y"}) == ["r"]
    assert matcher.match(second, {"event": "x"}) == []


def test_negative_conditions_do_not_loop_on_the_engine_state(matcher: Matcher) -> None:
    # A bare $nex also matches the engine's own state object; the adapter's guard prevents a loop.
    compiled = matcher.add("negative", [("no-coupon", {"$nex": {"coupon": 1}})])
    assert matcher.match(compiled, {"event": "x"}) == ["no-coupon"]
    assert matcher.match(compiled, {"coupon": "c"}) == []


def test_reserved_fields_in_a_fact_cannot_disturb_the_engine(matcher: Matcher) -> None:
    compiled = matcher.add("reserved", [("r", compile_condition({"event": "x"}))])
    assert matcher.match(compiled, {"event": "x", "sid": "1", "id": "sid-1"}) == ["r"]
    assert matcher.match(compiled, {"event": "x", "sid": "1", "id": "sid-1"}) == ["r"]


def test_refuses_what_the_engine_cannot_hold(matcher: Matcher) -> None:
    with pytest.raises(ValueError, match="duplicate rule ids"):
        matcher.add("dup", [("a", {"event": "x"}), ("a", {"event": "y"})])
    with pytest.raises(ValueError, match="one key"):
        matcher.add("shape", [("a", {"event": "x", "product": "y"})])
    overlapping = {"$or": [{"$gte": {"amount": i}} for i in range(70)]}  # all 70 can hold at once
    assert firing_bound(overlapping) == 70
    with pytest.raises(ValueError, match="can fire 70 times"):
        matcher.add("fires", [("a", overlapping)])


def test_bounds_of_compiled_conditions() -> None:
    condition = compile_condition(
        {"event": {"in": ["a", "b"]}, "product": {"not_in": ["x", "y"]}, "channel": {"ne": "z"}}
    )
    assert firing_bound(condition) == 1  # every alternative excludes the others
    assert count_nodes(condition) == 2 + 3 + 2


def test_concurrent_matching_from_8_threads(matcher: Matcher) -> None:
    compiled = matcher.add(
        "threads",
        [
            ("even", compile_condition({"parity": "even"})),
            ("odd", compile_condition({"parity": "odd"})),
            ("big", compile_condition({"amount": {"gte": 500}})),
        ],
    )
    failures: list[str] = []

    def work(worker: int) -> None:
        for i in range(300):
            n = worker * 1000 + i
            expected = ["even" if n % 2 == 0 else "odd"] + (["big"] if i >= 150 else [])
            got = matcher.match(compiled, {"parity": "even" if n % 2 == 0 else "odd", "amount": i * 10 / 3 + 1})
            if got != expected:
                failures.append(f"{n}: {got} != {expected}")

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
