"""Idempotent commands, the same in every service.

Every write that can be retried carries an idempotency key. The first request under a key stores
its reply with a hash of the *validated* command; a repeat with the same hash gets that reply
back (`replayed` set) and writes nothing; a repeat whose command differs is ALREADY_EXISTS.

The hash is taken over the normalised command, not the raw request, so retries that mean the
same ("50" and "50.00", an id with a trailing space the server trims, NFC and NFD spellings of
one id) are the same request.

A service either keeps replies in its own business rows (points stores them with its ledger
transactions and claims, and calls `replay`), or uses `run_once` with the kit's
`idempotent_reply` table, which every service carries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, LargeBinary
from sqlmodel import Field, Session

from services.foundation.db import UTCDateTime, utcnow
from services.foundation.errors import AlreadyExists
from services.foundation.schema import KitTable

R = TypeVar("R", bound=Message)


class IdempotentReply(KitTable, table=True):
    """The stored reply of one command, by (operation, key)."""

    __tablename__ = "idempotent_reply"

    operation: str = Field(primary_key=True, max_length=64)
    idempotency_key: str = Field(primary_key=True, max_length=128)
    request_hash: str = Field(max_length=64)
    reference: str = Field(max_length=64)  # what the first request made (an id), for messages
    reply: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def command_hash(operation: str, fields: Mapping[str, object] | object) -> str:
    """A stable hash of a validated command: canonical JSON (sorted keys; decimals normalised,
    times as UTC ISO strings), so equal meanings hash alike however the request spelled them."""
    if is_dataclass(fields) and not isinstance(fields, type):
        fields = asdict(fields)
    canonical = json.dumps([operation, fields], sort_keys=True, separators=(",", ":"), default=_canonical)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: object) -> object:
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")  # 50, 50.0 and 50.00 alike
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in a command")
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, frozenset | set):
        return sorted((_canonical_or_same(v) for v in value), key=repr)
    raise TypeError(f"{type(value).__name__} cannot be part of a command hash")


def _canonical_or_same(value: object) -> object:
    try:
        return _canonical(value)
    except TypeError:  # plain JSON values (str, int) are their own canonical form
        return value


def replay(
    *, request_hash: str, stored_hash: str, stored_reply: bytes, reply_type: type[R], what: str, reference: str
) -> R:
    """The stored reply for a repeated key, with `replayed` set; ALREADY_EXISTS if the command
    under that key was a different one. `what` names it for the caller ("earn request")."""
    if stored_hash != request_hash:
        raise AlreadyExists(f"idempotency_key: already used for a different {what} ({reference})")
    reply = reply_type.FromString(stored_reply)
    if "replayed" in reply.DESCRIPTOR.fields_by_name:
        setattr(reply, "replayed", True)  # noqa: B010 - a field of the reply message
    return reply


def run_once(
    session: Session,
    *,
    operation: str,
    key: str,
    request_hash: str,
    reply_type: type[R],
    compute: Callable[[Session], tuple[R, str]],
) -> R:
    """Inside a unit of work: the stored reply for (operation, key), or `compute(session)` (which
    returns the reply and a reference, e.g. the id it created) stored with it. Two racing first
    requests: one inserts, the other's unit fails on the key and is retried by Database.run,
    then replays."""
    stored = session.get(IdempotentReply, (operation, key))
    if stored is not None:
        return replay(
            request_hash=request_hash,
            stored_hash=stored.request_hash,
            stored_reply=stored.reply,
            reply_type=reply_type,
            what=f"{operation} request",
            reference=stored.reference,
        )
    reply, reference = compute(session)
    session.add(
        IdempotentReply(
            operation=operation,
            idempotency_key=key,
            request_hash=request_hash,
            reference=reference,
            reply=reply.SerializeToString(deterministic=True),
        )
    )
    session.flush()
    return reply
