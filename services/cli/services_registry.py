"""The services this suite can run, by name: what `serve`, `run` and `db` choose from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.foundation.host import ServiceHost
from services.foundation.settings import ServiceSettings
from services.points import app as points_app
from services.points.settings import PointsSettings


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    settings: type[ServiceSettings]
    host: object  # Callable[[settings], ServiceHost]
    migrations: Path

    def make_host(self, settings: ServiceSettings) -> ServiceHost:
        return self.host(settings)  # type: ignore[operator]


SERVICES = {
    "points": ServiceEntry("points", PointsSettings, points_app.host, points_app.MIGRATIONS),
}
