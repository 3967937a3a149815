"""`alliance serve NAME`: run one service until SIGTERM or Ctrl-C.

One process uses one core (Python); scale out with replicas (Kubernetes) behind a load balancer.
"""

from __future__ import annotations

import argparse
import asyncio

import uvloop

from services.foundation.host import ServiceHost
from services.foundation.logs import configure_logging
from services.registry import SERVICES, Registered


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run one service", description="Run one service in the foreground.")
    names = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    for entry in SERVICES.values():
        sub = names.add_parser(
            entry.name,
            help=f"the {entry.name} service",
            description=f"Run the {entry.name} service. Every option can also be set by the environment "
            "variable named in its help; options win over the environment.",
        )
        entry.settings().add_arguments(sub)
        sub.set_defaults(func=run, entry=entry)


def run(args: argparse.Namespace) -> int:
    entry: Registered = args.entry
    settings = entry.settings().from_args(args)
    configure_logging(entry.name, settings.log_level)
    # uvloop: the same code, measurably faster per call (see make bench).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(ServiceHost(entry.load(), settings).serve_until_stopped())
    return 0
