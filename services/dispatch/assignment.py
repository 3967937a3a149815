"""The cutoff's assignment: each order still unowned goes to a qualified manager on duty, so that
the total distance from the customers is the least possible within each manager's remaining
capacity. Optimal, not greedy: nearest-first gives a customer's nearest manager to whoever comes
first, and a later customer with no other manager nearby travels across the county.

It is a min-cost flow (OR-Tools `SimpleMinCostFlow`, `solve_max_flow_with_min_cost`): source ->
each order (capacity 1) -> a qualified manager (cost: metres) -> sink (capacity: the manager's
remaining capacity). The flow first places as many orders as the capacities allow, then makes
their distance least.

Arcs to every qualified manager (10 million for 10,000 orders and 1,000 managers) took 6-8 s to
solve here; arcs to each order's `nearest` qualified managers, 0.3-0.4 s with the same total or
within 0.001% of it (`../shared/notes/platform.md`). Sparse arcs can only leave orders unplaced
that the full network would place, so such orders get arcs to all their qualified managers and the
network is solved again, and if orders are still unplaced while some manager has room left (an
order could move there and free a place), once more with every arc: the number placed is always
the full network's.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ortools.graph.python import min_cost_flow

EARTH_RADIUS_M = 6_371_000.0
NEAREST = 50  # arcs per order in the first round
_CHUNK = 2_048  # orders whose distances are computed at once (chunk x managers floats)

NO_QUALIFIED_MANAGER = "no qualified manager on duty"
NO_CAPACITY = "every qualified manager on duty is at capacity"


@dataclass(frozen=True)
class Order:
    id: str
    product: str
    lat: float
    lon: float


@dataclass(frozen=True)
class Manager:
    id: str
    products: frozenset[str]
    lat: float
    lon: float
    capacity: int  # orders it can still take today


@dataclass(frozen=True)
class Assignment:
    placed: dict[str, str]  # order id -> manager id
    unplaced: dict[str, str]  # order id -> why
    metres: dict[str, int]  # order id -> distance to its manager
    rounds: int  # networks solved (1 unless orders had to be given more arcs)
    arcs: int  # order -> manager arcs of the last network

    @property
    def total_metres(self) -> int:
        return sum(self.metres.values())


def distances_m(lat: np.ndarray, lon: np.ndarray, to_lat: np.ndarray, to_lon: np.ndarray) -> np.ndarray:
    """Great-circle distances in metres, a row per point of (lat, lon), a column per (to_lat, to_lon).

    Through unit vectors, so the bulk is one matrix product: the chord between two points is
    sqrt(2 - 2 a.b). Exact to well under a metre at these distances (float64)."""
    dot = np.clip(_unit_vectors(lat, lon) @ _unit_vectors(to_lat, to_lon).T, -1.0, 1.0)
    chord = np.sqrt(2.0 - 2.0 * dot)
    result: np.ndarray = 2 * EARTH_RADIUS_M * np.arcsin(np.minimum(chord / 2, 1.0))
    return result


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], axis=1)


def assign(orders: Sequence[Order], managers: Sequence[Manager], *, nearest: int = NEAREST) -> Assignment:
    if nearest < 1:
        raise ValueError("nearest must be at least 1")
    on_duty = [m for m in managers if m.capacity > 0]
    qualified: dict[str, np.ndarray] = {}  # product -> indexes into on_duty
    for product in {o.product for o in orders}:
        qualified[product] = np.array([i for i, m in enumerate(on_duty) if product in m.products], dtype=np.int64)
    unplaced = {o.id: NO_QUALIFIED_MANAGER for o in orders if qualified[o.product].size == 0}
    placeable = [o for o in orders if o.id not in unplaced]

    widths = dict.fromkeys(range(len(placeable)), nearest)
    rounds = 0
    while True:
        rounds += 1
        order_idx, manager_idx, cost = _arcs(placeable, on_duty, qualified, widths)
        flows = _solve(len(placeable), on_duty, order_idx, manager_idx, cost)
        chosen = flows > 0
        placed_at = dict(zip(order_idx[chosen].tolist(), manager_idx[chosen].tolist(), strict=True))
        left = [i for i in range(len(placeable)) if i not in placed_at]
        narrow = [i for i in left if widths[i] < qualified[placeable[i].product].size]
        if narrow:  # give them every qualified manager and solve again
            for i in narrow:
                widths[i] = qualified[placeable[i].product].size
            continue
        used: dict[int, int] = defaultdict(int)
        for m in placed_at.values():
            used[m] += 1
        room = any(used[m] < manager.capacity for m, manager in enumerate(on_duty))
        if left and room and any(w < qualified[placeable[i].product].size for i, w in widths.items()):
            widths = {i: qualified[placeable[i].product].size for i in widths}  # every arc: exact count
            continue
        break

    metres = {placeable[i].id: c for i, c in zip(order_idx[chosen].tolist(), cost[chosen].tolist(), strict=True)}
    return Assignment(
        placed={placeable[i].id: on_duty[m].id for i, m in placed_at.items()},
        unplaced=unplaced | {placeable[i].id: NO_CAPACITY for i in left},
        metres=metres,
        rounds=rounds,
        arcs=int(order_idx.size),
    )


def _arcs(
    orders: Sequence[Order], managers: Sequence[Manager], qualified: dict[str, np.ndarray], widths: dict[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order index, manager index, metres) of each arc: each order's `widths[i]` nearest
    qualified managers."""
    manager_lat = np.array([m.lat for m in managers])
    manager_lon = np.array([m.lon for m in managers])
    by_product: dict[str, list[int]] = defaultdict(list)
    for i, order in enumerate(orders):
        by_product[order.product].append(i)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for product, indexes in by_product.items():
        candidates = qualified[product]
        for start in range(0, len(indexes), _CHUNK):
            chunk = np.array(indexes[start : start + _CHUNK], dtype=np.int64)
            lat = np.array([orders[i].lat for i in chunk])
            lon = np.array([orders[i].lon for i in chunk])
            d = distances_m(lat, lon, manager_lat[candidates], manager_lon[candidates])
            for width in sorted({widths[int(i)] for i in chunk}):
                rows = np.array([r for r, i in enumerate(chunk) if widths[int(i)] == width], dtype=np.int64)
                k = min(width, candidates.size)
                if k < candidates.size:
                    cols = np.argpartition(d[rows], k - 1, axis=1)[:, :k]
                else:
                    cols = np.broadcast_to(np.arange(candidates.size), (rows.size, k))
                parts.append(
                    (
                        np.repeat(chunk[rows], k),
                        candidates[cols].ravel(),
                        np.rint(np.take_along_axis(d[rows], cols, axis=1)).astype(np.int64).ravel(),
                    )
                )
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    return tuple(np.concatenate([p[n] for p in parts]) for n in range(3))  # type: ignore[return-value]


