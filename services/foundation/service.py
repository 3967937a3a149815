"""What a service is, declared in one short module (`services/<name>/service.py`):

    SERVICE = Service(
        name="points",
        settings=PointsSettings,        # its own settings only; the host's come from ServiceSettings
        schema=SCHEMA,                  # its own tables and migrations
        publishes=[POINTS_EVENTS],      # the event catalogs it produces (one stream per domain)
        build=build,                    # async def build(kit: Kit) -> None
    )

`build` creates the service's objects and declares on the `Kit` what the host should run:
servicers, consumers, broadcast subscriptions, scheduled jobs, periodic loops, rule directories.
The host owns everything else: the database, migrations, the NATS connection, the streams, the
outbox relay (woken by any commit that added an event), health, reflection, metrics and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from services.foundation.bus import EventBus
from services.foundation.db import Database
from services.foundation.events import Event, EventCatalog
from services.foundation.inbox import EventConsumer, Handler
from services.foundation.rules.directory import RuleDirectory
from services.foundation.schema import ServiceSchema
from services.foundation.settings import ServiceSettings
from services.foundation.stopping import sleep_or_stop

if TYPE_CHECKING:  # imported when used: a service that has none does not load them
    from services.foundation.broadcast import Broadcast
    from services.foundation.cpu import CpuPool
    from services.foundation.scheduled import ScheduledJob

log = logging.getLogger("alliance.service")

M = TypeVar("M", bound=Message)
T = TypeVar("T")
S = TypeVar("S")

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Service:
    name: str
    settings: type[ServiceSettings]
    schema: ServiceSchema
    build: Callable[[Kit], Awaitable[None]]
    publishes: Sequence[EventCatalog] = ()


@dataclass
class Declared:
    registrations: list[Callable[[grpc.aio.Server], None]] = field(default_factory=list)
    consumers: list[EventConsumer[Any]] = field(default_factory=list)
    broadcasts: list[Broadcast[Any]] = field(default_factory=list)
    jobs: list[ScheduledJob] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)
    rule_directories: list[tuple[RuleDirectory[Any], float]] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)


class Kit:
    """Given to a service's `build`: what it may use (settings, db, bus) and what it declares."""

    def __init__(self, service: Service, settings: ServiceSettings, db: Database, bus: EventBus) -> None:
        self.service = service
        self.name = service.name
        self.settings = settings
        self.db = db
        self.bus = bus
        self.declared = Declared()
        self._cpu: CpuPool | None = None

    # -- gRPC ------------------------------------------------------------------------------------

    def serve(self, add_to_server: Callable[[S, grpc.aio.Server], None], servicer: S) -> S:
        """Register a servicer with its generated `add_*Servicer_to_server` function."""
        self.declared.registrations.append(lambda server: add_to_server(servicer, server))
        return servicer

    # -- events ----------------------------------------------------------------------------------

    def consume(
        self, event: Event[M], handler: Handler[M], *, name: str | None = None, max_deliver: int = 5
    ) -> EventConsumer[M]:
        """A durable consumer: each event applied once (inbox), across all replicas together.
        `event` is the contract as this service expects it (subject and message type); its durable
        name defaults to `<service>-<subject>` and must not change once deployed."""
        consumer = EventConsumer(
            db=self.db,
            bus=self.bus,
            name=name or f"{self.name}-{event.subject.replace('.', '-')}",
            subject=event.subject,
            message_type=event.message_type,
            handler=handler,
            max_deliver=max_deliver,
        )
        self.declared.consumers.append(consumer)
        return consumer

    def broadcast(self, event: Event[M]) -> Broadcast[M]:
        """Every replica sees every event of this kind (for server streams); nothing is stored."""
        from services.foundation.broadcast import Broadcast

        found = Broadcast(self.bus, event.subject, event.message_type)
        self.declared.broadcasts.append(found)
        return found

    # -- jobs ------------------------------------------------------------------------------------

    def daily(
        self,
        name: str,
        at: time,
        tz: str,
        run: Callable[[Any], Awaitable[None]],
        **options: Any,
    ) -> ScheduledJob:
        """Run `run(ctx)` at `at` in zone `tz` every day, once per occurrence across every replica
        (a lease row in this service's database); `options` go to ScheduledJob (lease_seconds,
        catch_up, max_attempts)."""
        from services.foundation.scheduled import ScheduledJob

        job = ScheduledJob(name, at, tz, run, **options)
        self.declared.jobs.append(job)
        return job

    def every(self, seconds: float, run: Callable[[], Awaitable[object]], *, name: str) -> None:
        """Run on every replica every `seconds` (work that is safe to repeat anywhere)."""

        async def loop(stop: asyncio.Event) -> None:
            while not stop.is_set():
                try:
                    await run()
                except Exception:
                    log.exception("periodic job failed", extra={"service": self.name, "job": name})
                await sleep_or_stop(stop, seconds)

        loop.__qualname__ = name
        self.declared.loops.append(loop)

    def background(self, loop: Loop) -> None:
        """Any other loop the host runs until shutdown (it must return soon after `stop` is set)."""
        self.declared.loops.append(loop)

    @property
    def cpu(self) -> CpuPool:
        """Processes for CPU-heavy work, so the event loop keeps answering (health checks included)."""
        if self._cpu is None:
            from services.foundation.cpu import CpuPool

            self._cpu = CpuPool()
        return self._cpu

    def close_cpu(self) -> None:
        """The host's, on shutdown: work still in the pool is cancelled."""
        if self._cpu is not None:
            self._cpu.close()

    # -- rules -----------------------------------------------------------------------------------

    def rules(
        self,
        directory: str,
        parse: Callable[[str, bytes], T],
        on_change: Callable[[Mapping[str, T]], None],
    ) -> RuleDirectory[T]:
        """Rule files of `RULES_DIR/<directory>`: loaded now (in force before the first call) and
        reloaded every RULES_POLL_SECONDS; a bad file is refused and its last good version stays."""
        found = RuleDirectory(
            Path(self.settings.rules_dir) / directory, parse=parse, on_change=on_change, name=directory
        )
        found.poll()
        self.declared.rule_directories.append((found, self.settings.rules_poll_seconds))
        return found

    def on_close(self, close: Callable[[], None]) -> None:
        self.declared.closers.append(close)
