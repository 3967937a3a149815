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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.foundation.nats_server import free_port
from services.registry import SERVICES

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
        if all(_free(port + offset) for entry in SERVICES.values() for port in (entry.grpc_port, entry.metrics_port)):
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
            time.sleep(0.1)  # the poll interval of this deadline wait
    raise AssertionError(f"{address} not serving")


def _bus_messages(output: str) -> list[tuple[str, str]]:
    found = []
    for line in output.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("logger") == "alliance.bus":
                found.append((record["level"], record["msg"]))
    return found


class _Output:
    """The suite's output, read as it comes, so a test can wait for a line before it acts."""

    def __init__(self, suite: subprocess.Popen[str]) -> None:
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(suite,), daemon=True)
        self._reader.start()

    def _read(self, suite: subprocess.Popen[str]) -> None:
        assert suite.stdout is not None
        for line in suite.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, found: Callable[[str], bool], timeout: float, what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: found("".join(self._lines)), timeout):
                raise AssertionError(f"{what} not seen within {timeout}s:\n{''.join(self._lines)[-3000:]}")

    def closed(self, timeout: float) -> str:
        """All of it, once every process holding the pipe has exited."""
        self._reader.join(timeout)
        return self.text()


def test_ctrl_c_stops_the_services_before_nats(tmp_path: Path) -> None:
    nats_port, offset = free_port(), _port_offset()
    grpc_port = SERVICES["points"].grpc_port + offset
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
    out = _Output(suite)
    try:
        _serving(f"127.0.0.1:{grpc_port}", time.monotonic() + 30)

        # The bus connects after the server starts serving: Ctrl-C only once every service is on NATS.
        def all_connected(text: str) -> bool:
            return _bus_messages(text).count(("INFO", "connected to NATS")) >= len(SERVICES)

        out.wait_for(all_connected, 30, "every service connected to NATS")
        os.killpg(suite.pid, signal.SIGINT)  # what Ctrl-C does: every process of the group
        suite.wait(timeout=40)
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
            suite.wait()
    output = out.closed(10)

    assert suite.returncode == 0, output[-3000:]
    assert output.rstrip().endswith("stopped"), output[-3000:]
    bus = _bus_messages(output)
    assert ("INFO", "connected to NATS") in bus, output[-3000:]
    # NATS went away under the draining service: it would have reported the lost connection.
    assert [m for m in bus if m[0] == "WARNING"] == [], bus
    assert ("INFO", "NATS connection closed") in bus
    assert _free(nats_port), "nats-server outlived the suite"
