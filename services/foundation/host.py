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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from services.foundation import migrations
from services.foundation.bus import EventBus
from services.foundation.db import Database
from services.foundation.grpc_errors import GuardedServer
from services.foundation.settings import ServiceSettings

log = logging.getLogger("alliance.host")

Background = Callable[[asyncio.Event], Awaitable[None]]


@dataclass
class Runtime:
    """What a service is given to build itself."""

    name: str
    settings: ServiceSettings
    db: Database
    bus: EventBus
    stop: asyncio.Event


@dataclass
class ServiceParts:
    """What a service gives back: its servicers, the loops to run beside them, what to close."""

    register: list[Callable[[grpc.aio.Server], None]]
    service_names: list[str]
    background: list[Background] = field(default_factory=list)
    on_bus_ready: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    close: list[Callable[[], None]] = field(default_factory=list)


Build = Callable[[Runtime], Awaitable[ServiceParts]]


class ServiceHost:
    def __init__(
        self, name: str, settings: ServiceSettings, build: Build, *, migrations_dir: Path | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.build = build
        self.migrations_dir = migrations_dir
        self.stop_requested = asyncio.Event()
        self.port: int | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._parts: ServiceParts | None = None
        self._background_stop = asyncio.Event()

    async def start(self) -> int:
        s = self.settings
        self.db = Database(s.database_url)
        if s.migrate_on_start and self.migrations_dir is not None:
            await asyncio.to_thread(migrations.upgrade, self.db, self.migrations_dir)
        self.bus = EventBus(s.nats_url, name=f"alliance-{self.name}")
        runtime = Runtime(self.name, s, self.db, self.bus, self._background_stop)
        self._parts = parts = await self.build(runtime)

        server = grpc.aio.server(
            maximum_concurrent_rpcs=s.max_concurrent_rpcs,
            # A second server on the same port is an error, not a silent split of the traffic.
            options=[("grpc.so_reuseport", 0)],
        )
        guarded = GuardedServer(server)
        for register in parts.register:
            register(guarded)  # type: ignore[arg-type]
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [*parts.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, server)
        self.port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        await server.start()
        self._server = server
        for name in ["", *parts.service_names]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.metrics_port:
            start_http_server(s.metrics_port, addr=s.grpc_host)

        self._bus_task = asyncio.create_task(self._connect_bus(parts), name="bus-connect")
        for loop in parts.background:
            self._tasks.append(
                asyncio.create_task(loop(self._background_stop), name=getattr(loop, "__qualname__", "bg"))
            )
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

    async def _connect_bus(self, parts: ServiceParts) -> None:
        await self.bus.connect()
        for ready in parts.on_bus_ready:
            while not self._background_stop.is_set():
                try:
                    await ready()
                    break
                except Exception as error:
                    log.warning("bus setup failed, retrying", extra={"error": repr(error)})
                    await asyncio.sleep(1)

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_requested.set)

    async def stop(self) -> None:
        log.info("shutting down", extra={"grace_s": self.settings.shutdown_grace_seconds})
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_seconds)
        self._background_stop.set()
        self._bus_task.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=self.settings.shutdown_grace_seconds)
            for task in pending:
                log.warning("background loop did not stop in time", extra={"task": task.get_name()})
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(self._bus_task, return_exceptions=True)
        await self.bus.close()
        for close in self._parts.close if self._parts else []:
            close()
        await asyncio.to_thread(self.db.close)
        log.info("stopped")

    async def serve_until_stopped(self) -> None:
        await self.start()
        self.install_signal_handlers()
        await self.stop_requested.wait()
        await self.stop()