def _solve(
    n_orders: int, managers: Sequence[Manager], order_idx: np.ndarray, manager_idx: np.ndarray, cost: np.ndarray
) -> np.ndarray:
    """The flow on each order -> manager arc (0 or 1)."""
    if n_orders == 0:
        return np.zeros(0, dtype=np.int64)
    # Nodes: 0 source, 1 sink, orders from 2, managers after them.
    first_manager = 2 + n_orders
    flow = min_cost_flow.SimpleMinCostFlow()
    orders = np.arange(n_orders, dtype=np.int64)
    used = np.unique(manager_idx)
    tails = np.concatenate([np.zeros(n_orders, dtype=np.int64), 2 + order_idx, first_manager + used])
    heads = np.concatenate([2 + orders, first_manager + manager_idx, np.ones(used.size, dtype=np.int64)])
    capacities = np.concatenate(
        [np.ones(n_orders + order_idx.size, dtype=np.int64), np.array([managers[m].capacity for m in used])]
    )
    costs = np.concatenate([np.zeros(n_orders, dtype=np.int64), cost, np.zeros(used.size, dtype=np.int64)])
    arcs = flow.add_arcs_with_capacity_and_unit_cost(tails, heads, capacities, costs)
    flow.set_node_supply(0, n_orders)
    flow.set_node_supply(1, -n_orders)
    # Every order placed is the usual case, and `solve` (a balanced flow) finds it about 20%
    # sooner than `solve_max_flow_with_min_cost`; when some cannot be placed it says so at once
    # (a feasibility check), and the max-flow variant places as many as the arcs allow.
    status = flow.solve()
    if status != flow.OPTIMAL:
        status = flow.solve_max_flow_with_min_cost()
    if status != flow.OPTIMAL:
        raise RuntimeError(f"min-cost flow ended with status {status}")
    result: np.ndarray = flow.flows(arcs[n_orders : n_orders + order_idx.size])
    return result
