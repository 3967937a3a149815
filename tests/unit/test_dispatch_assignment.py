"""The cutoff's assignment (services/dispatch/assignment.py) against an independent optimum: OR-Tools'
linear sum assignment on the dense matrix of orders by manager places (one column per unit of
capacity), on small random cases; and the rules a solution must keep whatever the arcs."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from ortools.graph.python import linear_sum_assignment

from services.dispatch.assignment import (
    NO_CAPACITY,
    NO_QUALIFIED_MANAGER,
    Manager,
    Order,
    assign,
    distances_m,
)

# A county around (30.3, 120.2): a tenth of a degree is about 10 km.
LAT, LON = 30.3, 120.2


def case(seed: int, n_orders: int, n_managers: int, capacity: range) -> tuple[list[Order], list[Manager]]:
    rng = random.Random(seed)
    orders = [
        Order(f"o{i}", "loan", LAT + rng.uniform(-0.3, 0.3), LON + rng.uniform(-0.3, 0.3)) for i in range(n_orders)
    ]
    managers = [
        Manager(
            f"m{j}",
            frozenset({"loan"}),
            LAT + rng.uniform(-0.3, 0.3),
            LON + rng.uniform(-0.3, 0.3),
            rng.choice(capacity),
        )
        for j in range(n_managers)
    ]
    return orders, managers


def dense_optimum(orders: list[Order], managers: list[Manager]) -> int:
    """The least total metres placing every order, by a different algorithm on every pair."""
    places = [j for j, m in enumerate(managers) for _ in range(m.capacity)]
    d = distances_m(
        np.array([o.lat for o in orders]),
        np.array([o.lon for o in orders]),
        np.array([m.lat for m in managers]),
        np.array([m.lon for m in managers]),
    )
    # It matches every row: rows of nobody, at no cost, take the places left over.
    cost = np.zeros((len(places), len(places)), dtype=np.int64)
    cost[: len(orders)] = np.rint(d[:, places]).astype(np.int64)
    solver = linear_sum_assignment.SimpleLinearSumAssignment()
    left = np.repeat(np.arange(len(places)), len(places))
    right = np.tile(np.arange(len(places)), len(places))
    solver.add_arcs_with_cost(left, right, cost.ravel())
    assert solver.solve() == solver.OPTIMAL
    return int(solver.optimal_cost())


@pytest.mark.parametrize("seed", range(6))
def test_the_total_distance_is_the_dense_optimum(seed: int) -> None:
    orders, managers = case(seed, n_orders=60, n_managers=12, capacity=range(5, 9))  # 60 of 60-96 places
    result = assign(orders, managers)
    assert not result.unplaced
    assert result.total_metres == dense_optimum(orders, managers)


@pytest.mark.parametrize("seed", range(4))
def test_an_order_short_of_arcs_gets_them_all_and_the_count_is_the_full_networks(seed: int) -> None:
    # Capacity exactly the orders: with one arc each, most orders would find their nearest full.
    orders, managers = case(seed, n_orders=40, n_managers=8, capacity=range(5, 6))
    result = assign(orders, managers, nearest=1)
    assert not result.unplaced and result.rounds > 1
    assert result.total_metres >= dense_optimum(orders, managers)
    assert assign(orders, managers, nearest=8).total_metres == dense_optimum(orders, managers)


def test_capacity_qualification_and_duty_are_kept() -> None:
    rng = random.Random(7)
    products = ["loan", "card", "pos"]
    orders = [
        Order(f"o{i}", rng.choice(products), LAT + rng.uniform(-0.2, 0.2), LON + rng.uniform(-0.2, 0.2))
        for i in range(300)
    ]
    managers = [
        Manager(
            f"m{j}",
            frozenset(rng.sample(products, rng.randint(1, 2))),
            LAT + rng.uniform(-0.2, 0.2),
            LON + rng.uniform(-0.2, 0.2),
            rng.randint(0, 12),  # 0: off duty or already full
        )
        for j in range(40)
    ]
    result = assign(orders, managers, nearest=5)
    by_id = {m.id: m for m in managers}
    load = Counter(result.placed.values())
    assert all(load[m] <= by_id[m].capacity for m in load)
    assert all(o.product in by_id[result.placed[o.id]].products for o in orders if o.id in result.placed)
    assert set(result.placed) | set(result.unplaced) == {o.id for o in orders}
    assert not set(result.placed) & set(result.unplaced)


def test_orders_that_cannot_be_placed_say_why() -> None:
    managers = [Manager("near", frozenset({"loan"}), LAT, LON, 2), Manager("off", frozenset({"pos"}), LAT, LON, 0)]
    orders = [Order(f"l{i}", "loan", LAT + 0.01 * i, LON) for i in range(3)] + [Order("p", "pos", LAT, LON)]
    result = assign(orders, managers)
    assert result.placed == {"l0": "near", "l1": "near"}  # the two nearest of three
    assert result.unplaced == {"l2": NO_CAPACITY, "p": NO_QUALIFIED_MANAGER}


def test_nearest_first_is_beaten_where_it_takes_someone_elses_only_manager() -> None:
    # A is between the two managers; B has only the east one nearby. Greedy gives A east (1 km)
    # and sends B 21 km west; the optimum sends A west (2 km) and B east (1 km).
    west, east = (
        Manager("west", frozenset({"loan"}), LAT, LON, 1),
        Manager("east", frozenset({"loan"}), LAT, LON + 0.03, 1),
    )
    a, b = Order("a", "loan", LAT, LON + 0.02), Order("b", "loan", LAT, LON + 0.04)
    result = assign([a, b], [west, east])
    assert result.placed == {"a": "west", "b": "east"}
    assert result.total_metres == pytest.approx(
        distances_m(np.array([LAT]), np.array([LON]), np.array([LAT]), np.array([LON + 0.03]))[0, 0], rel=1e-3
    )


def test_distances_are_great_circle_metres() -> None:
    beijing_shanghai = distances_m(np.array([39.9042]), np.array([116.4074]), np.array([31.2304]), np.array([121.4737]))
    assert 1_060_000 < beijing_shanghai[0, 0] < 1_075_000


def test_only_the_orders_left_over_get_more_arcs() -> None:
    managers = [Manager("a", frozenset({"loan"}), LAT, LON, 1), Manager("b", frozenset({"loan"}), LAT + 0.5, LON, 1)]
    orders = [Order("x", "loan", LAT + 0.01, LON), Order("y", "loan", LAT + 0.02, LON)]  # both nearest to a
    result = assign(orders, managers, nearest=1)
    assert result.placed == {"x": "a", "y": "b"}
    assert (result.rounds, result.arcs) == (2, 3)  # y's two arcs and x's one; every arc would be 4


def test_short_distances_are_exact_to_the_metre() -> None:
    # 0.001 degree of latitude is 111.19 m on a sphere of the mean Earth radius.
    d = distances_m(np.array([LAT]), np.array([LON]), np.array([LAT + 0.001]), np.array([LON]))
    assert d[0, 0] == pytest.approx(111.19, abs=0.01)
