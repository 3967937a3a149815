"""`alliance dispatch ...`: the dispatch service for ops, over gRPC to a running dispatch service:
a manager's pool, an order and its audit trail, the cutoff run now or dry-run, and the branches and
managers it knows. Times are shown in the bank's zone (--tz, default Asia/Shanghai), with their
UTC offset.

examples:
  alliance dispatch pool m-1001 --size 20
  alliance dispatch order 01JF3Z7W5K2Q8N4M6P0R9T1V3X
  alliance dispatch run-cutoff --dry-run
  alliance dispatch run-cutoff --product loan --at 2026-12-02T16:00
  alliance dispatch managers --branch SH-001
  alliance dispatch branches
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from alliance.v1 import dispatch_pb2 as api
from alliance.v1 import dispatch_pb2_grpc
from services.cli.referral_commands import _HELP, _plural, _positive, _table
from services.registry import SERVICES

T = TypeVar("T")
TIMEOUT = 10.0
CUTOFF_TIMEOUT = 300.0  # a cutoff over thousands of orders solves and writes in seconds; leave room
MAX_PAGE = 500  # the service's largest page
DEFAULT_TZ = "Asia/Shanghai"
STATE_NAMES = {
    api.ORDER_STATE_UNSPECIFIED: "?",
    api.ORDER_STATE_RESERVED: "reserved",
    api.ORDER_STATE_OPEN: "open",
    api.ORDER_STATE_OWNED: "owned",
    api.ORDER_STATE_CONTACTED: "contacted",
    api.ORDER_STATE_SUCCEEDED: "succeeded",
    api.ORDER_STATE_FAILED: "failed",
}
SOURCE_NAMES = {
    api.LOCATION_SOURCE_UNSPECIFIED: "?",
    api.LOCATION_SOURCE_COORDINATES: "coordinates given",
    api.LOCATION_SOURCE_DISTRICT: "the centre of its district",
    api.LOCATION_SOURCE_CITY: "the centre of its city",
    api.LOCATION_SOURCE_FALLBACK_BRANCH: "the fallback branch",
}
OUTCOMES = {
    "succeeded": "succeeded: assigned now",
    "done": "already done: the run happened before; these are its results",
    "held": "held: another replica is running it now; ask again in a moment for its results",
    "dry_run": "dry run",
    "failed": "failed: out of attempts (see the service's log)",
    "retry": "failed this attempt: it is retried once its lease lapses",
    "lost": "lost: another replica took the run over",
    "stopped": "stopped: the service is shutting down; another replica takes the run over",
}
NO_RESULTS = {"held", "failed", "retry", "lost", "stopped"}  # no report of the run to show


# -- the parser ---------------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dispatch = commands.add_parser(
        "dispatch",
        help="a manager's pool, an order's audit trail, the cutoff (now or dry-run), branches and managers",
        description=__doc__,
        formatter_class=_HELP,
    )
    default = SERVICES["dispatch"].address
    dispatch.add_argument("--address", default=default, help=f"the dispatch service's gRPC address (default {default})")
    dispatch.add_argument(
        "--tz", type=_zone, default=DEFAULT_TZ, help=f"show times in this zone (default {DEFAULT_TZ})"
    )
    # Also accepted after the action (`alliance dispatch pool M --address H:P`); set only when given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", default=argparse.SUPPRESS, help=f"the dispatch service's gRPC address (default {default})"
    )
    common.add_argument("--tz", type=_zone, default=argparse.SUPPRESS, help=f"time zone shown (default {DEFAULT_TZ})")
    actions = dispatch.add_subparsers(dest="action", metavar="ACTION", required=True)

    pool = actions.add_parser(
        "pool",
        parents=[common],
        help="what a manager may grab now, nearest first",
        description="The orders MANAGER may grab now, nearest to their branch first: open orders of the "
        "products they are qualified for, and orders reserved for them. Distances are great-circle "
        "kilometres from the manager's branch; 'address not placed' marks an order located at the "
        "fallback branch because its address could not be placed (someone should look at it).",
        epilog="examples:\n  alliance dispatch pool m-1001\n  alliance dispatch pool m-1001 --size 200 --tz UTC",
        formatter_class=_HELP,
    )
    pool.add_argument("manager_id", metavar="MANAGER")
    pool.add_argument(
        "--size", type=_page, default=50, help=f"show the nearest N orders (default 50, at most {MAX_PAGE})"
    )
    pool.set_defaults(func=show_pool)

    order = actions.add_parser(
        "order",
        parents=[common],
        help="an order's fields and its audit trail",
        description="An order: who booked what and where, how its location was found, its state and "
        "owner, its times; then its audit trail, oldest change first (time, change, actor, detail): "
        "created, reserved, opened, grabbed or assigned, contacted, escalated, unplaced, completed.",
        epilog="example:\n  alliance dispatch order 01JF3Z7W5K2Q8N4M6P0R9T1V3X",
        formatter_class=_HELP,
    )
    order.add_argument("order_id", metavar="ORDER_ID")
    order.set_defaults(func=show_order)

    cutoff = actions.add_parser(
        "run-cutoff",
        parents=[common],
        help="assign every unowned order now (or --dry-run: say what it would assign)",
        description="Run the cutoff now: every order still unowned and booked up to --at (default now) is "
        "assigned to a qualified manager on duty, keeping the total distance least within each "
        "manager's remaining capacity for the day. The products of the rule file's own cutoff times are "
        "run as their own group; --product limits the run to those products' groups (a product without "
        "a time of its own stands for the default group, that is every such product). A run is "
        "once per group and instant, across replicas: asking again answers with the first run's "
        "results. --dry-run solves the same assignment and writes nothing: no order is assigned and no "
        "run is recorded; it lists the assignments, as -v does for a real run.",
        epilog="examples:\n  alliance dispatch run-cutoff --dry-run\n"
        "  alliance dispatch run-cutoff --dry-run --product loan\n"
        "  alliance dispatch run-cutoff --at 2026-12-02T17:00           # 17:00 in --tz\n"
        "  alliance dispatch run-cutoff --at 2026-12-02T09:00:00Z -v",
        formatter_class=_HELP,
    )
    cutoff.add_argument("--dry-run", action="store_true", help="say what it would assign; write nothing")
    cutoff.add_argument(
        "--product",
        dest="products",
        metavar="P",
        nargs="+",
        action="extend",
        default=[],
        help="only these products' cutoff groups (default: every group)",
    )
    cutoff.add_argument(
        "--at",
        metavar="ISO_TIME",
        type=_instant,
        help="assign orders booked up to this instant (default now; not in the future): an ISO date-time, "
        "read in --tz when it has no UTC offset",
    )
    cutoff.add_argument("-v", "--verbose", action="store_true", help="list the assignments (order -> manager)")
    cutoff.set_defaults(func=run_cutoff)

    branches = actions.add_parser(
        "branches",
        parents=[common],
        help="the branches the service knows",
        description="Branches, oldest first: id, location (latitude, longitude), last change and name.",
        epilog="examples:\n  alliance dispatch branches\n  alliance dispatch branches --limit 2000",
        formatter_class=_HELP,
    )
    branches.add_argument("--limit", type=_positive, default=200, help="at most this many (default 200)")
    branches.set_defaults(func=list_branches)

    managers = actions.add_parser(
        "managers",
        parents=[common],
        help="the managers the service knows, with today's load",
        description="Managers, oldest first: id, branch, on duty or not, orders owned today (the rule "
        "file's local day) of their daily capacity, the products they are qualified for, and name.",
        epilog="examples:\n  alliance dispatch managers\n  alliance dispatch managers --branch SH-001 --limit 1000",
        formatter_class=_HELP,
    )
    managers.add_argument("--branch", default="", metavar="B", help="only this branch's managers")
    managers.add_argument("--limit", type=_positive, default=200, help="at most this many (default 200)")
    managers.set_defaults(func=list_managers)


def _page(text: str) -> int:
    value = _positive(text)
    if value > MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_PAGE}")
    return value


def _zone(text: str) -> ZoneInfo:
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r} (an IANA name like Asia/Shanghai)") from None


def _instant(text: str) -> datetime:
    """An ISO date-time; a naive one is completed with --tz later (see run_cutoff)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO date-time, e.g. 2026-12-02T17:00 or 2026-12-02T09:00:00Z"
        ) from None


