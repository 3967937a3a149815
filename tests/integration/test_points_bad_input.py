"""Every RPC given bad input answers with a clear status naming the field, and writes nothing."""

from __future__ import annotations

import grpc
import pytest

from alliance.v1 import points_pb2 as api
from services.points import ledger
from tests.support import PointsUnderTest, earn_request, redeem_request, reverse_request

CASES = [
    ("Earn", lambda u: api.EarnRequest(user_id=u), grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key"),
    ("Earn", lambda u: earn_request(u, amount="-3"), grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ("Earn", lambda u: earn_request(u, event_type="Bad Type"), grpc.StatusCode.INVALID_ARGUMENT, "event_type"),
    ("Earn", lambda u: earn_request(u, amount="1e999999"), grpc.StatusCode.INVALID_ARGUMENT, "amount"),
    ("Redeem", lambda u: redeem_request(u, 0), grpc.StatusCode.INVALID_ARGUMENT, "points"),
    ("Redeem", lambda u: redeem_request(u, -5), grpc.StatusCode.INVALID_ARGUMENT, "points"),
    (
        "Redeem",
        lambda u: api.RedeemRequest(idempotency_key="k", user_id=u, points=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "order_id",
    ),
    ("Redeem", lambda u: redeem_request(u, 10), grpc.StatusCode.FAILED_PRECONDITION, "balance"),
    ("Reverse", lambda u: reverse_request(""), grpc.StatusCode.INVALID_ARGUMENT, "transaction_id"),
    ("Reverse", lambda u: reverse_request("f" * 32, points=-1), grpc.StatusCode.INVALID_ARGUMENT, "points"),
    (
        "Reverse",
        lambda u: api.ReverseRequest(idempotency_key="k", transaction_id="f" * 32),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reason",
    ),
    ("Reverse", lambda u: reverse_request("f" * 32), grpc.StatusCode.NOT_FOUND, "transaction_id"),
    ("GetBalance", lambda u: api.GetBalanceRequest(), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
    (
        "ListLedger",
        lambda u: api.ListLedgerRequest(user_id=u, page_size=-1),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_size",
    ),
    (
        "ListLedger",
        lambda u: api.ListLedgerRequest(user_id=u, page_token="zzz"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "page_token",
    ),
]


@pytest.mark.parametrize(("method", "build", "code", "field"), CASES)
async def test_bad_input_gets_a_clear_status(  # type: ignore[no-untyped-def]
    points: PointsUnderTest, user: str, method: str, build, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(points.stub, method)(build(user))
    assert caught.value.code() == code
    assert field in caught.value.details()
    assert await points.host.db.run(lambda s: ledger.ledger_sum(s, user)) == 0
