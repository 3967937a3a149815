"""`alliance serve NAME`: run one service until SIGTERM or Ctrl-C.

With WORKERS > 1 this process becomes a small supervisor: it upgrades the schema once, starts that
many worker processes sharing the gRPC port (SO_REUSEPORT), passes SIGTERM on to them and exits
when they have all stopped, with the worst exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys

import uvloop

from services.cli.services_registry import SERVICES, ServiceEntry
from services.foundation import migrations
from services.foundation.db import Database
from services.foundation.logs import configure_logging
from services.foundation.settings import ServiceSettings


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="run one service", description="Run one service in the foreground.")
    names = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for entry in SERVICES.values():
        sub = names.add_parser(
            entry.name,
            help=f"the {entry.name} service",
            description=f"Run the {entry.name} service. Every option can also be set by the environment "
            "variable named in its help; options win over the environment.",
        )
        entry.settings.add_arguments(sub)
        sub.set_defaults(func=run, entry=entry)


def run(args: argparse.Namespace) -> int:
    entry: ServiceEntry = args.entry
    settings = entry.settings.from_args(args)
    configure_logging(entry.name, settings.log_level)
    if settings.workers > 1:
        return supervise(entry, settings)
    # uvloop: the same code, measurably faster per call (see make bench).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(entry.make_host(settings).serve_until_stopped())
    return 0


def supervise(entry: ServiceEntry, settings: ServiceSettings) -> int:
    if settings.grpc_port == 0:
        raise SystemExit("WORKERS > 1 needs a fixed GRPC_PORT: every worker must bind the same one")
    if settings.migrate_on_start:
        db = Database(settings.database_url)
        try:
            migrations.upgrade(db, entry.migrations)
        finally:
            db.close()
    # Workers get the resolved settings (options included) through their environment.
    resolved = {name.upper(): str(value) for name, value in settings.model_dump().items()}
    children = []
    for index in range(settings.workers):
        env = {
            **os.environ,
            **resolved,
            "WORKERS": "1",
            "REUSE_PORT": "true",
            "MIGRATE_ON_START": "false",
            "METRICS_PORT": str(settings.metrics_port + index if settings.metrics_port else 0),
        }
        children.append(subprocess.Popen([sys.executable, "-m", "services.cli", "serve", entry.name], env=env))

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(child.wait() for child in children)
