"""Register over real gRPC on SQLite and PostgreSQL: links, every refusal, velocity reviews,
idempotency and 100 racing registrations of one user."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from alliance.v1 import referral_pb2 as api
from tests.integration.conftest import ReferralUnderTest


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def refused(call: object, reason: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION, caught.value.details()
    assert caught.value.details().startswith(reason), caught.value.details()
    return caught.value


async def test_register_links_under_the_code_owner(referral: ReferralUnderTest) -> None:
    alice, bob = uid("alice"), uid("bob")
    code = await referral.code(alice)
    reply = await referral.register(bob, code.lower()[:4] + "-" + code[4:], device_hash="d1")
    assert reply.link.referrer_id == alice
    assert reply.link.state == api.LINK_STATE_ACTIVE
    assert reply.link.code == code and not reply.replayed
    again = await referral.register(bob, code)
    assert again.replayed and again.link.referrer_id == alice

    partner = (await referral.stub.GetPartner(api.GetPartnerRequest(user_id=alice))).partner
    assert partner.code == code and partner.direct_referrals == 1 and partner.descendants == 1
    assert not partner.HasField("link")


async def test_issue_code_is_stable_and_reissue_revokes(referral: ReferralUnderTest) -> None:
    alice = uid("alice")
    first = await referral.stub.IssueCode(
        api.IssueCodeRequest(user_id=alice, qr_images=[api.QR_FORMAT_SVG, api.QR_FORMAT_PNG])
    )
    assert first.issued and len(first.code) == 8 and not set(first.code) & set("01OIL")
    assert first.qr_payload.endswith(first.code) and "<svg" in first.qr_svg and first.qr_png.startswith(b"\x89PNG")
    same = await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice))
    assert same.code == first.code and not same.issued and not same.qr_svg

    with pytest.raises(grpc.aio.AioRpcError) as missing_key:
        await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice, reissue=True))
    assert missing_key.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "idempotency_key" in missing_key.value.details()
    new = await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice, reissue=True, idempotency_key="r1"))
    retried = await referral.stub.IssueCode(api.IssueCodeRequest(user_id=alice, reissue=True, idempotency_key="r1"))
    assert new.code != first.code and retried.code == new.code and retried.replayed and not new.replayed

    await refused(referral.register(uid(), first.code), "REVOKED_CODE")
    assert (await referral.register(uid(), new.code)).link.referrer_id == alice
    revoked = await referral.stub.RevokeCode(api.RevokeCodeRequest(user_id=alice, reason="left the bank"))
    assert revoked.revoked_code == new.code
    await refused(referral.register(uid(), new.code), "REVOKED_CODE")


async def test_every_refusal_of_register(referral: ReferralUnderTest) -> None:
    a, b, c = uid("a"), uid("b"), uid("c")
    await refused(referral.register(a, "ABCD2345"), "UNKNOWN_CODE")
    code_a = await referral.code(a)
    await refused(referral.register(a, code_a), "SELF_REFERRAL")
    await referral.register(b, code_a)
    code_c = await referral.code(c)
    error = await refused(referral.register(b, code_c), "ALREADY_REFERRED")
    assert a in error.details()
    # A <- B <- C, then A under C would close the loop C <- A <- B <- C.
    await referral.register(c, await referral.code(b))
    error = await refused(referral.register(a, code_c), "CYCLE")
    assert a in error.details() and c in error.details()
    # Nothing was written by the refusals.
    path = await referral.stub.GetPathToRoot(api.GetPathToRootRequest(user_id=c))
    assert [s.user_id for s in path.ancestors] == [b, a]


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [("user_id", "", "user_id: is required"), ("code", "O0O0IIII", "code: "), ("code", "", "code: is required")],
)
async def test_bad_register_input_names_the_field(
    referral: ReferralUnderTest, field: str, value: str, problem: str
) -> None:
    request = {"user_id": uid(), "code": "ABCD2345"} | {field: value}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await referral.stub.Register(api.RegisterRequest(**request))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(problem)


async def test_velocity_rules_put_links_under_review_or_refuse(referral: ReferralUnderTest) -> None:
    boss = uid("boss")
    code = await referral.code(boss)
    states = [(await referral.register(uid(), code)).link for _ in range(6)]  # max 5 per hour
    assert [s.state for s in states[:5]] == [api.LINK_STATE_ACTIVE] * 5
    assert states[5].state == api.LINK_STATE_UNDER_REVIEW
    assert states[5].flagged_by == "test-referral/referrer-burst"
    assert "6 registrations" in states[5].flag_reason

    other = await referral.code(uid("x"))
    first = await referral.register(uid(), other, phone_hash="p1")
    assert first.link.state == api.LINK_STATE_ACTIVE
    await refused(referral.register(uid(), other, phone_hash="p1"), "VELOCITY")  # action: refuse

    device = [(await referral.register(uid(), await referral.code(uid("y")), device_hash="dev")).link for _ in range(3)]
    assert [d.state for d in device] == [api.LINK_STATE_ACTIVE, api.LINK_STATE_ACTIVE, api.LINK_STATE_UNDER_REVIEW]
    queue = await referral.stub.ListReviews(api.ListReviewsRequest(page_size=1))
    assert len(queue.links) == 1 and queue.next_page_token
    rest = await referral.stub.ListReviews(api.ListReviewsRequest(page_token=queue.next_page_token))
    flagged = {link.user_id: link.flagged_by for link in [*queue.links, *rest.links]}
    assert flagged == {
        states[5].user_id: "test-referral/referrer-burst",
        device[2].user_id: "test-referral/shared-device",
    }


async def test_hundred_concurrent_registrations_of_one_user_link_once(referral: ReferralUnderTest) -> None:
    user = uid("new")
    owners = [uid("owner") for _ in range(100)]
    codes = await asyncio.gather(*(referral.code(o) for o in owners))
    results = await asyncio.gather(*(referral.register(user, c) for c in codes), return_exceptions=True)
    linked = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(linked) == 1 and len(errors) == 99, [r for r in results if not isinstance(r, grpc.aio.AioRpcError)]
    assert all(e.details().startswith("ALREADY_REFERRED") for e in errors)
    winner = linked[0].link.referrer_id
    stats = await asyncio.gather(
        *(referral.stub.GetSubtreeStats(api.GetSubtreeStatsRequest(user_id=o)) for o in owners)
    )
    assert sorted(s.size for s in stats) == [0] * 99 + [1]
    assert next(s for s in stats if s.size).user_id == winner


async def test_referrals_are_listed_by_when_they_were_linked(referral: ReferralUnderTest) -> None:
    owner, early_code_holder = uid("owner"), uid("x")
    await referral.code(early_code_holder)  # a partner row before any link: its id is the oldest
    code = await referral.code(owner)
    later = [uid("y") for _ in range(3)]
    for user in later:
        await referral.register(user, code)
    await referral.register(early_code_holder, code)
    first = await referral.stub.ListReferrals(api.ListReferralsRequest(user_id=owner, page_size=2))
    rest = await referral.stub.ListReferrals(api.ListReferralsRequest(user_id=owner, page_token=first.next_page_token))
    listed = [link.user_id for link in [*first.links, *rest.links]]
    assert listed == [early_code_holder, *reversed(later)] and not rest.next_page_token


async def test_register_is_not_backdated_past_a_day(referral: ReferralUnderTest) -> None:
    code = await referral.code(uid("owner"))
    old = Timestamp()
    old.FromDatetime(datetime.now(UTC) - timedelta(days=2))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await referral.register(uid(), code, registered_at=old)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("registered_at") and "ImportLinks" in caught.value.details()


async def test_velocity_counts_registrations_stamped_after_this_one(referral: ReferralUnderTest) -> None:
    """Backdating the second account by a minute must not get it past `shared-phone` (max 1)."""
    code = await referral.code(uid("owner"))
    now = datetime.now(UTC)
    stamps = []
    for minutes in (0, 1):
        at = Timestamp()
        at.FromDatetime(now - timedelta(minutes=minutes))
        stamps.append(at)
    assert (await referral.register(uid(), code, phone_hash="p-late", registered_at=stamps[0])).link.state == (
        api.LINK_STATE_ACTIVE
    )
    await refused(referral.register(uid(), code, phone_hash="p-late", registered_at=stamps[1]), "VELOCITY")


async def test_a_retry_after_the_owner_reissued_the_code_is_a_replay(referral: ReferralUnderTest) -> None:
    owner, user = uid("owner"), uid("user")
    code = await referral.code(owner)
    await referral.register(user, code)
    await referral.stub.IssueCode(api.IssueCodeRequest(user_id=owner, reissue=True, idempotency_key="k"))
    again = await referral.register(user, code)
    assert again.replayed and again.link.referrer_id == owner


@pytest.mark.parametrize(
    ("request_fields", "problem"),
    [
        ({"reason": "x" * 300}, "reason: is longer than 256"),
        ({"user_id": "u" * 65}, "user_id: is longer than 64"),
    ],
)
async def test_revoke_code_refuses_overlong_fields(
    referral: ReferralUnderTest, request_fields: dict[str, str], problem: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await referral.stub.RevokeCode(api.RevokeCodeRequest(**({"user_id": uid()} | request_fields)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and caught.value.details().startswith(problem)
