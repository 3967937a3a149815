"""The dispatch policy in force: rules/dispatch/*.yaml (one file; with several, the first by name
rules and the others are reported by `alliance rules validate`). A bad file is refused with its
line, and its last good version stays in force (the kit's RuleDirectory).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.foundation.rules.document import load_document, rule_schema
from services.foundation.rules.errors import RuleFileError, format_path
from services.foundation.rules.located_yaml import LineIndex

log = logging.getLogger("alliance.dispatch.policy")

SCHEMA_FILE = "dispatch.schema.json"
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_CUTOFF = time(17, 0)
DEFAULT_JOB = "cutoff"  # every product without a cutoff of its own
_UNITS = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}


@dataclass(frozen=True)
class CutoffGroup:
    """Products cut off together: `products` empty means every product not named elsewhere."""

    job: str  # the scheduled job's name: "cutoff" or "cutoff:<product>"
    at: time
    products: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    id: str = "dispatch-builtin"
    version: str = ""
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))
    cutoff: time = DEFAULT_CUTOFF
    product_cutoffs: Mapping[str, time] = field(default_factory=dict)
    preferred_window: timedelta = timedelta(minutes=30)
    contact_within: timedelta | None = None  # None: no SLA
    return_to_pool: bool = False
    fallback_branch: str | None = None

    def groups(self) -> list[CutoffGroup]:
        named = [CutoffGroup(f"{DEFAULT_JOB}:{p}", at, (p,)) for p, at in sorted(self.product_cutoffs.items())]
        return [CutoffGroup(DEFAULT_JOB, self.cutoff), *named]

    def group_of(self, products: tuple[str, ...]) -> CutoffGroup:
        """The group a run for `products` belongs to: one product with its own cutoff, else the default."""
        if len(products) == 1 and products[0] in self.product_cutoffs:
            return CutoffGroup(f"{DEFAULT_JOB}:{products[0]}", self.product_cutoffs[products[0]], products)
        return CutoffGroup(DEFAULT_JOB, self.cutoff, products)

    def day_start(self, when: datetime) -> datetime:
        """The start of `when`'s local day (a manager's capacity is per local day)."""
        local = when.astimezone(self.timezone).date()
        return local_instant(local, time(0), self.timezone)


def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=tz)


class PolicyBook:
    """The policy in force, swapped whole on every reload: readers see the old or the new."""

    def __init__(self, policy: Policy | None = None) -> None:
        self._policy = policy or Policy()
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        return self._policy

    def replace(self, files: Mapping[str, Policy]) -> None:
        with self._lock:
            if not files:
                self._policy = Policy()
                return
            first = sorted(files)[0]
            if len(files) > 1:
                log.warning("several dispatch policy files: %s rules, the others are ignored", first)
            self._policy = files[first]


def load_policy(file: str, content: bytes) -> Policy:
    """Parse one dispatch policy file. Raises RuleFileError with every problem found."""
    data, index, version = load_document(file, content, rule_schema(SCHEMA_FILE))
    return _build(file, index, data, version)


def _build(file: str, index: LineIndex, data: Mapping[str, object], version: str) -> Policy:
    problems: list[RuleFileError] = []
    tz_name = str(data.get("timezone", DEFAULT_TIMEZONE))
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        path = ("timezone",)
        problems.append(
            RuleFileError(
                file,
                index.line(path),
                format_path(path),
                f"unknown time zone '{tz_name}' (use an IANA name like Asia/Shanghai)",
            )
        )
        tz = ZoneInfo(DEFAULT_TIMEZONE)
    cutoffs: dict[str, time] = {}
    raw_products = data.get("products")
    for i, raw in enumerate(raw_products if isinstance(raw_products, list) else []):
        product = str(raw["product"]).strip()
        if not product:
            at = ("products", i, "product")
            problems.append(RuleFileError(file, index.line(at), format_path(at), "must not be blank"))
        elif product in cutoffs:
            at = ("products", i, "product")
            problems.append(RuleFileError(file, index.line(at), format_path(at), f"'{product}' appears twice"))
        cutoffs[product] = _clock(str(raw["cutoff"]))
    if not str(data["fallback_branch"]).strip():
        branch = ("fallback_branch",)
        problems.append(RuleFileError(file, index.line(branch), format_path(branch), "must not be blank"))
    if problems:
        raise RuleFileError.from_problems(problems)
    sla = data.get("sla")
    sla = sla if isinstance(sla, dict) else {}
    return Policy(
        id=str(data["policy"]),
        version=version,
        timezone=tz,
        cutoff=_clock(str(data.get("cutoff", "17:00"))),
        product_cutoffs=cutoffs,
        preferred_window=_duration(str(data.get("preferred_window", "30m"))),
        contact_within=_duration(str(sla["contact_within"])) if "contact_within" in sla else None,
        return_to_pool=bool(sla.get("return_to_pool", False)),
        fallback_branch=str(data["fallback_branch"]).strip(),
    )


def _clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def _duration(text: str) -> timedelta:
    return int(text[:-1]) * _UNITS[text[-1]]
