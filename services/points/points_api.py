"""The gRPC face of points (alliance.v1.Points): validate, evaluate the campaigns, run a ledger unit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from alliance.v1 import points_pb2 as api
from alliance.v1 import points_pb2_grpc
from services.foundation import validation
from services.foundation.batching import MicroBatcher
from services.foundation.db import Database, utcnow
from services.foundation.errors import DomainError, InvalidArgument
from services.points import commands, ledger
from services.points.campaigns.book import CampaignBook
from services.points.commands import EarnCommand, LedgerPage, RedeemCommand, ReverseCommand
from services.points.earn_batch import EarnItem, earn_many
from services.points.spend_multipliers import SpendMultipliers


def earn_command(request: api.EarnRequest) -> EarnCommand:
    return EarnCommand(
        idempotency_key=validation.required_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY),
        user_id=validation.required_text(request.user_id, "user_id"),
        event_type=commands.event_type(request.event_type),
        occurred_at=validation.timestamp(
            request.occurred_at, "occurred_at", present=request.HasField("occurred_at"), now=utcnow(), future=False
        ),
        amount=validation.amount(request.amount),
        attributes=commands.attributes(request.attributes),
    )


class PointsServicer(points_pb2_grpc.PointsServicer):
    def __init__(
        self,
        db: Database,
        book: CampaignBook,
        multipliers: SpendMultipliers | None = None,
    ) -> None:
        self.db = db
        self.book = book
        self.multipliers = multipliers
        self.earns: MicroBatcher[EarnItem, api.EarnResponse] = MicroBatcher(self._earn_batch, name="earn")

    async def _earn_batch(self, items: Sequence[EarnItem]) -> Sequence[api.EarnResponse | DomainError]:
        return await self.db.run(lambda s: earn_many(s, items))

    async def Earn(self, request: api.EarnRequest, context: grpc.aio.ServicerContext[Any, Any]) -> api.EarnResponse:
        cmd = earn_command(request)
        candidates = self.book.candidates(cmd.event)
        if self.multipliers is not None:
            candidates = await self.multipliers.apply(cmd, candidates)
        return await self.earns.submit(EarnItem(cmd, candidates))

    async def Redeem(
        self, request: api.RedeemRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.RedeemResponse:
        cmd = RedeemCommand(
            idempotency_key=validation.required_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY),
            user_id=validation.required_text(request.user_id, "user_id"),
            points=commands.positive_points(request.points),
            order_id=validation.required_text(request.order_id, "order_id", 128),
            description=request.description.strip()[:512],
        )
        return await self.db.run(lambda s: ledger.redeem(s, cmd))

    async def Reverse(
        self, request: api.ReverseRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ReverseResponse:
        if request.points < 0:
            raise InvalidArgument("points", "must not be negative (0 reverses everything left)")
        cmd = ReverseCommand(
            idempotency_key=validation.required_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY),
            transaction_id=validation.required_text(request.transaction_id, "transaction_id", 32),
            points=request.points,
            reason=validation.required_text(request.reason, "reason", 512),
            allow_partial=request.allow_partial,
        )
        return await self.db.run(lambda s: ledger.reverse(s, cmd))

    async def GetBalance(
        self, request: api.GetBalanceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.Balance:
        user_id = validation.required_text(request.user_id, "user_id")
        now = utcnow()
        return await self.db.run(lambda s: ledger.balance(s, user_id, now))

    async def ListLedger(
        self, request: api.ListLedgerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListLedgerResponse:
        page = LedgerPage(
            user_id=validation.required_text(request.user_id, "user_id"),
            page_size=validation.page_size(request.page_size),
            before_id=validation.page_position(request.page_token),
        )
        result = await self.db.run(lambda s: ledger.list_entries(s, page))
        return api.ListLedgerResponse(
            entries=[ledger.entry_to_api(e) for e in result.entries],
            next_page_token=validation.page_token(result.next_before_id),
        )
