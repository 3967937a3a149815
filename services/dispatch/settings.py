"""Settings of the dispatch service (environment variables; see `alliance serve dispatch --help`).
The business terms (cutoff, windows, SLA, fallback branch) are in rules/dispatch/, not here."""

from __future__ import annotations

from pydantic import Field

from services.foundation.settings import ServiceSettings


class DispatchSettings(ServiceSettings):
    sweep_seconds: float = Field(
        5.0, gt=0, description="how often each replica checks for ended reservations, SLA breaches and due cutoffs"
    )
    cutoff_lease_seconds: float = Field(
        30.0, gt=0, description="lease of a cutoff run: another replica takes it over this long after its holder died"
    )
    cutoff_catch_up_minutes: float = Field(
        60.0, ge=0, description="a cutoff missed while no replica ran still runs on start if at most this old"
    )
    cutoff_schedule: bool = Field(
        True, description="run the cutoffs of the rule file when they come (false: only when RunCutoff asks, for tests)"
    )
