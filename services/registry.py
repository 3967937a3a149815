"""The services of the suite and their ports: the one table that `alliance run`, `alliance serve`,
the CLI's defaults, the deploy manifests (checked by tests/deploy) and the tests read.

Each service's module is named, not imported, here: `alliance run` and the deploy check need no
service code, and a service's process imports its own. (`alliance serve --help` imports them
all, to list every service's settings.)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from services.foundation.service import Service
from services.foundation.settings import ServiceSettings


@dataclass(frozen=True)
class Registered:
    name: str
    grpc_port: int
    metrics_port: int
    module: str  # holds SERVICE

    def load(self) -> Service:
        service = importlib.import_module(self.module).SERVICE
        assert isinstance(service, Service) and service.name == self.name, self.module
        return service

    def settings(self) -> type[ServiceSettings]:
        """The service's settings class, with this table's ports and `var/<name>.db` as defaults."""
        return self.load().settings.for_service(self.name, grpc_port=self.grpc_port, metrics_port=self.metrics_port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


SERVICES: dict[str, Registered] = {
    r.name: r
    for r in [
        Registered("points", grpc_port=50051, metrics_port=9464, module="services.points.service"),
        Registered("referral", grpc_port=50052, metrics_port=9465, module="services.referral.service"),
        Registered("dispatch", grpc_port=50053, metrics_port=9466, module="services.dispatch.service"),
    ]
}
