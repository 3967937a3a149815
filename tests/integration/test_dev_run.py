"""`alliance run` (what `make run` starts) stopped the way a terminal's Ctrl-C stops it: SIGINT to
the whole foreground process group. Services must drain while NATS is still up, NATS goes last."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.dev_run import PORTS
from services.foundation.nats_server import free_port

REPO = Path(__file__).resolve().parents[2]


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_offset() -> int:
    """An offset at which every port `alliance run` opens is free (a dev suite may hold the defaults)."""
    for _ in range(50):
        offset = random.randrange(1000, 5000)
        if all(_free(port + offset) for ports in PORTS.values() for port in ports):
            return offset
    raise AssertionError("no free ports for alliance run")


def _serving(address: str, deadline: float) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{address} not serving")


def _bus_messages(output: str) -> list[tuple[str, str]]:
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "alliance.bus":
                found.append((record["level"], record["msg"]))
    return found


def test_ctrl_c_stops_the_services_before_nats(tmp_path: Path) -> None:
    nats_port, offset = free_port(), _port_offset()
    grpc_port = PORTS["points"][0] + offset
    suite = subprocess.Popen(
        [
            *(sys.executable, "-m", "services.cli", "run", "--var", str(tmp_path / "var")),
            *("--nats-port", str(nats_port), "--port-offset", str(offset)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a shell job in a terminal
    )
    try:
        _serving(f"127.0.0.1:{grpc_port}", time.monotonic() + 30)
        time.sleep(0.5)  # the bus connects after the server starts serving
        os.killpg(suite.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group
        output, _ = suite.communicate(timeout=40)
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
            suite.wait()

    assert suite.returncode == 0, output[-3000:]
    assert output.rstrip().endswith("stopped"), output[-3000:]
    bus = _bus_messages(output)
    assert ("INFO", "connected to NATS") in bus, output[-3000:]
    # NATS went away under the draining service: it would have reported the lost connection.
    assert [m for m in bus if m[0] == "WARNING"] == [], bus
    assert ("INFO", "NATS connection closed") in bus
    assert _free(nats_port), "nats-server outlived the suite"
