"""`alliance dispatch ...` against a dispatch service served in-process over real gRPC, on SQLite and
PostgreSQL: a manager's pool, an order's audit trail, the cutoff dry-run and run, the branch and
manager lists; and `alliance rules validate` on dispatch policy files. The CLI is synchronous gRPC,
so it runs on a thread beside the service's event loop."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from alliance.v1 import dispatch_pb2 as api
from services.cli.__main__ import main
from tests.integration.conftest import DispatchUnderTest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "rules" / "dispatch" / "default.yaml"
SHANGHAI = (31.2304, 121.4737)  # People's Square
PUDONG = (31.2397, 121.4998)  # about 2.7 km east
SHANGHAI_TZ = ZoneInfo("Asia/Shanghai")


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`alliance ARGV`: (exit code, stdout + stderr); --help's exit is the code."""
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


async def alliance(dispatch: DispatchUnderTest, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """`alliance dispatch ARGV` against the service; (exit code, stdout + stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["dispatch", "--address", f"127.0.0.1:{dispatch.host.port}", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# -- rules validate ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_validate_the_repository_dispatch_policy(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "rules", "validate", str(REPO / "rules" / "dispatch"))
    assert code == 0, out
    assert f"OK {DEFAULT_POLICY} (dispatch policy dispatch-default, version " in out
    assert ", cutoff 17:00 Asia/Shanghai, 1 product cutoff (loan 16:00), preferred window 30m, " in out
    assert "SLA contact within 2h, then back to the pool, fallback branch HQ-001)" in out
    assert out.splitlines()[-1] == "1 of 1 files OK"

    code, out = run(capsys, "rules", "validate", str(REPO / "rules"))
    assert code == 0, out
    assert f"OK {REPO}/rules/dispatch/default.yaml (dispatch policy dispatch-default" in out


@pytest.mark.timeout(60)
def test_validate_refuses_a_broken_dispatch_policy_with_its_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = DEFAULT_POLICY.read_text()
    assert 'cutoff: "17:00"' in text and "timezone: Asia/Shanghai" in text
    lines = text.splitlines()
    cutoff_line = 1 + next(i for i, line in enumerate(lines) if line.startswith("cutoff:"))
    zone_line = 1 + next(i for i, line in enumerate(lines) if line.startswith("timezone:"))
    directory = tmp_path / "dispatch"
    directory.mkdir()
    broken = directory / "default.yaml"
    broken.write_text(text.replace('cutoff: "17:00"', 'cutoff: "5pm"').replace("Asia/Shanghai ", "Asia/Shangai "))
    code, out = run(capsys, "rules", "validate", str(directory))
    assert code == 1, out
    assert f"{broken}:{cutoff_line}: cutoff: must be a time of day HH:MM" in out
    assert out.splitlines()[-1] == "0 of 1 files OK, 1 refused"

    broken.write_text(text.replace("timezone: Asia/Shanghai", "timezone: Asia/Shangai"))
    code, out = run(capsys, "rules", "validate", str(broken))
    assert code == 1, out
    assert f"{broken}:{zone_line}: timezone: unknown time zone 'Asia/Shangai'" in out

    # The service reads one file of its directory: a second one is refused, naming the one in force.
    broken.write_bytes(DEFAULT_POLICY.read_bytes())
    second = directory / "zz-extra.yaml"
    second.write_text(text.replace("policy: dispatch-default", "policy: dispatch-extra"))
    code, out = run(capsys, "rules", "validate", str(directory))
    assert code == 1, out
    assert f"OK {broken} (dispatch policy dispatch-default" in out
    assert f"{second}:10: policy: {broken} is the dispatch policy in force" in out

    # Outside a dispatch directory, `policy:` with `fallback_branch:` is a dispatch policy (not referral).
    draft = tmp_path / "drafts" / "next.yaml"
    draft.parent.mkdir()
    draft.write_text(text.replace('"16:00"', '"16:30"'))
    code, out = run(capsys, "rules", "validate", str(draft))
    assert code == 0, out
    assert f"OK {draft} (dispatch policy dispatch-default, version " in out and "(loan 16:30)" in out


# -- help -------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("action", ["", "pool", "order", "run-cutoff", "branches", "managers"])
def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str], action: str) -> None:
    code, out = run(capsys, "dispatch", *([action] if action else []), "--help")
    assert code == 0, out
    assert "example" in out and f"alliance dispatch {action}".rstrip() in out
    assert "127.0.0.1:50053" in out  # the registry's address is the default


@pytest.mark.timeout(60)
def test_no_service_is_an_error_that_names_the_address(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(capsys, "dispatch", "--address", "127.0.0.1:1", "pool", "m-1")
    assert code == 1
    assert out.startswith("error: UNAVAILABLE: ") and "is the dispatch service running at 127.0.0.1:1?" in out
    code, out = run(capsys, "dispatch", "run-cutoff", "--at", "tomorrow")
    assert code == 2 and "'tomorrow' is not an ISO date-time" in out


# -- against the service ----------------------------------------------------------------------------


async def world(dispatch: DispatchUnderTest) -> tuple[str, str, str, list[api.Order]]:
    """A branch in Puxi and one in Pudong, a card manager at each, and three card orders near Pudong
    (nearest first from Pudong) and a mortgage order nobody may take."""
    west, east = uid("SH"), uid("PD")
    await dispatch.branch(west, *SHANGHAI)
    await dispatch.branch(east, *PUDONG)
    near, far = uid("m"), uid("m")
    await dispatch.manager(near, east, products=("card",), capacity=2)
    await dispatch.manager(far, west, products=("card",), capacity=5)
    orders = [
        await dispatch.order("card", PUDONG[0] + 0.001 * i, PUDONG[1], address=f"浦东新区世纪大道{i}号")
        for i in (1, 5, 9)
    ]
    orders.append(await dispatch.order("mortgage", *PUDONG, address="浦东新区陆家嘴环路1000号"))
    return east, near, far, orders


@pytest.mark.timeout(60)
async def test_pool_lists_a_managers_orders_nearest_first(
    dispatch: DispatchUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    _, near, _, orders = await world(dispatch)
    code, out = await alliance(dispatch, capsys, "pool", near)
    assert code == 0, out
    header, *rows, summary = out.splitlines()
    assert header.split() == ["ORDER", "PRODUCT", "KM", "STATE", "CREATED", "ADDRESS"]
    assert [row.split()[0] for row in rows] == [o.order_id for o in orders[:3]]
    assert rows[0].split()[1:3] == ["card", "0.1"] and rows[2].split()[2] == "1.0"
    assert "+08:00" in rows[0] and rows[0].endswith("浦东新区世纪大道1号")
    assert summary == f"3 orders in {near}'s pool, nearest first"

    code, out = await alliance(dispatch, capsys, "pool", near, "--size", "1", "--tz", "UTC")
    assert code == 0, out
    assert len(out.splitlines()) == 3 and "+00:00" in out
    assert out.splitlines()[-1] == f"the nearest 1 of 3 orders in {near}'s pool (--size for more)"

    code, out = await alliance(dispatch, capsys, "pool", uid("nobody"))
    assert code == 1 and out.startswith("error: NOT_FOUND: ") and "\nTraceback" not in out


@pytest.mark.timeout(60)
async def test_run_cutoff_dry_run_writes_nothing_then_the_run_assigns_once(
    dispatch: DispatchUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    east, near, far, orders = await world(dispatch)
    card, mortgage = orders[:3], orders[3]
    at = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()  # after every order, within the clock skew

    code, out = await alliance(dispatch, capsys, "run-cutoff", "--dry-run", "--at", at)
    assert code == 0, out
    assert "  outcome           dry run" in out
    assert "  would assign      3 orders, 3.9 km in all (1.3 km on average)" in out
    assert "  unplaced          1 order" in out
    assert f"  {mortgage.order_id}  mortgage" in out
    # near (capacity 2) takes the two nearest; far takes the third.
    assignments = out[out.index("Assignments, order -> manager:") :].splitlines()[2:-1]
    assert sorted(line.split()[:3] for line in assignments) == sorted(
        [[card[0].order_id, "->", near], [card[1].order_id, "->", near], [card[2].order_id, "->", far]]
    )
    assert out.splitlines()[-1] == "Dry run: nothing was written (no order assigned, no run recorded)."
    for order in orders:
        reply = await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=order.order_id))
        assert reply.order.state == api.ORDER_STATE_OPEN and not reply.order.manager_id

    # Without a UTC offset, --at is read in --tz (Asia/Shanghai by default).
    local = (datetime.now(SHANGHAI_TZ) + timedelta(seconds=2)).replace(microsecond=0, tzinfo=None)
    code, out = await alliance(dispatch, capsys, "run-cutoff", "--dry-run", "--at", local.isoformat())
    assert code == 0, out
    assert f"  booked up to      {local.isoformat(sep=' ')}+08:00" in out and "  would assign      3 orders" in out

    code, out = await alliance(dispatch, capsys, "run-cutoff", "--at", at)
    assert code == 0, out
    assert "  outcome           succeeded: assigned now" in out
    assert "  assigned          3 orders, 3.9 km in all" in out and "(-v lists the assignments)" in out
    assert "nothing was written" not in out and "Assignments" not in out
    owners = {
        o.order_id: (await dispatch.stub.GetOrder(api.GetOrderRequest(order_id=o.order_id))).order.manager_id
        for o in card
    }
    assert owners == {card[0].order_id: near, card[1].order_id: near, card[2].order_id: far}

    code, again = await alliance(dispatch, capsys, "run-cutoff", "--at", at, "-v")
    assert code == 0, again
    assert "  outcome           already done: the run happened before; these are its results" in again
    assert "  assigned          3 orders, 3.9 km in all" in again and f"  {card[2].order_id}  ->  {far}" in again

    code, out = await alliance(dispatch, capsys, "pool", near)
    assert code == 0 and out.startswith(f"The pool of {near} is empty")

    code, out = await alliance(dispatch, capsys, "order", card[0].order_id)
    assert code == 0, out
    assert f"order           {card[0].order_id}  (owned)" in out
    assert f"owner           {near} (by cutoff)" in out
    assert "address         浦东新区世纪大道1号" in out
    assert "(coordinates given)" in out
    trail = out[out.index("Audit trail, oldest first") :].splitlines()
    assert trail[1].split() == ["AT", "CHANGE", "ACTOR", "DETAIL"]
    assert trail[2].split()[2:] == ["created", "customer", "located", "by", "coordinates"]
    assert trail[3].split()[2:] == ["assigned", "cutoff", "to", near] and len(trail) == 4

    code, out = await alliance(dispatch, capsys, "order", mortgage.order_id)
    assert code == 0, out
    assert f"order           {mortgage.order_id}  (open)" in out and "owner           -" in out
    unplaced = out.splitlines()[-1].split(maxsplit=5)
    assert unplaced[2:4] == ["unplaced", "cutoff"] and unplaced[4].startswith("cutoff@")
    assert unplaced[5] == "no qualified manager on duty"

    code, out = await alliance(dispatch, capsys, "order", uid("missing"))
    assert code == 1 and "error: NOT_FOUND: order_id: no order" in out

    code, out = await alliance(dispatch, capsys, "managers", "--branch", east)
    assert code == 0, out
    header, row, summary = out.splitlines()
    assert header.split() == ["MANAGER", "BRANCH", "DUTY", "TODAY", "PRODUCTS", "NAME"]
    assert row.split()[:6] == [near, east, "on", "duty", "2/2", "card"]
    assert summary == f"1 manager at branch {east}"


@pytest.mark.timeout(60)
async def test_branches_and_managers_lists(dispatch: DispatchUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    branches = [uid("B") for _ in range(7)]
    for i, branch in enumerate(branches):
        await dispatch.branch(branch, 31.0 + i / 100, 121.0)
    for branch in branches:
        await dispatch.manager(uid("m"), branch, on_duty=branch != branches[0])

    code, out = await alliance(dispatch, capsys, "branches", "--limit", "600")
    assert code == 0, out
    header, *rows, summary = out.splitlines()
    assert header.split() == ["BRANCH", "LATITUDE", "LONGITUDE", "UPDATED", "NAME"]
    assert [r.split()[0] for r in rows] == branches and summary == "7 branches"

    code, out = await alliance(dispatch, capsys, "branches", "--limit", "3")
    assert code == 0, out
    assert len(out.splitlines()) == 5 and out.splitlines()[-1] == "3 branches; more exist (--limit 3 reached)"

    code, out = await alliance(dispatch, capsys, "managers")
    assert code == 0, out
    assert out.splitlines()[-1] == "7 managers" and out.count(" off ") == 1
