"""ImportLinks over real gRPC on SQLite and PostgreSQL: the same checks as Register, a report of
what was refused and why, idempotent per batch."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from alliance.v1 import referral_pb2 as api
from tests.integration.conftest import ReferralUnderTest

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def link(user: str, referrer: str = "", minutes: int = 0, **fields: object) -> api.ImportedLink:
    at = Timestamp()
    at.FromDatetime(T0 + timedelta(minutes=minutes))
    return api.ImportedLink(user_id=user, referrer_id=referrer, linked_at=at, **fields)  # type: ignore[arg-type]


async def send(referral: ReferralUnderTest, batch_id: str, *chunks: list[api.ImportedLink]) -> api.ImportLinksResponse:
    async def parts():  # type: ignore[no-untyped-def]
        yield api.ImportLinksRequest(header=api.ImportHeader(batch_id=batch_id, source="mini-program-2025"))
        for chunk in chunks:
            yield api.ImportLinksRequest(links=api.ImportChunk(links=chunk))

    return await referral.stub.ImportLinks(parts())


async def test_a_three_hop_cycle_through_import_is_refused(referral: ReferralUnderTest) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    report = await send(referral, uid("batch"), [link(b, a, 1), link(c, b, 2)], [link(a, c, 3)])
    assert (report.received, report.linked) == (3, 2)
    [refusal] = report.refusals
    assert (refusal.index, refusal.user_id, refusal.reason) == (2, a, api.REFUSAL_REASON_CYCLE)
    assert f"{a} <- {b} <- {c} <- {a}" in refusal.message
    # Against links already stored, in a later batch, too.
    again = await send(referral, uid("batch"), [link(a, c, 4)])
    assert [r.reason for r in again.refusals] == [api.REFUSAL_REASON_CYCLE]
    path = await referral.stub.GetPathToRoot(api.GetPathToRootRequest(user_id=c))
    assert [s.user_id for s in path.ancestors] == [b, a]


async def test_every_refusal_through_import_and_the_report(referral: ReferralUnderTest) -> None:
    owner, revoked_owner = uid("owner"), uid("gone")
    code = await referral.code(owner)
    old_code = await referral.code(revoked_owner)
    await referral.stub.RevokeCode(api.RevokeCodeRequest(user_id=revoked_owner))
    taken, fresh = uid("taken"), uid("fresh")
    await referral.register(taken, code)
    batch = [
        link(fresh, code=code, minutes=1),  # 0: linked through a code
        link(uid(), code="ABCD2345", minutes=2),  # 1: unknown code
        link(uid(), code=old_code, minutes=3),  # 2: revoked code
        link(owner, owner, 4),  # 3: self-referral
        link(taken, uid("x"), 5),  # 4: already referred
        link(uid(), "", 6),  # 5: no referrer at all
        api.ImportedLink(user_id=uid()),  # 6: no linked_at
        link(fresh, code=code, minutes=7),  # 7: the same link again
        link(uid(), uid("someone-else"), 8, code=code),  # 8: code of another referrer
    ]
    report = await send(referral, uid("batch"), batch)
    reasons = {r.index: r.reason for r in report.refusals}
    assert reasons == {
        1: api.REFUSAL_REASON_UNKNOWN_CODE,
        2: api.REFUSAL_REASON_REVOKED_CODE,
        3: api.REFUSAL_REASON_SELF_REFERRAL,
        4: api.REFUSAL_REASON_ALREADY_REFERRED,
        5: api.REFUSAL_REASON_INVALID,
        6: api.REFUSAL_REASON_INVALID,
        8: api.REFUSAL_REASON_INVALID,
    }
    assert next(r for r in report.refusals if r.index == 6).message.startswith("links[6].linked_at")
    assert (report.linked, report.already_linked, report.received) == (1, 1, 9)


async def test_import_is_idempotent_per_batch(referral: ReferralUnderTest) -> None:
    top = uid("top")
    batch = [link(uid(), top, i) for i in range(3)]
    batch_id = uid("batch")
    first = await send(referral, batch_id, batch)
    again = await send(referral, batch_id, batch)
    assert again.replayed and (again.linked, again.received) == (first.linked, first.received) == (3, 3)
    stats = await referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=top))
    assert stats.size == 3
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await send(referral, batch_id, batch[:2])
    assert other.value.code() == grpc.StatusCode.ALREADY_EXISTS and "idempotency_key" in other.value.details()


async def test_import_applies_velocity_rules_at_the_links_own_times(referral: ReferralUnderTest) -> None:
    busy, calm = uid("busy"), uid("calm")
    burst = [link(uid(), busy, i) for i in range(6)]  # six within an hour: the sixth is flagged
    spread = [link(uid(), calm, 70 * i) for i in range(6)]  # one every 70 minutes: none is
    report = await send(referral, uid("batch"), burst + spread)
    assert (report.linked, report.under_review) == (11, 1)
    queue = await referral.stub.ListReviews(api.ListReviewsRequest(page_size=500))
    assert burst[5].user_id in {q.user_id for q in queue.links}


async def test_import_needs_a_header_first(referral: ReferralUnderTest) -> None:
    async def parts():  # type: ignore[no-untyped-def]
        yield api.ImportLinksRequest(links=api.ImportChunk(links=[link(uid(), uid())]))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await referral.stub.ImportLinks(parts())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith("header")


async def test_import_report_counts_refusals_by_reason_and_refuses_long_batch_ids(referral: ReferralUnderTest) -> None:
    owner = uid("owner")
    report = await send(referral, uid("batch"), [link(owner, owner, 1), link(uid(), code="ABCD2345", minutes=2)])
    assert report.refused == 2
    assert dict(report.refused_by_reason) == {"REFUSAL_REASON_SELF_REFERRAL": 1, "REFUSAL_REASON_UNKNOWN_CODE": 1}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await send(referral, "b" * 65, [link(uid(), uid())])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith("batch_id")
