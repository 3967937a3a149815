"""`alliance referral ...` against a referral service served in-process over real gRPC, on SQLite
and PostgreSQL: codes and QR images, imports (cycles, idempotent re-runs), trees, reviews and the
leaderboard. The CLI is synchronous gRPC, so it runs on a thread beside the service's event loop."""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

import pytest

from alliance.v1 import referral_pb2 as api
from services.cli.__main__ import main
from tests.integration.conftest import ReferralUnderTest


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def alliance(referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `alliance referral ARGV` against the service; (exit code, stdout + stderr)."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["referral", "--address", f"127.0.0.1:{referral.host.port}", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check_png(data: bytes) -> tuple[int, int]:
    """A well-formed PNG (signature, chunk CRCs, IHDR first, IEND last, image data that inflates to
    exactly the rows IHDR announces); its width and height."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, idat = 8, [], b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append(kind)
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        position += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND" and b"IDAT" in chunks
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour]
    row = (width * channels * depth + 7) // 8
    assert len(zlib.decompress(idat)) == height * (1 + row)
    return width, height


async def test_code_writes_valid_svg_and_png(
    referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    alice = uid("alice")
    code, out = await alliance(referral, capsys, "code", alice, "--qr", str(tmp_path / "alice.svg"))
    assert code == 0, out
    issued = (await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice))).code
    assert f"code        {issued}   (issued now)" in out
    assert f"QR payload  https://m.bank.example/r/{issued}" in out
    svg = ElementTree.parse(tmp_path / "alice.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert int(svg.get("width", "0")) >= 29 * 4 and svg.get("width") == svg.get("height")
    assert svg.findall(".//{http://www.w3.org/2000/svg}path")

    code, out = await alliance(referral, capsys, "code", alice, "--qr", str(tmp_path / "alice.PNG"))
    assert code == 0, out
    assert f"code        {issued}   (issued " in out and "(issued now)" not in out  # the same code
    width, height = check_png((tmp_path / "alice.PNG").read_bytes())
    assert width == height >= 29 * 8

    code, out = await alliance(referral, capsys, "code", alice, "--qr", str(tmp_path / "alice.jpg"))
    assert code == 2 and "must end in .svg or .png" in out


async def test_reissue_generates_a_key_and_a_retry_with_it_is_safe(
    referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = uid("alice")
    first = await referral.code(alice)
    code, out = await alliance(referral, capsys, "code", alice, "--reissue")
    assert code == 0, out
    key = next(line.split()[-1] for line in out.splitlines() if line.startswith("idempotency key"))
    assert f"--idempotency-key {key}" in out
    new = (await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice))).code
    assert new != first and f"code        {new}" in out
    code, out = await alliance(referral, capsys, "code", alice, "--reissue", "--idempotency-key", key)
    assert code == 0 and f"code        {new}" in out  # the retry did not revoke the new code
    assert (await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice))).code == new


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("user_id,referrer_id,code,linked_at,kind,referrer_kind,device_hash,phone_hash\n" + "".join(rows))
    return path


def at(minutes_ago: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes_ago)).isoformat()


@pytest.mark.parametrize("batch_size", ["10000", "1"])
async def test_import_refuses_a_three_hop_cycle_with_its_line_and_reruns_idempotently(
    referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str], tmp_path: Path, batch_size: str
) -> None:
    a, b, c, d = uid("a"), uid("b"), uid("c"), uid("d")
    file = write_csv(
        tmp_path / "history.csv",
        [
            f"{b},{a},,{at(40)},customer,employee,,\n",  # line 2: A <- B
            "\n",  # line 3: blank, skipped
            f"{c},{b},,{at(30)},,,,\n",  # line 4: B <- C
            f"{a},{c},,{at(20)},,,,\n",  # line 5: C <- A closes the loop
            f"{d},{a},,yesterday,,,,\n",  # line 6: not a time, refused here
            f"{d},{a},,{at(10)},,,,\n",  # line 7: A <- D
        ],
    )
    code, out = await alliance(referral, capsys, "import", str(file), "--batch-size", batch_size, "--source", "t")
    assert code == 1, out
    lines = out.splitlines()
    report = lines.index(next(line for line in lines if line.startswith("Report for")))
    assert "linked                  3" in lines[report + 1]
    assert "under review            0" in lines[report + 2]
    assert "already linked          0" in lines[report + 3]
    assert "refused                 2" in lines[report + 4]
    assert {lines[report + 5].split()[0], lines[report + 6].split()[0]} == {"CYCLE", "INVALID"}
    assert f"line 5: {a} <- {c}: CYCLE: " in out and f"{a} <- {b} <- {c} <- {a}" in out
    assert f"line 6: {d} <- {a}: INVALID: linked_at: 'yesterday' is not an ISO date-time" in out
    first_batches = [line for line in lines if line.startswith("batch ")]
    assert len(first_batches) == (1 if batch_size == "10000" else 4)
    assert "imported before" not in out

    partner = (await referral.stub.GetPartner(api.GetPartnerRequest(user_id=a))).partner
    assert partner.kind == api.USER_KIND_EMPLOYEE and partner.descendants == 3 and partner.direct_referrals == 2

    code, again = await alliance(referral, capsys, "import", str(file), "--batch-size", batch_size)
    assert code == 1, again
    assert [line for line in again.splitlines() if line.startswith("batch ")] == [
        line.replace("refused", "refused (imported before: its first report)") for line in first_batches
    ]
    assert "the figures are the first import's; nothing new was written" in again
    assert f"line 5: {a} <- {c}: CYCLE: " in again
    assert (await referral.stub.GetPartner(api.GetPartnerRequest(user_id=a))).partner == partner


async def test_import_json_lines_and_bad_headers(
    referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a, b = uid("a"), uid("b")
    code_a = await referral.code(a)
    file = tmp_path / "links.jsonl"
    file.write_text(
        json.dumps({"user_id": b, "code": code_a.lower(), "linked_at": at(5)})
        + "\n\n"
        + json.dumps({"user_id": b, "referrer_id": a, "linked_at": at(5)})  # line 3: the same link
        + "\n"
        + json.dumps({"user_id": a, "code": "ABCD2345", "linked_at": at(5), "typo": 1})  # line 4
        + "\n"
        + json.dumps({"user_id": a, "code": "ABCD2345", "linked_at": at(5)})  # line 5
        + "\n"
    )
    code, out = await alliance(referral, capsys, "import", str(file))
    assert code == 1, out
    assert "linked                  1" in out and "already linked          1" in out
    assert f"line 4: {a} <- ?: INVALID: unknown key(s) typo" in out
    assert f"line 5: {a} <- ?: UNKNOWN_CODE: code: no referral code ABCD2345" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("user,referrer_id,linked_at\nx,y,2025-01-01T00:00:00+00:00\n")
    code, out = await alliance(referral, capsys, "import", str(bad))
    assert code == 1
    assert "line 1 (the header): unknown column(s) user; missing column(s) user_id" in out


async def test_tree_shows_the_path_the_stats_and_the_children(
    referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    root, mid, leaf, other, deep = uid("root"), uid("mid"), uid("leaf"), uid("other"), uid("deep")
    await referral.refer(root, mid)
    await referral.refer(mid, leaf)
    await referral.refer(leaf, deep)
    await referral.refer(root, other)
    await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=uid("biz"), user_id=leaf, product="credit_card")
    )

    code, out = await alliance(referral, capsys, "tree", leaf)
    assert code == 0, out
    assert f"Partner {leaf} (customer), code " in out
    assert f"  referred by {mid}: active, linked " in out
    assert "Path to the root, nearest first (2 levels):" in out
    assert f"      1  {mid}  customer\n      2  {root}  customer  (root)" in out
    assert f"├── {deep}" not in out and f"└── {deep}  active" in out

    code, out = await alliance(referral, capsys, "tree", root)
    assert code == 0, out
    assert "  a root: nobody referred this user" in out
    assert "Subtree: 4 users below, 2 direct, 3 levels deep" in out
    assert "  conversions below: 1 (credit_card 1)" in out
    drawn = out[out.index("Referrals, newest first") :].splitlines()
    assert drawn[1] == f"{root}  (2 direct, 4 below)"
    assert drawn[2].startswith(f"├── {other}  active, linked ") and drawn[2].endswith("(no referrals)")
    assert drawn[3].startswith(f"└── {mid}  active") and drawn[3].endswith("(1 direct, 2 below)")
    assert drawn[4].startswith(f"    └── {leaf}  active") and drawn[4].endswith("(1 direct, 1 below)")
    assert len(drawn) == 5  # --depth 2: deep is not drawn

    code, out = await alliance(referral, capsys, "tree", root, "--depth", "3")
    assert code == 0, out
    assert f"\n        └── {deep}  active" in out

    code, out = await alliance(referral, capsys, "tree", root, "--limit", "1")
    assert code == 0, out
    drawn = out[out.index("Referrals, newest first") :].splitlines()
    assert drawn[2].startswith(f"├── {other}  active") and drawn[3] == "└── ... 1 more" and len(drawn) == 4

    code, out = await alliance(referral, capsys, "tree", uid("nobody"))
    assert code == 1 and "error: NOT_FOUND: user_id: no partner" in out


async def test_review_list_approve_and_reject(referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    # The fixture's policy: the 6th registration under one referrer within an hour is flagged.
    boss = uid("boss")
    code = await referral.code(boss)
    users = [uid("u") for _ in range(7)]
    for user in users:
        await referral.register(user, code)
    flagged = users[5:]

    status, out = await alliance(referral, capsys, "review", "list")
    assert status == 0, out
    header, *rows, summary = out.splitlines()
    assert header.split() == ["USER", "REFERRER", "RULE", "REASON", "LINKED", "AT"]
    mine = [row for row in rows if boss in row]
    assert [row.split()[0] for row in mine] == flagged
    assert "test-referral/referrer-burst" in mine[0] and f"6 registrations under {boss} within 1h (max 5)" in mine[0]
    assert summary.endswith("under review")

    await referral.stub.RecordConversion(
        api.RecordConversionRequest(business_ref=uid("biz"), user_id=flagged[0], product="loan")
    )
    status, out = await alliance(
        referral, capsys, "review", "approve", flagged[0], "--reviewer", "ops-li", "--note", "checked"
    )
    assert status == 0, out
    assert f"{flagged[0]}'s link to {boss}: approved by ops-li at " in out
    assert "  note: checked" in out and "1 held conversion released and rewarded" in out
    status, out = await alliance(referral, capsys, "review", "approve", flagged[0], "--reviewer", "ops-li")
    assert status == 0 and "already had this decision" in out

    status, out = await alliance(referral, capsys, "review", "reject", flagged[1], "--reviewer", "ops-wang")
    assert status == 0, out
    assert f"{flagged[1]}'s link to {boss}: rejected by ops-wang" in out
    assert f"{flagged[1]} left {boss}'s tree; rewards of 0 conversions revoked" in out

    status, out = await alliance(referral, capsys, "review", "list")
    assert status == 0 and boss not in out

    status, out = await alliance(referral, capsys, "review", "approve", uid("nobody"), "--reviewer", "x")
    assert status == 1 and "error: " in out


async def test_leaderboard(referral: ReferralUnderTest, capsys: pytest.CaptureFixture[str]) -> None:
    star, fan = uid("star"), uid("fan")
    await referral.refer(star, fan)
    for _ in range(2):
        await referral.stub.RecordConversion(
            api.RecordConversionRequest(business_ref=uid("biz"), user_id=fan, product="loan")
        )
    status, out = await alliance(referral, capsys, "leaderboard", "--period", "all", "--campaign", "spring-push")
    assert status == 0, out
    assert out.splitlines()[:3] == [
        "Leaderboard of all time, customers, campaign spring-push",
        f"RANK  {'USER':<{len(star)}}  CONVERSIONS",
        f"   1  {star}            2",
    ]
    status, out = await alliance(referral, capsys, "leaderboard", "--kind", "employee")
    assert status == 0 and out.startswith("Leaderboard 20") and "employees, all conversions" in out
    assert "No conversions in this period." in out

    status, out = await alliance(referral, capsys, "leaderboard", "--campaign", "nope")
    assert status == 1 and "INVALID_ARGUMENT: campaign: no referral campaign nope" in out
