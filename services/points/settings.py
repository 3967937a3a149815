"""Settings of the points service (environment variables; see `alliance serve points --help`)."""

from __future__ import annotations

from pydantic import Field

from services.foundation.settings import ServiceSettings


class PointsSettings(ServiceSettings):
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port of Points (and, later, Benefits)")
    metrics_port: int = Field(9464, ge=0, le=65535, description="Prometheus /metrics HTTP port (0: off)")
    database_url: str = Field(
        "sqlite:///var/points.db", description="sqlite:///path/file.db or postgresql://user@host:5432/db"
    )
    expiry_sweep_seconds: float = Field(60.0, gt=0, description="how often expired points are written off")
