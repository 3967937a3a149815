"""Broadcast subscriptions: every replica sees every event of a subject.

`EventConsumer` (inbox.py) shares a durable consumer between replicas, so each event is applied by
one of them. Server streams ("push new orders to managers' apps") need the opposite: each replica
has its own clients, so each must see every event. A `Broadcast` gives every replica its own
JetStream *ordered consumer* and fans each event out to the listeners in this process (one per open
server stream, say).

Why an ordered consumer and not a core NATS subscription: core NATS delivers at most once to whoever
is connected at that moment, so events published while this replica reconnects are simply gone and
its clients never learn of them. An ordered consumer (nats.py `ordered_consumer=True`: ephemeral,
in memory, no acks, flow control, idle heartbeats) reads the stream, which keeps the events; nats.py
tracks the last stream sequence it delivered and, when it sees a gap in the consumer sequence or
misses two heartbeats (a reconnect, a restarted server that lost the consumer), recreates the
consumer from that sequence + 1. A reconnect therefore resumes where it left off, in order, without
gaps (as long as the stream still holds the events), and no ack traffic is spent.

One trap, measured with nats.py 2.16: before the first message arrives its resume point is 0, so a
reset then (NATS restarted while the subject was quiet) replays the whole stream from sequence 1:
30 days of history to every listener. We start the consumer at an explicit sequence (the stream's
last + 1, which is what `DeliverPolicy.NEW` means, made exact), seed nats.py's resume point with it,
and also drop anything at or below the last sequence we fanned out, so a replay can never reach a
listener whatever the client library does.

Listeners are bounded queues. A listener that falls behind by `max_pending` events is dropped with
a reason rather than blocking the others or growing memory: its client reconnects and re-reads the
current state, which it needs anyway after missing events. `close()` ends every listener at once;
the host calls it before `server.stop(grace)`, so open server streams end with UNAVAILABLE in
milliseconds instead of holding the whole grace period.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from prometheus_client import Counter

from services.foundation.bus import EVENT_TYPE_HEADER, EventBus, stream_for
from services.foundation.stopping import sleep_or_stop, wait_or_stop

log = logging.getLogger("alliance.broadcast")

SKIPPED = Counter("alliance_broadcast_skipped_total", "broadcast events not fanned out", ["subject", "reason"])
DROPPED = Counter("alliance_broadcast_listeners_dropped_total", "listeners dropped for falling behind", ["subject"])

SHUTTING_DOWN = "server shutting down; reconnect to another replica"

M = TypeVar("M", bound=Message)


class ListenerDropped(Exception):
    """This listener fell behind and missed events: reconnect and re-read the current state."""


class Listener(Generic[M]):
    """One reader's bounded queue. Iterate it: it yields events, ends when the broadcast closes, and
    raises `ListenerDropped` if it fell behind (a silent end would hide the gap)."""

    def __init__(self, max_pending: int) -> None:
        # None marks the end; it is put back once read so every later read ends too.
        self._queue: asyncio.Queue[M | None] = asyncio.Queue(maxsize=max_pending)
        self.end_reason: str | None = None
        self.dropped = False

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def _offer(self, event: M) -> bool:
        try:
            self._queue.put_nowait(event)
            return True
        except asyncio.QueueFull:
            return False

    def _end(self, reason: str, *, dropped: bool) -> None:
        if self.end_reason is not None:
            return
        self.end_reason = reason
        self.dropped = dropped
        # Pending events are discarded: the end must not wait behind a full queue, and a client
        # that reconnects re-reads the state those events would have changed.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    def __aiter__(self) -> Listener[M]:
        return self

    async def __anext__(self) -> M:
        event = await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)
            if self.dropped:
                raise ListenerDropped(self.end_reason)
            raise StopAsyncIteration
        return event


class Broadcast(Generic[M]):
    """Every event of `subject` (decoded as `message_type`) to every listener of this replica.

    Run `run(stop)` as a background loop; it subscribes once the bus is ready and the subject's
    stream exists (its producer creates it). Listeners see events published after the subscription
    started and after they joined; there is no replay of history (clients read a snapshot first).
    """

    def __init__(
        self,
        bus: EventBus,
        subject: str,
        message_type: type[M],
        *,
        max_pending: int = 256,
        idle_heartbeat_seconds: float = 2.0,
    ) -> None:
        self.bus = bus
        self.subject = subject
        self.stream_name = stream_for(subject)
        self.message_type = message_type
        self.max_pending = max_pending
        # nats.py recreates a lost consumer after two missed heartbeats: 2 s makes that ~4 s.
        self.idle_heartbeat_seconds = idle_heartbeat_seconds
        self.subscribed = asyncio.Event()  # set while the subscription is live (tests, readiness)
        self._listeners: set[Listener[M]] = set()
        self._closed = False
        self._last_sequence = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def listener_count(self) -> int:
        return len(self._listeners)

    async def run(self, stop: asyncio.Event) -> None:
        await wait_or_stop(self.bus.ready.wait(), stop)
        subscription: JetStreamContext.PushSubscription | None = None
        while subscription is None and not stop.is_set():
            try:
                subscription = await self._subscribe(stop)
            except Exception as error:
                log.warning(
                    "broadcast subscribe failed, retrying", extra={"subject": self.subject, "error": repr(error)}
                )
                await sleep_or_stop(stop, 1.0)
        if subscription is None:
            return
        self.subscribed.set()
        try:
            await stop.wait()
        finally:
            self.subscribed.clear()
            # Unsubscribing also cancels nats.py's heartbeat and flow-control tasks; the server
            # deletes the ephemeral consumer once it has no interest.
            try:
                await subscription.unsubscribe()
            except Exception as error:
                log.debug("unsubscribe failed", extra={"subject": self.subject, "error": repr(error)})

    async def _subscribe(self, stop: asyncio.Event) -> JetStreamContext.PushSubscription | None:
        js = self.bus.js
        assert js is not None
        waiting_logged = False
        while not stop.is_set():
            try:
                info = await js.stream_info(self.stream_name)
            except NotFoundError:
                if not waiting_logged:  # its producer may not be deployed yet: say so once
                    log.info("waiting for stream", extra={"stream": self.stream_name, "subject": self.subject})
                    waiting_logged = True
                await sleep_or_stop(stop, 2.0)
                continue
            start = info.state.last_seq + 1
            self._last_sequence = max(self._last_sequence, start - 1)
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
            subscription = await js.subscribe(
                self.subject,
                stream=self.stream_name,
                cb=self._on_message,
                ordered_consumer=True,
                idle_heartbeat=self.idle_heartbeat_seconds,
                config=config,
            )
            _seed_resume_point(subscription, start - 1)
            log.info("broadcast subscribed", extra={"subject": self.subject, "from_sequence": start})
            return subscription
        return None

    async def _on_message(self, msg: Msg) -> None:
        # nats.py calls this for one message at a time, in stream order.
        sequence = msg.metadata.sequence.stream
        if sequence <= self._last_sequence:
            SKIPPED.labels(self.subject, "replayed").inc()  # a consumer reset re-sent it: seen already
            return
        self._last_sequence = sequence
        expected = self.message_type.DESCRIPTOR.full_name
        event_type = (msg.headers or {}).get(EVENT_TYPE_HEADER, expected)
        if event_type != expected:
            self._skip(msg, "wrong_type", f"{EVENT_TYPE_HEADER} is {event_type}, expected {expected}")
            return
        try:
            event = self.message_type.FromString(msg.data)
        except DecodeError as error:
            self._skip(msg, "undecodable", f"payload is not a valid {expected}: {error}")
            return
        self._fan_out(event)

    def _skip(self, msg: Msg, reason: str, detail: str) -> None:
        # Nothing to park: a broadcast has no durable state, and the event's own consumers (inbox)
        # park it where it matters.
        log.warning(
            "broadcast event skipped",
            extra={"subject": msg.subject, "sequence": msg.metadata.sequence.stream, "reason": detail},
        )
        SKIPPED.labels(self.subject, reason).inc()

    def _fan_out(self, event: M) -> None:
        for listener in list(self._listeners):
            if not listener._offer(event):
                self._listeners.discard(listener)
                reason = (
                    f"fell behind: {self.max_pending} events of {self.subject} pending; "
                    "reconnect and re-read the current state"
                )
                listener._end(reason, dropped=True)
                DROPPED.labels(self.subject).inc()
                log.warning("broadcast listener dropped", extra={"subject": self.subject, "reason": reason})

    @asynccontextmanager
    async def listen(self) -> AsyncIterator[Listener[M]]:
        """A listener for as long as the block runs: `async with b.listen() as events: async for e
        in events: ...`. Joining after close() gives a listener that has already ended."""
        listener: Listener[M] = Listener(self.max_pending)
        if self._closed:
            listener._end(SHUTTING_DOWN, dropped=False)
        else:
            self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    async def stream(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncGenerator[M, None]:
        """Events for a gRPC server stream: `async for e in broadcast.stream(context): yield ...`.

        Ends the call with UNAVAILABLE (reconnect to another replica) when the broadcast closes at
        shutdown, and with ABORTED (reconnect and re-read the state) if the client fell behind. A
        client that hangs up cancels the generator, which removes its listener.
        """
        async with self.listen() as listener:
            try:
                async for event in listener:
                    yield event
            except ListenerDropped as dropped:
                await context.abort(grpc.StatusCode.ABORTED, str(dropped))
        await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN)

    def close(self) -> None:
        """End every listener now (idempotent). Call before `server.stop(grace)`."""
        self._closed = True
        for listener in list(self._listeners):
            listener._end(SHUTTING_DOWN, dropped=False)
        self._listeners.clear()


def _seed_resume_point(subscription: JetStreamContext.PushSubscription, sequence: int) -> None:
    """Make nats.py resume after `sequence`, not from 1, if it resets before the first message.

    This touches nats.py's private ordered-consumer state (`_jsi._sseq`, 2.16). If a future version
    renames it, nothing breaks here: the sequence check in `_on_message` still keeps the replay
    from listeners, at the cost of its traffic."""
    jsi = getattr(getattr(subscription, "_sub", None), "_jsi", None)
    if jsi is not None and getattr(jsi, "_sseq", None) == 0:
        jsi._sseq = sequence