# -- talking to the service ---------------------------------------------------------------------


class Failed(Exception):
    """A call failed: the message is printed and the command exits 1."""


@contextmanager
def _service(args: argparse.Namespace) -> Iterator[dispatch_pb2_grpc.DispatchServiceStub]:
    with grpc.insecure_channel(args.address) as channel:
        yield dispatch_pb2_grpc.DispatchServiceStub(channel)


def _call(args: argparse.Namespace, rpc: Callable[..., T], request: Any, timeout: float = TIMEOUT) -> T:
    try:
        return rpc(request, timeout=timeout)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        text = f"{code.name}: {error.details() or ''}"
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            text += f" (is the dispatch service running at {args.address}? see --address)"
        raise Failed(text) from None


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except Failed as failed:
            print(f"error: {failed}", file=sys.stderr)
            return 1

    run.__name__ = command.__name__
    run.__doc__ = command.__doc__
    return run


def _when(ts: Timestamp, tz: ZoneInfo) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone(tz).isoformat(sep=" ", timespec="seconds")


def _km(metres: int) -> str:
    return f"{metres / 1000:.1f}"


def _state(order: api.Order) -> str:
    state = STATE_NAMES.get(order.state, "?")
    return f"{state}, address not placed" if order.address_flagged else state


# -- pool ---------------------------------------------------------------------------------------


