"""The referral policy in force: the files of rules/referral/ combined.

Velocity rules from every file apply; the deepest `rewards.levels` any file sets is the number
of levels rewarded; campaigns are the union. A bad file is refused with its line, and its last
good version stays in force (the kit's RuleDirectory).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.foundation.rules.book import duplicate_ids
from services.foundation.rules.document import load_document, rule_schema
from services.foundation.rules.errors import Path as DataPath
from services.foundation.rules.errors import RuleFileError, format_path
from services.foundation.rules.located_yaml import LineIndex
from services.foundation.rules.moments import parse_moment

SCHEMA_FILE = "referral.schema.json"
MAX_RULE_ID = 64
DEFAULT_TIMEZONE = "Asia/Shanghai"
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


@dataclass(frozen=True)
class VelocityRule:
    id: str  # "<policy>/<rule>", so a flag names the file's rule
    per: str  # referrer | device | phone
    max: int
    within: timedelta
    within_text: str
    action: str  # review | refuse
    description: str = ""


@dataclass(frozen=True)
class ReferralCampaign:
    id: str
    active_from: datetime
    active_until: datetime | None

    def covers(self, when: datetime) -> bool:
        return self.active_from <= when and (self.active_until is None or when < self.active_until)


@dataclass(frozen=True)
class PolicyFile:
    id: str
    title: str
    file: str
    version: str
    velocity: tuple[VelocityRule, ...]
    levels: int | None
    campaigns: tuple[ReferralCampaign, ...]
    timezone: ZoneInfo
    id_line: int | None = None
    priority: int = 0


@dataclass(frozen=True)
class Policy:
    """What is in force: every file's velocity rules, the deepest reward level, all campaigns."""

    velocity: tuple[VelocityRule, ...] = ()
    levels: int = 1
    campaigns: tuple[ReferralCampaign, ...] = ()
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo(DEFAULT_TIMEZONE))
    versions: tuple[str, ...] = ()

    def campaigns_at(self, when: datetime) -> list[str]:
        return [c.id for c in self.campaigns if c.covers(when)]


def combine(files: Mapping[str, PolicyFile]) -> Policy:
    chosen = [files[f] for f in sorted(files) if f not in duplicate_ids(files, "policy")]
    if not chosen:
        return Policy()
    campaigns: dict[str, ReferralCampaign] = {}
    for document in chosen:
        for campaign in document.campaigns:
            campaigns.setdefault(campaign.id, campaign)
    return Policy(
        velocity=tuple(rule for document in chosen for rule in document.velocity),
        levels=max((d.levels for d in chosen if d.levels is not None), default=1),
        campaigns=tuple(campaigns.values()),
        timezone=chosen[0].timezone,
        versions=tuple(f"{d.id}@{d.version}" for d in chosen),
    )


class PolicyBook:
    """The policy in force, swapped whole on every reload: readers see the old or the new."""

    def __init__(self, policy: Policy | None = None) -> None:
        self._policy = policy or Policy()
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        return self._policy

    def replace(self, files: Mapping[str, PolicyFile]) -> None:
        with self._lock:
            self._policy = combine(files)


def load_policy(file: str, content: bytes) -> PolicyFile:
    """Parse one referral policy file. Raises RuleFileError with every problem found."""
    data, index, version = load_document(file, content, rule_schema(SCHEMA_FILE))
    return _Builder(file, index).policy(data, version)


class _Builder:
    def __init__(self, file: str, index: LineIndex) -> None:
        self.file = file
        self.index = index
        self.problems: list[RuleFileError] = []

    def fail(self, path: DataPath, reason: str) -> None:
        self.problems.append(RuleFileError(self.file, self.index.line(path), format_path(path), reason))

    def policy(self, data: Mapping[str, object], version: str) -> PolicyFile:
        tz_name = str(data.get("timezone", DEFAULT_TIMEZONE))
        try:
            tz = ZoneInfo(tz_name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(("timezone",), f"unknown time zone '{tz_name}' (use an IANA name like Asia/Shanghai)")
            tz = ZoneInfo(DEFAULT_TIMEZONE)
        policy_id = str(data["policy"])
        velocity = [self._rule(policy_id, i, raw) for i, raw in enumerate(_list(data.get("velocity")))]
        seen: set[str] = set()
        for i, rule in enumerate(velocity):
            if len(rule.id) > MAX_RULE_ID:  # stored as "policy/rule" on every link it flags
                self.fail(
                    ("velocity", i, "rule"),
                    f"policy and rule id together ('{rule.id}') exceed {MAX_RULE_ID} characters",
                )
            if rule.id in seen:
                self.fail(("velocity", i, "rule"), f"rule '{rule.id.split('/')[1]}' appears twice in this file")
            seen.add(rule.id)
        campaigns = [self._campaign(i, raw, tz) for i, raw in enumerate(_list(data.get("campaigns")))]
        rewards = data.get("rewards")
        levels = rewards.get("levels") if isinstance(rewards, dict) else None
        if self.problems:
            self.problems.sort(key=lambda p: (p.line or 0, p.path))
            raise RuleFileError.from_problems(self.problems)
        return PolicyFile(
            id=policy_id,
            title=str(data["title"]),
            file=self.file,
            version=version,
            velocity=tuple(velocity),
            levels=int(levels) if levels is not None else None,
            campaigns=tuple(c for c in campaigns if c is not None),
            timezone=tz,
            id_line=self.index.line(("policy",)),
        )

    def _rule(self, policy_id: str, i: int, raw: Mapping[str, object]) -> VelocityRule:
        within = str(raw["within"])
        return VelocityRule(
            id=f"{policy_id}/{raw['rule']}",
            per=str(raw["per"]),
            max=int(str(raw["max"])),
            within=int(within[:-1]) * _UNITS[within[-1]],
            within_text=within,
            action=str(raw.get("action", "review")),
            description=str(raw.get("description", "")),
        )

    def _campaign(self, i: int, raw: Mapping[str, object], tz: ZoneInfo) -> ReferralCampaign | None:
        moments: dict[str, datetime | None] = {"from": None, "until": None}
        for key in moments:
            if key in raw:
                try:
                    moments[key] = parse_moment(str(raw[key]), tz)
                except ValueError:
                    self.fail(("campaigns", i, key), f"'{raw[key]}' is not a valid date or time")
        start, end = moments["from"], moments["until"]
        if start is None:
            return None
        if end is not None and end <= start:
            self.fail(("campaigns", i, "until"), f"must be after from ({raw['from']})")
        return ReferralCampaign(id=str(raw["id"]), active_from=start, active_until=end)


def _list(value: object) -> list[Mapping[str, object]]:
    return list(value) if isinstance(value, list) else []
