"""`alliance run`: the whole suite on one machine, for trying it out (`make run`).

Starts an embedded nats-server with JetStream (data in var/nats), then every service as its own
process on SQLite (var/<service>.db) with rules from rules/, and stops them all on Ctrl-C: services
first (they flush their outboxes), NATS last.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.foundation.nats_server import EmbeddedNats
from services.registry import SERVICES

# The machine may already run its own NATS on 4222; the suite's embedded one stays out of its way.
DEV_NATS_PORT = 4322


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser("run", help="run NATS and every service locally", description=__doc__)
    run.add_argument("--var", default="var", help="where data and logs go (default %(default)s)")
    run.add_argument("--rules-dir", default="rules", help="rule files (default %(default)s)")
    run.add_argument("--nats-port", type=int, default=DEV_NATS_PORT, help="embedded NATS port (default %(default)s)")
    run.add_argument(
        "--port-offset",
        type=int,
        default=0,
        help="added to every service's gRPC and metrics port, to run a second suite beside the first (default 0)",
    )
    run.set_defaults(func=run_suite)


def run_suite(args: argparse.Namespace) -> int:
    var = Path(args.var).resolve()
    var.mkdir(parents=True, exist_ok=True)
    # Ctrl-C reaches the services straight from the terminal; NATS is stopped here, after them,
    # so that they can still publish what their outboxes hold while they drain.
    nats = EmbeddedNats(var / "nats", port=args.nats_port, own_session=True)
    print(f"starting NATS (JetStream) on {nats.url}, data in {var / 'nats'}", flush=True)
    nats.start()
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for name, entry in SERVICES.items():
            grpc_port, metrics_port = (port + args.port_offset for port in (entry.grpc_port, entry.metrics_port))
            env = {
                **os.environ,
                "NATS_URL": nats.url,
                "DATABASE_URL": f"sqlite:///{var / (name + '.db')}",
                "RULES_DIR": str(Path(args.rules_dir).resolve()),
                "GRPC_PORT": str(grpc_port),
                "METRICS_PORT": str(metrics_port),
            }
            child = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name], env=env)
            children.append(child)
            print(f"{name}: gRPC on 127.0.0.1:{grpc_port}, metrics on :{metrics_port}/metrics (pid {child.pid})")
        print("Ctrl-C stops everything.", flush=True)
        while not stopping:
            for child in children:
                if child.poll() is not None:
                    print(f"a service exited with {child.returncode}; stopping the suite", file=sys.stderr)
                    stopping = True
            time.sleep(0.2)
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
        nats.stop()
        print("stopped", flush=True)
    return 0