@_run
def show_pool(args: argparse.Namespace) -> int:
    """`dispatch pool MANAGER`: the nearest orders the manager may grab."""
    with _service(args) as stub:
        reply = _call(args, stub.ListPool, api.ListPoolRequest(manager_id=args.manager_id, page_size=args.size))
    if not reply.orders:
        print(f"The pool of {args.manager_id} is empty: no order they may grab now.")
        return 0
    rows = [
        [
            p.order.order_id,
            p.order.product,
            _km(p.distance_m),
            _state(p.order),
            _when(p.order.created_at, args.tz),
            p.order.address,  # last: CJK text is wider than its length
        ]
        for p in reply.orders
    ]
    _table(["ORDER", "PRODUCT", "KM", "STATE", "CREATED", "ADDRESS"], rows, right=(2,))
    shown = len(reply.orders)
    if shown < reply.total:
        print(f"the nearest {shown} of {_plural(reply.total, 'order')} in {args.manager_id}'s pool (--size for more)")
    else:
        print(f"{_plural(reply.total, 'order')} in {args.manager_id}'s pool, nearest first")
    return 0


# -- order --------------------------------------------------------------------------------------


@_run
def show_order(args: argparse.Namespace) -> int:
    """`dispatch order ORDER_ID`: the order and its audit trail."""
    with _service(args) as stub:
        reply = _call(args, stub.GetOrder, api.GetOrderRequest(order_id=args.order_id))
    order, tz = reply.order, args.tz
    located = (
        f"{order.location.latitude:.6f}, {order.location.longitude:.6f} ({SOURCE_NAMES.get(order.location_source, '?')}"
    )
    located += f", district {order.district_code})" if order.district_code else ")"
    if order.address_flagged:
        located += "  ADDRESS NOT PLACED: someone should check it"
    owner = "-"
    if order.manager_id:
        owner = f"{order.manager_id} (by {order.taken_by})" if order.taken_by else order.manager_id
    fields = [
        ("order", f"{order.order_id}  ({STATE_NAMES.get(order.state, '?')})"),
        ("customer", order.customer_id),
        ("product", order.product),
        ("address", order.address),
        ("location", located),
        ("preferred", order.preferred_manager_id or "-"),
        ("owner", owner),
        ("created", _when(order.created_at, tz)),
        ("in pool from", _when(order.pool_at, tz)),
        ("owned", _when(order.owned_at, tz)),
        ("contacted", _when(order.contacted_at, tz)),
        ("escalated", _when(order.escalated_at, tz)),
        ("completed", _when(order.completed_at, tz)),
    ]
    if order.business_ref:
        fields.append(("business ref", order.business_ref))
    if order.failure_reason:
        fields.append(("failed because", order.failure_reason))
    if order.attributes:
        fields.append(("attributes", ", ".join(f"{k}={v}" for k, v in sorted(order.attributes.items()))))
    for name, value in fields:
        print(f"{name:<14}  {value}")
    print(f"Audit trail, oldest first ({_plural(len(reply.changes), 'change')}):")
    if reply.changes:
        rows = [[f"  {_when(c.at, tz)}", c.change, c.actor, c.detail] for c in reply.changes]
        _table(["  AT", "CHANGE", "ACTOR", "DETAIL"], rows)
    return 0


# -- run-cutoff ---------------------------------------------------------------------------------


