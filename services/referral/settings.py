"""Settings of the referral service (environment variables; see `alliance serve referral --help`)."""

from __future__ import annotations

from pydantic import Field

from services.foundation.settings import ServiceSettings


class ReferralSettings(ServiceSettings):
    qr_url_template: str = Field(
        "https://m.bank.example/r/{code}",
        description="what a referral QR code holds: the mini-program's registration link, {code} replaced by the code",
    )
    import_batch_max: int = Field(
        100_000, ge=1, description="links one ImportLinks batch may carry (the CLI splits bigger files)"
    )
