"""The event bus: NATS JetStream, one stream per domain, protobuf messages.

Subjects read `<domain>.v1.<event>`; the stream of a domain is its upper-cased name (`POINTS`
holds `points.v1.>`). Every message carries `Nats-Msg-Id` = the event id, so JetStream stores a
republished event once, and `Alliance-Event` = the protobuf type, so consumers can refuse what they
do not understand.

A service must keep serving when NATS is away: `EventBus.connect()` retries in the background,
writes go to the outbox meanwhile, and `ready` tells when publishing and consuming can start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger("alliance.bus")

EVENT_TYPE_HEADER = "Alliance-Event"
MSG_ID_HEADER = "Nats-Msg-Id"

# Long enough to cover a service restart between publish and marking the outbox row; consumers'
# inboxes dedup anything older.
DUPLICATE_WINDOW_SECONDS = 600


def stream_config(domain: str, *, max_age_days: int = 30) -> StreamConfig:
    """The stream of a domain's events, as its publisher's host creates it."""
    return StreamConfig(
        name=domain.upper(),
        subjects=[f"{domain}.v1.>"],
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        max_age=max_age_days * 86400,
    )


def stream_for(subject: str) -> str:
    return subject.split(".", 1)[0].upper()


class EventBus:
    def __init__(self, servers: str, *, name: str) -> None:
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        self.name = name
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.ready = asyncio.Event()
        self._closing = False

    async def connect(self, *, retry_seconds: float = 1.0) -> None:
        """Connect, retrying until it works or the bus is closed; reconnects are nats.py's job."""
        delay = retry_seconds
        while not self._closing:
            try:
                self.nc = await nats.connect(
                    servers=self.servers,
                    name=self.name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                self.js = self.nc.jetstream(timeout=5)
                log.info("connected to NATS", extra={"servers": self.servers})
                self.ready.set()
                return
            except Exception as error:
                log.warning("NATS not reachable, retrying", extra={"error": repr(error), "in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    async def ensure_stream(self, domain: str, *, max_age_days: int = 30) -> None:
        """Create or update the stream of a domain (idempotent, safe from several replicas)."""
        assert self.js is not None
        config = stream_config(domain, max_age_days=max_age_days)
        try:
            await self.js.add_stream(config)
        except BadRequestError:
            await self.js.update_stream(config)

    async def stream_exists(self, name: str) -> bool:
        assert self.js is not None
        try:
            await self.js.stream_info(name)
            return True
        except NotFoundError:
            return False

    async def publish(
        self,
        subject: str,
        payload: bytes,
        *,
        event_id: str,
        event_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> PubAck:
        assert self.js is not None
        all_headers = {MSG_ID_HEADER: event_id, EVENT_TYPE_HEADER: event_type, **(headers or {})}
        return await self.js.publish(subject, payload, headers=all_headers)

    async def publish_many(self, messages: list[tuple[str, bytes, str, str, Mapping[str, str]]]) -> list[object]:
        """Publish (subject, payload, event_id, event_type, headers) tuples pipelined; returns each
        PubAck or the exception that message met, in order."""
        assert self.js is not None
        futures = []
        for subject, payload, event_id, event_type, headers in messages:
            all_headers = {MSG_ID_HEADER: event_id, EVENT_TYPE_HEADER: event_type, **headers}
            futures.append(await self.js.publish_async(subject, payload, headers=all_headers, wait_stall=5))
        done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout=10)
        return list(done)

    async def close(self) -> None:
        self._closing = True
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.close()
            except Exception as error:
                log.warning("closing NATS failed", extra={"error": repr(error)})

    async def _on_error(self, error: Exception) -> None:
        log.warning("NATS error", extra={"error": repr(error)})

    async def _on_disconnected(self) -> None:
        # nats.py reports our own close() as a disconnect too; only a lost connection is a warning.
        if self._closing:
            log.info("NATS connection closed")
        else:
            log.warning("NATS disconnected")

    async def _on_reconnected(self) -> None:
        log.info("NATS reconnected")