@_run
def run_cutoff(args: argparse.Namespace) -> int:
    """`dispatch run-cutoff`: assign the unowned orders now, or say what that would do."""
    request = api.RunCutoffRequest(products=args.products, dry_run=args.dry_run)
    if args.at is not None:
        at = args.at if args.at.tzinfo is not None else args.at.replace(tzinfo=args.tz)
        request.cutoff_at.FromDatetime(at.astimezone(UTC))
    with _service(args) as stub:
        reply = _call(args, stub.RunCutoff, request, timeout=CUTOFF_TIMEOUT)
    runs = [r for r in reply.run_id.split(",") if r]
    print(f"Cutoff {'run' if len(runs) == 1 else 'runs'} {', '.join(runs)}")
    instants = sorted({r.rpartition("@")[2] for r in runs})
    if instants:
        print(f"  {'booked up to':<18}{', '.join(_local(i, args.tz) for i in instants)}")
    outcomes = [o for o in reply.outcome.split(",") if o]
    print(f"  {'outcome':<18}{'; '.join(OUTCOMES.get(o, o) for o in outcomes)}")
    if outcomes and all(o in NO_RESULTS for o in outcomes):
        print(f"  {'results':<18}none (see the outcome)")
        return 0
    assigned = len(reply.assignments)
    average = f" ({_km(reply.total_distance_m // assigned)} km on average)" if assigned else ""
    label = "would assign" if args.dry_run else "assigned"
    print(f"  {label:<18}{_plural(assigned, 'order')}, {_km(reply.total_distance_m)} km in all{average}")
    if reply.skipped:
        print(f"  {'skipped':<18}{_plural(reply.skipped, 'order')} (grabbed while the cutoff ran)")
    print(f"  {'unplaced':<18}{_plural(len(reply.unplaced), 'order')}")
    if reply.unplaced:
        print("Unplaced orders (nobody could take them):")
        _table(["  ORDER", "PRODUCT", "REASON"], [[f"  {u.order_id}", u.product, u.reason] for u in reply.unplaced])
    if reply.assignments and (args.dry_run or args.verbose):
        print("Assignments, order -> manager:")
        rows = [[f"  {a.order_id}", "->", a.manager_id, _km(a.distance_m)] for a in reply.assignments]
        _table(["  ORDER", "", "MANAGER", "KM"], rows, right=(3,))
    elif reply.assignments:
        print("(-v lists the assignments)")
    if args.dry_run:
        print("Dry run: nothing was written (no order assigned, no run recorded).")
    return 0


def _local(key: str, tz: ZoneInfo) -> str:
    """A run id's instant (2026-11-23T09:00:00Z) in `tz`; as it is if it is not one."""
    stamp = Timestamp()
    try:
        stamp.FromJsonString(key)
    except ValueError:
        return key
    return _when(stamp, tz)


# -- branches and managers ----------------------------------------------------------------------


@_run
def list_branches(args: argparse.Namespace) -> int:
    """`dispatch branches`: every branch, page by page."""
    found: list[api.Branch] = []
    token = ""
    with _service(args) as stub:
        while len(found) < args.limit:
            size = min(MAX_PAGE, args.limit - len(found))
            reply = _call(args, stub.ListBranches, api.ListBranchesRequest(page_size=size, page_token=token))
            found.extend(reply.branches)
            token = reply.next_page_token
            if not token:
                break
    if not found:
        print("No branches.")
        return 0
    rows = [
        [
            b.branch_id,
            f"{b.location.latitude:.6f}",
            f"{b.location.longitude:.6f}",
            _when(b.updated_at, args.tz),
            b.name,
        ]
        for b in found
    ]
    _table(["BRANCH", "LATITUDE", "LONGITUDE", "UPDATED", "NAME"], rows, right=(1, 2))
    more = f"; more exist (--limit {args.limit} reached)" if token else ""
    print(f"{_plural(len(found), 'branch', 'branches')}{more}")
    return 0


@_run
def list_managers(args: argparse.Namespace) -> int:
    """`dispatch managers [--branch B]`: managers and today's load, page by page."""
    found: list[api.Manager] = []
    token = ""
    with _service(args) as stub:
        while len(found) < args.limit:
            size = min(MAX_PAGE, args.limit - len(found))
            request = api.ListManagersRequest(branch_id=args.branch, page_size=size, page_token=token)
            reply = _call(args, stub.ListManagers, request)
            found.extend(reply.managers)
            token = reply.next_page_token
            if not token:
                break
    where = f" at branch {args.branch}" if args.branch else ""
    if not found:
        print(f"No managers{where}.")
        return 0
    rows = [
        [
            m.manager_id,
            m.branch_id,
            "on duty" if m.on_duty else "off",
            f"{m.owned_today}/{m.daily_capacity}",
            ",".join(m.products) or "-",
            m.name,
        ]
        for m in found
    ]
    _table(["MANAGER", "BRANCH", "DUTY", "TODAY", "PRODUCTS", "NAME"], rows, right=(3,))
    more = f"; more exist (--limit {args.limit} reached)" if token else ""
    print(f"{_plural(len(found), 'manager')}{where}{more}")
    return 0
