"""Settings of the points service (environment variables; see `alliance serve points --help`)."""

from __future__ import annotations

from pydantic import Field

from services.foundation.settings import ServiceSettings


class PointsSettings(ServiceSettings):
    expiry_sweep_seconds: float = Field(60.0, gt=0, description="how often expired points are written off")
    quote_cache_seconds: float = Field(
        5.0,
        gt=0,
        description="how often quotes look for claims and AUM reports written by other replicas "
        "(this replica's own writes show at once; claims always decide on the database)",
    )
    quote_cache_customers: int = Field(
        100_000,
        ge=1,
        description="customers whose quote data is kept in memory (about 0.5 KB each); while every "
        "customer on file fits, all are held and no quote waits for a database read",
    )
