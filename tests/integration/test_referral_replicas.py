"""Two replicas of the referral service on one database (SQLite and PostgreSQL), and rule files
changed under a running service."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from alliance.v1 import referral_pb2 as api
from services.foundation.nats_server import EmbeddedNats
from tests.integration.conftest import REFERRAL_POLICY, ReferralUnderTest, start_referral


def uid(prefix: str = "u") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def second_replica(
    referral: ReferralUnderTest, database_url: str, nats_server: EmbeddedNats, referral_rules: Path
) -> AsyncIterator[ReferralUnderTest]:
    service = await start_referral(database_url, nats_server.url, referral_rules)
    try:
        yield service
    finally:
        await service.channel.close()
        await service.host.stop()


async def test_opposite_links_on_two_replicas_never_make_a_loop(
    referral: ReferralUnderTest, second_replica: ReferralUnderTest
) -> None:
    """a under b on one replica while b under a on the other, 20 times: each time exactly one
    link is made and the other is refused as a cycle."""
    for _ in range(20):
        a, b = uid("a"), uid("b")
        code_a, code_b = await referral.code(a), await second_replica.code(b)
        results = await asyncio.gather(
            referral.register(a, code_b), second_replica.register(b, code_a), return_exceptions=True
        )
        made = [r for r in results if isinstance(r, api.RegisterResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(made) == 1 and len(refused) == 1, results
        assert refused[0].details().startswith("CYCLE")


async def test_one_user_registered_on_both_replicas_is_linked_once(
    referral: ReferralUnderTest, second_replica: ReferralUnderTest
) -> None:
    user = uid("new")
    codes = [await referral.code(uid("o")) for _ in range(10)]
    calls = [(referral if i % 2 else second_replica).register(user, code) for i, code in enumerate(codes)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert sum(isinstance(r, api.RegisterResponse) for r in results) == 1
    partner = (await second_replica.stub.GetPartner(api.GetPartnerRequest(user_id=user))).partner
    assert partner.link.referrer_id


async def test_a_policy_edit_applies_without_a_restart_and_a_bad_one_is_refused(referral: ReferralUnderTest) -> None:
    policy = referral.rules_dir / "referral" / "policy.yaml"
    policy.write_text(REFERRAL_POLICY.replace("max: 5, within: 1h", "max: 1, within: 1h"))
    await referral.reload_rules()
    code = await referral.code(uid("owner"))
    first, second = await referral.register(uid(), code), await referral.register(uid(), code)
    assert (first.link.state, second.link.state) == (api.LINK_STATE_ACTIVE, api.LINK_STATE_UNDER_REVIEW)

    policy.write_text(REFERRAL_POLICY.replace("max: 5, within: 1h", "max: 0, within: 1h"))  # invalid
    await referral.reload_rules()
    assert referral.host.kit is not None
    [directory] = [d for d, _ in referral.host.kit.declared.rule_directories]
    [error] = directory.last_errors.values()
    assert error.line == 4 and "velocity[0].max" in str(error)
    third = await referral.register(uid(), code)  # the last good version (max 1) still holds
    assert third.link.state == api.LINK_STATE_UNDER_REVIEW
