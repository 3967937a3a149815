"""The gRPC face of referral (alliance.v1.ReferralService): validate, run a unit of work, answer."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlmodel import Session, col, select

from alliance.v1 import referral_pb2 as api
from alliance.v1 import referral_pb2_grpc
from services.foundation import validation
from services.foundation.batching import MicroBatcher
from services.foundation.db import Database, utcnow
from services.foundation.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.foundation.idempotency import command_hash, run_once
from services.foundation.ids import ts_fields
from services.referral import codes, conversions, leaderboard, partners, reviews
from services.referral.conversions import ConversionCommand
from services.referral.linking import Outcome, Proposal, link_all
from services.referral.models import (
    Conversion,
    ConversionReward,
    LinkState,
    Partner,
    PartnerCounter,
    PartnerProduct,
)
from services.referral.policy import Policy, PolicyBook
from services.referral.settings import ReferralSettings
from services.referral.tree import path_of_user

KINDS: dict[int, str] = {
    api.USER_KIND_UNSPECIFIED: "customer",
    api.USER_KIND_CUSTOMER: "customer",
    api.USER_KIND_EMPLOYEE: "employee",
}
KIND_ENUM: dict[str, api.UserKind.ValueType] = {"customer": api.USER_KIND_CUSTOMER, "employee": api.USER_KIND_EMPLOYEE}
STATE_ENUM = {
    LinkState.ACTIVE: api.LINK_STATE_ACTIVE,
    LinkState.REVIEW: api.LINK_STATE_UNDER_REVIEW,
    LinkState.REJECTED: api.LINK_STATE_REJECTED,
}
CONVERSION_ENUM = {
    "rewarded": api.CONVERSION_STATE_REWARDED,
    "held": api.CONVERSION_STATE_HELD,
    "unattributed": api.CONVERSION_STATE_UNATTRIBUTED,
    "revoked": api.CONVERSION_STATE_REVOKED,
}
PERIOD_NAMES = {
    api.PERIOD_UNSPECIFIED: "month",
    api.PERIOD_DAY: "day",
    api.PERIOD_WEEK: "week",
    api.PERIOD_MONTH: "month",
    api.PERIOD_YEAR: "year",
    api.PERIOD_ALL: "all",
}
MAX_HASH = 128
MAX_REFUSALS_LISTED = 1000
MAX_PATH = 10_000


def kind_of(value: int, name: str = "kind") -> str:
    if value not in KINDS:
        raise InvalidArgument(name, f"unknown user kind {value}")
    return KINDS[value]


REGISTER_BACKDATE = timedelta(days=1)


def registered_at(request: api.RegisterRequest, now: datetime) -> datetime:
    """When the user registered: now by default. A day back at most: velocity rules count by this
    time, and older history is what ImportLinks is for."""
    when = validation.timestamp(
        request.registered_at,
        "registered_at",
        present=request.HasField("registered_at"),
        now=now,
        required=False,
        future=False,
    )
    if when < now - REGISTER_BACKDATE:
        raise InvalidArgument("registered_at", "is more than a day ago; import older links with ImportLinks")
    return when


def bounded_text(value: str, name: str, max_len: int) -> str:
    """Optional free text: trimmed; too long is refused (a cut-off audit note would mislead)."""
    value = value.strip()
    if len(value) > max_len:
        raise InvalidArgument(name, f"is longer than {max_len} characters")
    return value


def optional_text(value: str, name: str, max_len: int = MAX_HASH) -> str | None:
    return validation.required_text(value, name, max_len) if value.strip() else None


def code_of(value: str, name: str = "code") -> str:
    code = codes.normalize(validation.required_text(value, name, 32))
    if not codes.is_well_formed(code):
        hint = codes.looks_like(code)
        raise InvalidArgument(
            name, f"{value.strip()!r} is not a referral code ({hint or f'{codes.LENGTH} letters and digits'})"
        )
    return code


def link_message(partner: Partner) -> api.Link:
    return api.Link(
        user_id=partner.user_id,
        referrer_id=partner.linked_referrer_id or "",
        state=STATE_ENUM.get(partner.link_state, api.LINK_STATE_UNSPECIFIED),
        code=partner.link_code or "",
        flagged_by=partner.flagged_by or "",
        flag_reason=partner.flag_reason or "",
        linked_at=ts_fields(partner.linked_at),
        source=partner.link_source or "",
        reviewed_at=ts_fields(partner.reviewed_at),
        reviewed_by=partner.reviewed_by or "",
        review_note=partner.review_note or "",
    )


def link_page(found: Sequence[Partner], size: int) -> tuple[list[api.Link], str]:
    """A page of links read with one row more than `size`, and the token of the next page."""
    more = len(found) > size
    return [link_message(p) for p in found[:size]], validation.page_token(found[size - 1].link_seq if more else None)


def conversion_message(conversion: Conversion, rewards: list[ConversionReward]) -> api.Conversion:
    return api.Conversion(
        conversion_id=conversion.id,
        business_ref=conversion.business_ref,
        user_id=conversion.user_id,
        product=conversion.product,
        state=CONVERSION_ENUM[conversion.state],
        rewards=[
            api.Reward(referrer_id=r.referrer_id, level=r.level, event_id=r.event_id) for r in rewards if not r.revoked
        ],
        occurred_at=ts_fields(conversion.occurred_at),
    )


def conversion_command(request: api.RecordConversionRequest, now: datetime) -> ConversionCommand:
    return ConversionCommand(
        business_ref=validation.required_text(request.business_ref, "business_ref", validation.MAX_KEY),
        user_id=validation.required_text(request.user_id, "user_id"),
        product=validation.required_text(request.product, "product"),
        occurred_at=validation.timestamp(
            request.occurred_at,
            "occurred_at",
            present=request.HasField("occurred_at"),
            now=now,
            required=False,
            future=False,
        ),
        attributes=attributes(request.attributes),
    )


def attributes(raw: Any) -> dict[str, str]:
    return validation.attributes(raw, reserved=conversions.RESERVED_ATTRIBUTES)


class ReferralServicer(referral_pb2_grpc.ReferralServiceServicer):
    def __init__(self, db: Database, book: PolicyBook, settings: ReferralSettings) -> None:
        self.db = db
        self.book = book
        self.settings = settings
        # Concurrent registrations share one unit of work (and one update of their common
        # ancestors): a single SQLite writer keeps up, and PostgreSQL takes the link lock once.
        self.registrations: MicroBatcher[Proposal, api.RegisterResponse] = MicroBatcher(
            self._register_batch, name="register"
        )

    async def _register_batch(self, proposals: Sequence[Proposal]) -> Sequence[api.RegisterResponse | DomainError]:
        policy = self.book.policy
        return await self.db.run(lambda s: register_many(s, proposals, policy))

    # -- codes -----------------------------------------------------------------------------

    async def IssueCode(
        self, request: api.IssueCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.IssueCodeResponse:
        user_id = validation.required_text(request.user_id, "user_id")
        kind = kind_of(request.kind) if request.kind != api.USER_KIND_UNSPECIFIED else None
        formats = set(request.qr_images)
        if formats - {api.QR_FORMAT_SVG, api.QR_FORMAT_PNG}:
            raise InvalidArgument("qr_images", "only QR_FORMAT_SVG and QR_FORMAT_PNG")

        def issue(session: Session) -> api.IssueCodeResponse:
            found = partners.issue_code(session, user_id, kind, reissue=False)
            return api.IssueCodeResponse(
                code=found.code.code, user_id=user_id, issued_at=ts_fields(found.code.issued_at), issued=found.issued
            )

        if request.reissue:
            key = validation.required_text(request.idempotency_key, "idempotency_key", validation.MAX_KEY)
            request_hash = command_hash("reissue_code", {"user_id": user_id})

            def reissue(session: Session) -> api.IssueCodeResponse:
                def compute(s: Session) -> tuple[api.IssueCodeResponse, str]:
                    found = partners.issue_code(s, user_id, kind, reissue=True)
                    reply = api.IssueCodeResponse(
                        code=found.code.code, user_id=user_id, issued_at=ts_fields(found.code.issued_at), issued=True
                    )
                    return reply, found.code.code

                return run_once(
                    session,
                    operation="reissue_code",
                    key=hashlib.sha256(f"{user_id}\0{key}".encode()).hexdigest(),  # keys are per user
                    request_hash=request_hash,
                    reply_type=api.IssueCodeResponse,
                    compute=compute,
                )

            reply = await self.db.run(reissue)
        else:
            reply = await self.db.run(issue)
        reply.qr_payload = codes.qr_payload(self.settings.qr_url_template, reply.code)
        if api.QR_FORMAT_SVG in formats:
            reply.qr_svg = codes.qr_svg(reply.qr_payload)
        if api.QR_FORMAT_PNG in formats:
            reply.qr_png = codes.qr_png(reply.qr_payload)
        return reply

    async def RevokeCode(
        self, request: api.RevokeCodeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.RevokeCodeResponse:
        user_id = validation.required_text(request.user_id, "user_id")
        reason = bounded_text(request.reason, "reason", 256)
        revoked = await self.db.run(lambda s: partners.revoke_code(s, user_id, reason))
        return api.RevokeCodeResponse(revoked_code=revoked or "")

    # -- links -----------------------------------------------------------------------------

    async def Register(
        self, request: api.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.RegisterResponse:
        now = utcnow()
        proposal = Proposal(
            user_id=validation.required_text(request.user_id, "user_id"),
            kind=kind_of(request.kind),
            code=code_of(request.code),
            linked_at=registered_at(request, now),
            source="register",
            device_hash=optional_text(request.device_hash, "device_hash"),
            phone_hash=optional_text(request.phone_hash, "phone_hash"),
        )
        return await self.registrations.submit(proposal)

    async def ImportLinks(
        self, request_iterator: AsyncIterator[api.ImportLinksRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ImportLinksResponse:
        header: api.ImportHeader | None = None
        received: list[api.ImportedLink] = []
        async for part in request_iterator:
            if part.HasField("header"):
                if header is not None:
                    raise InvalidArgument("header", "only the first message may be a header")
                header = part.header
            elif header is None:
                raise InvalidArgument("header", "the first message must be the header (batch_id)")
            else:
                received.extend(part.links.links)
                if len(received) > self.settings.import_batch_max:
                    raise InvalidArgument(
                        "links", f"a batch holds at most {self.settings.import_batch_max} links; split the file"
                    )
        if header is None:
            raise InvalidArgument("header", "is required (batch_id)")
        batch_id = validation.required_text(header.batch_id, "batch_id", validation.MAX_ID)
        origin = bounded_text(header.source, "source", 64)
        source = (f"import:{origin}/{batch_id}" if origin else f"import:{batch_id}")[:160]
        now = utcnow()
        proposals: list[Proposal | None] = []
        refusals: list[api.ImportRefusal] = []
        for index, link in enumerate(received):
            try:
                proposals.append(self._imported(link, source, now))
            except InvalidArgument as problem:
                proposals.append(None)
                refusals.append(
                    api.ImportRefusal(
                        index=index,
                        user_id=link.user_id,
                        referrer_id=link.referrer_id,
                        reason=api.REFUSAL_REASON_INVALID,
                        message=f"links[{index}].{problem.message}",
                    )
                )
        content = hashlib.sha256(api.ImportChunk(links=received).SerializeToString(deterministic=True)).hexdigest()
        # The links are the batch; `source` only labels it (a re-run that names it otherwise is a replay).
        request_hash = command_hash("import_links", {"links": content})
        policy = self.book.policy

        def run(session: Session) -> api.ImportLinksResponse:
            def compute(s: Session) -> tuple[api.ImportLinksResponse, str]:
                valid = [(i, p) for i, p in enumerate(proposals) if p is not None]
                outcomes = link_all(s, [p for _, p in valid], policy)
                report = api.ImportLinksResponse(batch_id=batch_id, received=len(received))
                report.refusals.extend(refusals)
                for (index, _), outcome in zip(valid, outcomes, strict=True):
                    _count(report, index, outcome)
                report.refusals.sort(key=lambda r: r.index)
                report.refused = len(report.refusals)
                for refusal in report.refusals:
                    report.refused_by_reason[api.RefusalReason.Name(refusal.reason)] += 1
                # The first ones in detail: a report stays within a client's default 4 MB message.
                del report.refusals[MAX_REFUSALS_LISTED:]
                return report, batch_id

            return run_once(
                session,
                operation="import_links",
                key=batch_id,
                request_hash=request_hash,
                reply_type=api.ImportLinksResponse,
                compute=compute,
            )

        return await self.db.run(run)

    def _imported(self, link: api.ImportedLink, source: str, now: datetime) -> Proposal:
        return Proposal(
            user_id=validation.required_text(link.user_id, "user_id"),
            kind=kind_of(link.kind),
            referrer_id=optional_text(link.referrer_id, "referrer_id", validation.MAX_ID),
            code=code_of(link.code) if link.code.strip() else None,
            referrer_kind=kind_of(link.referrer_kind, "referrer_kind"),
            linked_at=validation.timestamp(
                link.linked_at, "linked_at", present=link.HasField("linked_at"), now=now, future=False
            ),
            source=source,
            device_hash=optional_text(link.device_hash, "device_hash"),
            phone_hash=optional_text(link.phone_hash, "phone_hash"),
        )

    # -- conversions and reviews -----------------------------------------------------------

    async def RecordConversion(
        self, request: api.RecordConversionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.RecordConversionResponse:
        cmd = conversion_command(request, utcnow())
        policy = self.book.policy

        def run(session: Session) -> api.RecordConversionResponse:
            done = conversions.record(session, cmd, policy, source="api")
            return api.RecordConversionResponse(
                conversion=conversion_message(done.conversion, done.rewards), replayed=done.replayed
            )

        return await self.db.run(run)

    async def ListReviews(
        self, request: api.ListReviewsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListReviewsResponse:
        size = validation.page_size(request.page_size)
        after = validation.page_position(request.page_token)

        def run(session: Session) -> api.ListReviewsResponse:
            query = select(Partner).where(Partner.link_state == LinkState.REVIEW)
            if after is not None:
                query = query.where(col(Partner.link_seq) > after)
            links, token = link_page(session.exec(query.order_by(col(Partner.link_seq)).limit(size + 1)).all(), size)
            return api.ListReviewsResponse(links=links, next_page_token=token)

        return await self.db.read(run)

    async def ReviewLink(
        self, request: api.ReviewLinkRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ReviewLinkResponse:
        user_id = validation.required_text(request.user_id, "user_id")
        reviewer = validation.required_text(request.reviewer, "reviewer")
        note = bounded_text(request.note, "note", 512)
        if request.decision not in (api.REVIEW_DECISION_APPROVE, api.REVIEW_DECISION_REJECT):
            raise InvalidArgument("decision", "must be REVIEW_DECISION_APPROVE or REVIEW_DECISION_REJECT")
        decide = reviews.approve if request.decision == api.REVIEW_DECISION_APPROVE else reviews.reject
        policy = self.book.policy

        def run(session: Session) -> api.ReviewLinkResponse:
            done = decide(session, user_id, reviewer, note, policy)
            return api.ReviewLinkResponse(
                link=link_message(done.partner),
                conversions_released=done.released,
                conversions_revoked=done.revoked,
                replayed=done.replayed,
            )

        return await self.db.run(run)

    # -- the tree --------------------------------------------------------------------------

    async def GetPartner(
        self, request: api.GetPartnerRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetPartnerResponse:
        user_id = validation.required_text(request.user_id, "user_id")

        def run(session: Session) -> api.GetPartnerResponse:
            partner, counters = _partner_and_counters(session, user_id)
            message = api.Partner(
                user_id=partner.user_id,
                kind=KIND_ENUM.get(partner.kind, api.USER_KIND_CUSTOMER),
                code=partner.code or "",
                direct_referrals=counters.direct,
                descendants=counters.descendants,
                created_at=ts_fields(partner.created_at),
            )
            if partner.link_state != LinkState.NONE:
                message.link.CopyFrom(link_message(partner))
            return api.GetPartnerResponse(partner=message)

        return await self.db.read(run)

    async def ListReferrals(
        self, request: api.ListReferralsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.ListReferralsResponse:
        user_id = validation.required_text(request.user_id, "user_id")
        size = validation.page_size(request.page_size)
        before = validation.page_position(request.page_token)

        def run(session: Session) -> api.ListReferralsResponse:
            partner = _partner(session, user_id)
            query = select(Partner).where(Partner.referrer == partner.id)
            if before is not None:
                query = query.where(col(Partner.link_seq) < before)
            links, token = link_page(
                session.exec(query.order_by(col(Partner.link_seq).desc()).limit(size + 1)).all(), size
            )
            return api.ListReferralsResponse(links=links, next_page_token=token)

        return await self.db.read(run)

    async def GetPathToRoot(
        self, request: api.GetPathToRootRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetPathToRootResponse:
        user_id = validation.required_text(request.user_id, "user_id")
        if not 0 <= request.max_levels <= MAX_PATH:
            raise InvalidArgument("max_levels", f"must be between 0 and {MAX_PATH} (0: 100)")
        limit = request.max_levels or 100

        def run(session: Session) -> api.GetPathToRootResponse:
            rows = path_of_user(session, user_id, limit=limit + 1)
            if not rows:
                _partner(session, user_id)  # NOT_FOUND for an unknown user; a root has an empty path
            steps = [
                api.PathStep(
                    user_id=step_user,
                    kind=KIND_ENUM.get(kind, api.USER_KIND_CUSTOMER),
                    level=level,
                    link_state=STATE_ENUM.get(below_state, api.LINK_STATE_UNSPECIFIED),
                )
                for step_user, kind, level, below_state in rows
            ]
            return api.GetPathToRootResponse(ancestors=steps[:limit], truncated=len(steps) > limit)

        return await self.db.read(run)

    async def GetSubtreeStats(
        self, request: api.GetSubtreeStatsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetSubtreeStatsResponse:
        user_id = validation.required_text(request.user_id, "user_id")

        def run(session: Session) -> api.GetSubtreeStatsResponse:
            partner, counters = _partner_and_counters(session, user_id)
            products = session.exec(
                select(PartnerProduct)
                .where(PartnerProduct.partner == partner.id, col(PartnerProduct.below) > 0)
                .order_by(col(PartnerProduct.product))
            ).all()
            return api.GetSubtreeStatsResponse(
                user_id=partner.user_id,
                size=counters.descendants,
                direct=counters.direct,
                depth=counters.height,
                conversions=[api.ProductCount(product=p.product, conversions=p.below) for p in products],
                referral_points=counters.points_own,
                subtree_referral_points=counters.points_below,
            )

        return await self.db.read(run)

    async def GetLeaderboard(
        self, request: api.GetLeaderboardRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> api.GetLeaderboardResponse:
        if request.period not in PERIOD_NAMES:
            raise InvalidArgument("period", f"unknown period {request.period}")
        if not 0 <= request.top <= 100:
            raise InvalidArgument("top", "must be between 0 and 100 (0: 10)")
        policy = self.book.policy
        now = utcnow()
        at = validation.timestamp(request.at, "at", present=request.HasField("at"), now=now, required=False)
        campaign = request.campaign.strip()
        if campaign and campaign not in {c.id for c in policy.campaigns}:
            raise InvalidArgument("campaign", f"no referral campaign {campaign} in the rules in force")
        key = leaderboard.period_key(PERIOD_NAMES[request.period], at, policy.timezone)
        kind = kind_of(request.kind)
        top = request.top or 10

        def run(session: Session) -> api.GetLeaderboardResponse:
            entries = leaderboard.top(session, key=key, campaign=campaign, kind=kind, n=top)
            return api.GetLeaderboardResponse(
                period_key=key,
                entries=[api.LeaderboardEntry(rank=r, user_id=u, conversions=c) for r, u, c in entries],
            )

        return await self.db.read(run)


def register_many(
    session: Session, proposals: Sequence[Proposal], policy: Policy
) -> list[api.RegisterResponse | DomainError]:
    """Register's unit of work for a batch of calls: each gets its link, or its refusal."""
    outcomes = link_all(session, proposals, policy)
    replayed = [o.user_id for o in outcomes if o.state == "already"]
    stored = (
        {p.user_id: p for p in session.exec(select(Partner).where(col(Partner.user_id).in_(replayed)))}
        if replayed
        else {}
    )
    replies: list[api.RegisterResponse | DomainError] = []
    for proposal, outcome in zip(proposals, outcomes, strict=True):
        if outcome.state == "refused":
            replies.append(FailedPrecondition(f"{outcome.reason}: {outcome.message}"))
        elif outcome.state == "already":
            replies.append(api.RegisterResponse(link=link_message(stored[outcome.user_id]), replayed=True))
        else:
            link = api.Link(
                user_id=proposal.user_id,
                referrer_id=outcome.referrer_id or "",
                state=STATE_ENUM[outcome.state],
                code=proposal.code or "",
                flagged_by=outcome.flagged_by or "",
                flag_reason=outcome.flag_reason or "",
                linked_at=ts_fields(proposal.linked_at),
                source=proposal.source,
            )
            replies.append(api.RegisterResponse(link=link))
    return replies


def _partner_and_counters(session: Session, user_id: str) -> tuple[Partner, PartnerCounter]:
    found = session.exec(
        select(Partner, PartnerCounter)
        .join(PartnerCounter, col(PartnerCounter.id) == Partner.id)
        .where(Partner.user_id == user_id)
    ).first()
    if found is None:
        raise NotFound(f"user_id: no partner {user_id}")
    return found


def _partner(session: Session, user_id: str) -> Partner:
    partner = session.exec(select(Partner).where(Partner.user_id == user_id)).first()
    if partner is None:
        raise NotFound(f"user_id: no partner {user_id}")
    return partner


def _count(report: api.ImportLinksResponse, index: int, outcome: Outcome) -> None:
    if outcome.state == LinkState.ACTIVE:
        report.linked += 1
    elif outcome.state == LinkState.REVIEW:
        report.under_review += 1
    elif outcome.state == "already":
        report.already_linked += 1
    else:
        report.refusals.append(
            api.ImportRefusal(
                index=index,
                user_id=outcome.user_id,
                referrer_id=outcome.referrer_id or "",
                reason=api.RefusalReason.Value(f"REFUSAL_REASON_{outcome.reason}"),
                message=outcome.message,
            )
        )
