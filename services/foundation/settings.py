"""Settings shared by every service: environment variables with documented defaults.

A service subclasses `ServiceSettings` only to add settings of its own. Its defaults for the
shared ones (ports from the port table, database `var/<name>.db`) come from `for_service`, so no
service redeclares a base field to change a default. The same fields are also command-line
options, so `alliance serve points --help` documents every variable.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False, frozen=True)

    grpc_host: str = Field("127.0.0.1", description="address the gRPC server binds; containers set 0.0.0.0")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: pick a free one)")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics HTTP port on GRPC_HOST (0: off)")
    database_url: str = Field(
        "sqlite:///var/service.db",
        description="sqlite:///path/file.db (default) or postgresql://user@host:5432/db",
    )
    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server(s) with JetStream, comma-separated")
    rules_dir: Path = Field(Path("rules"), description="directory of rule files (a ConfigMap mount works)")
    rules_poll_seconds: float = Field(2.0, gt=0, description="how often rule files are checked for changes")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR; logs are JSON lines on stderr")
    shutdown_grace_seconds: float = Field(
        10.0, ge=0, description="on SIGTERM, how long in-flight calls may take to finish"
    )
    migrate_on_start: bool = Field(True, description="upgrade the database schema before serving")
    max_concurrent_rpcs: int = Field(512, gt=0, description="calls served at once; more wait in the queue")

    @classmethod
    def for_service(cls, name: str, *, grpc_port: int, metrics_port: int) -> type[Self]:
        """This settings class with one service's defaults: its ports and `var/<name>.db`."""
        defaults = {
            "grpc_port": grpc_port,
            "metrics_port": metrics_port,
            "database_url": f"sqlite:///var/{name}.db",
        }
        fields: dict[str, Any] = {}
        for field_name, default in defaults.items():
            info = cls.model_fields[field_name]
            # The base field's constraints (ge, le) stay, with the new default.
            annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[field_name] = (annotation, Field(default, description=info.description))
        return create_model(cls.__name__, __base__=cls, **fields)

    @classmethod
    def env_name(cls, field: str) -> str:
        return field.upper()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """One option per field; the help names the environment variable and its default."""
        for name, info in cls.model_fields.items():
            default = info.default
            parser.add_argument(
                "--" + name.replace("_", "-"),
                dest=name,
                default=None,
                metavar=cls.env_name(name),
                help=f"{info.description} [env {cls.env_name(name)}, default {default}]",
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace | None = None, **overrides: Any) -> Self:
        """Environment first, then command-line options, then explicit overrides (tests)."""
        values: dict[str, Any] = {}
        if args is not None:
            values = {k: v for k, v in vars(args).items() if k in cls.model_fields and v is not None}
        values.update(overrides)
        return cls(**values)
