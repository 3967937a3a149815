"""The cutoff's assignment solver (services/dispatch/assignment.py), each figure next to its
baseline in the same run: 10,000 orders to 1,000 managers (capacities 8-14, 11,000 places), the
time to assign them (distances and arcs included), their total distance against greedy
nearest-first and against a network three times wider; and on a 2,000-order case (200
managers) the total against the dense optimum (every order -> manager arc)."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence

import numpy as np

from services.dispatch.assignment import NEAREST, Assignment, Manager, Order, assign, distances_m

LAT, LON = 30.25, 120.15  # a city and its county: 0.6 degrees across, about 60 km
PRODUCTS = ["loan", "credit_card", "pos_terminal", "mobile_banking"]

WIDE = 150  # arcs per order of the wider network the sparse one is compared with

Row = tuple[str, str, str, str, str, bool | None]


def case(n_orders: int, n_managers: int, seed: int = 11) -> tuple[list[Order], list[Manager]]:
    """Customers clustered around a few towns (as bookings are), managers spread over branches;
    each manager qualified for two or three of the four products."""
    rng = random.Random(seed)
    towns = [(LAT + rng.uniform(-0.3, 0.3), LON + rng.uniform(-0.3, 0.3)) for _ in range(12)]
    orders = []
    for i in range(n_orders):
        lat, lon = rng.choice(towns)
        orders.append(Order(f"o{i}", rng.choice(PRODUCTS), lat + rng.gauss(0, 0.04), lon + rng.gauss(0, 0.04)))
    managers = [
        Manager(
            f"m{j}",
            frozenset(rng.sample(PRODUCTS, rng.randint(2, 3))),
            LAT + rng.uniform(-0.3, 0.3),
            LON + rng.uniform(-0.3, 0.3),
            rng.randint(8, 14),
        )
        for j in range(n_managers)
    ]
    return orders, managers


def greedy(orders: Sequence[Order], managers: Sequence[Manager]) -> tuple[int, int]:
    """Nearest-first, orders in booking order: (orders placed, total metres)."""
    left = np.array([m.capacity for m in managers])
    d = distances_m(
        np.array([o.lat for o in orders]),
        np.array([o.lon for o in orders]),
        np.array([m.lat for m in managers]),
        np.array([m.lon for m in managers]),
    )
    qualified = {p: np.array([p in m.products for m in managers]) for p in PRODUCTS}
    placed = total = 0
    for i, order in enumerate(orders):
        row = np.where(qualified[order.product] & (left > 0), d[i], np.inf)
        j = int(np.argmin(row))
        if np.isfinite(row[j]):
            left[j] -= 1
            placed += 1
            total += round(float(row[j]))
    return placed, total


def timed(orders: Sequence[Order], managers: Sequence[Manager], **kwargs: int) -> tuple[Assignment, float]:
    began = time.perf_counter()
    result = assign(orders, managers, **kwargs)
    return result, time.perf_counter() - began


def measure(runs: int = 3) -> list[Row]:
    orders, managers = case(10_000, 1_000)
    solves = [timed(orders, managers) for _ in range(runs)]
    result, _ = solves[0]
    median = sorted(seconds for _, seconds in solves)[len(solves) // 2]
    greedy_placed, greedy_total = greedy(orders, managers)
    wide, wide_seconds = timed(orders, managers, nearest=WIDE)
    small_orders, small_managers = case(2_000, 200, seed=12)
    sparse, _ = timed(small_orders, small_managers)
    dense, dense_seconds = timed(small_orders, small_managers, nearest=len(small_managers))
    return [
        (
            f"auto-dispatch solve, {len(orders):,} orders to {len(managers):,} managers (capacities 8-14)",
            f"median {median:.2f} s (runs: {', '.join(f'{s:.2f}' for _, s in solves)}), {len(result.placed):,} placed,"
            f" {result.arcs:,} arcs, {result.rounds} round(s)",
            "target 1 s",
            f"{median:.2f}",
            "<= 1 s",
            median <= 1.0,
        ),
        (
            "auto-dispatch total distance, the same case",
            f"{result.total_metres / 1000:,.0f} km, {len(result.placed):,} placed",
            f"greedy nearest-first {greedy_total / 1000:,.0f} km, {greedy_placed:,} placed",
            f"{result.total_metres / greedy_total:.3f}",
            "none: optimal, so at most greedy's",
            None,
        ),
        (
            f"auto-dispatch against a network {WIDE // NEAREST} times wider, the same case",
            f"{result.total_metres / 1000:,.1f} km ({NEAREST} nearest managers per order)",
            f"{WIDE} nearest: {wide.total_metres / 1000:,.1f} km, {wide.arcs:,} arcs, {wide_seconds:.2f} s",
            f"{result.total_metres / wide.total_metres:.5f}",
            "none: the price of the sparse network",
            None,
        ),
        (
            f"auto-dispatch against the dense optimum, {len(small_orders):,} orders to {len(small_managers)} managers",
            f"{sparse.total_metres / 1000:,.1f} km, {len(sparse.placed):,} placed, {sparse.arcs:,} arcs",
            f"every arc: {dense.total_metres / 1000:,.1f} km, {len(dense.placed):,} placed, {dense_seconds:.2f} s",
            f"{sparse.total_metres / dense.total_metres:.5f}",
            "none: the gap is reported",
            None,
        ),
    ]
