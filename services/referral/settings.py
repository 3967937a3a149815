"""Settings of the referral service (environment variables; see `alliance serve referral --help`)."""

from __future__ import annotations

from pydantic import Field, field_validator

from services.foundation.settings import ServiceSettings


class ReferralSettings(ServiceSettings):
    qr_url_template: str = Field(
        "https://m.bank.example/r/{code}",
        description="what a referral QR code holds: the mini-program's registration link, {code} replaced by the code",
    )

    @field_validator("qr_url_template")
    @classmethod
    def _one_code_field(cls, template: str) -> str:
        try:
            filled = template.format(code="CODE2345")
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"must contain {{code}} and no other {{...}} field ({error!r})") from error
        if "CODE2345" not in filled:
            raise ValueError("must contain {code}")
        return template

    import_batch_max: int = Field(
        100_000, ge=1, description="links one ImportLinks batch may carry (the CLI splits bigger files)"
    )
