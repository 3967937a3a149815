"""Runs one service process: gRPC server with health and reflection, metrics, background loops,
and an orderly shutdown.

On SIGTERM (Kubernetes) or Ctrl-C: health goes NOT_SERVING so load balancers stop sending calls,
the gRPC server stops accepting and lets in-flight calls finish within SHUTDOWN_GRACE_SECONDS,
background loops (consumers, outbox relay, rule watcher) stop after their current item, the relay
flushes what the last calls committed, then NATS and the database connections close.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from functools import partial

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.foundation import migrations
from services.foundation.bus import EventBus
from services.foundation.db import Database
from services.foundation.grpc_errors import GuardedServer
from services.foundation.ids import replica_id
from services.foundation.outbox import OutboxRelay
from services.foundation.rules.directory import RuleDirectory
from services.foundation.service import Declared, Kit, Loop, Service
from services.foundation.settings import ServiceSettings

log = logging.getLogger("alliance.host")


async def _watch(directory: RuleDirectory[object], interval: float, stop: asyncio.Event) -> None:
    await directory.watch(interval, stop)


class ServiceHost:
    def __init__(self, service: Service, settings: ServiceSettings) -> None:
        self.service = service
        self.name = service.name
        self.settings = settings
        self.stop_requested = asyncio.Event()
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._background_stop = asyncio.Event()
        # The relay stops last, after the loops whose final units may still add events.
        self._relay_stop = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self._bus_task: asyncio.Task[None] | None = None
        self.kit: Kit | None = None
        self.replica_id = replica_id()

    async def start(self) -> int:
        s = self.settings
        self.db = Database(s.database_url)
        if s.migrate_on_start:
            await asyncio.to_thread(migrations.upgrade, self.db, self.service.schema)
        self.bus = EventBus(s.nats_url, name=f"alliance-{self.name}")
        self.relay = OutboxRelay(self.db, self.bus)
        self.db.events_committed = self.relay.notify
        self.db.publishes = frozenset(subject for c in self.service.publishes for subject in c.subjects)
        self.kit = kit = Kit(self.service, s, self.db, self.bus)
        await self.service.build(kit)
        declared = kit.declared

        server = grpc.aio.server(
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            # A second server on the same port is an error, not a silent split of the traffic.
            options=[("grpc.so_reuseport", 0)],
        )
        guarded = GuardedServer(server)
        for register in declared.registrations:
            register(guarded)  # type: ignore[arg-type]
        self.service_names = guarded.service_names
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        self.port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        await server.start()
        self._server = server
        for name in ["", *self.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port:
            start_http_server(s.metrics_port, addr=s.grpc_host)

        self._bus_task = asyncio.create_task(self._connect_bus(), name="bus-connect")
        self._relay_task = asyncio.create_task(self.relay.run(self._relay_stop), name="outbox-relay")
        for name, loop in self._loops(declared):
            self._tasks.append(asyncio.create_task(loop(self._background_stop), name=name))
        # Start-up objects (modules, rules, schema) live for ever: frozen, no collection scans them,
        # so a full collection costs a few ms. The young generation keeps the interpreter's small
        # threshold on purpose: grpc.aio leaves a few objects of cyclic garbage per call, and a
        # large threshold (20,000 was tried) turned them into 10-25 ms pauses every few seconds,
        # the whole p99 of QuoteDiscount.
        gc.collect()
        gc.freeze()
        log.info(
            "serving",
            extra={
                "grpc": f"{s.grpc_host}:{self.port}",
                "metrics_port": s.metrics_port,
                "database": self.db.url.render_as_string(hide_password=True),
                "nats": s.nats_url,
            },
        )
        return self.port

    def _loops(self, declared: Declared) -> list[tuple[str, Loop]]:
        loops: list[tuple[str, Loop]] = [(f"consumer {c.name}", c.run) for c in declared.consumers]
        loops += [(f"broadcast {b.subject}", b.run) for b in declared.broadcasts]
        loops += [(f"job {j.name}", partial(j.run_forever, self.db, replica_id=self.replica_id)) for j in declared.jobs]
        loops += [(f"rules {d.name}", partial(_watch, d, interval)) for d, interval in declared.rule_directories]
        loops += [(getattr(loop, "__qualname__", "loop"), loop) for loop in declared.loops]
        return loops

    async def _connect_bus(self) -> None:
        await self.bus.connect()
        while not self._background_stop.is_set():
            try:
                for catalog in self.service.publishes:
                    await self.bus.ensure_stream(catalog.domain)
                return
            except Exception as error:
                log.warning("creating streams failed, retrying", extra={"error": repr(error)})
                await asyncio.sleep(1)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)

    async def stop(self) -> None:
        log.info("shutting down", extra={"grace_s": self.settings.shutdown_grace_seconds})
        await self._health.enter_graceful_shutdown()
        declared = self.kit.declared if self.kit else Declared()
        # Open server streams end now with UNAVAILABLE (clients reconnect elsewhere) instead of
        # holding the whole grace period.
        for subscription in declared.broadcasts:
            subscription.close()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
        # Loops (consumers, jobs, rule watchers) finish their current item; a job waiting on the
        # CPU pool is let go at once (another replica takes its occurrence over).
        self._background_stop.set()
        if self.kit is not None:
            self.kit.close_cpu()
        if self._bus_task is not None:
            self._bus_task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                log.warning("background loop did not stop in time", extra={"task": task.get_name()})
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # Then the relay drains what the calls and loops committed last.
        self._relay_stop.set()
        if self._relay_task is not None:
            await asyncio.gather(self._relay_task, return_exceptions=True)
        if self._bus_task is not None:
            await asyncio.gather(self._bus_task, return_exceptions=True)
        if hasattr(self, "bus"):
            await self.bus.close()
        for close in declared.closers:
            close()
        if hasattr(self, "db"):
            await asyncio.to_thread(self.db.close)
        log.info("stopped")

    async def serve_until_stopped(self) -> None:
        await self.start()
        self.install_signal_handlers()
        await self.stop_requested.wait()
        await self.stop()
