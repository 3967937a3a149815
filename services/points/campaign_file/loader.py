"""Campaign file -> Campaign: schema validation, then the checks a schema cannot express, every
problem located at its line."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.foundation.rules.book import duplicate_ids
from services.foundation.rules.conditions import NUMERIC_OPERATORS, ConditionError, compile_condition
from services.foundation.rules.document import load_document, rule_schema, rule_schema_path
from services.foundation.rules.errors import Path as DataPath
from services.foundation.rules.errors import RuleFileError, format_path
from services.foundation.rules.located_yaml import LineIndex
from services.foundation.rules.moments import parse_moment
from services.points.campaign_file.benefits_loader import build_benefits
from services.points.campaign_file.model import (
    DEFAULT_TIMEZONE,
    Award,
    Campaign,
    Caps,
    Expiry,
    FixedAward,
    PointsRule,
    PointsTerms,
    ProportionalAward,
)

SCHEMA_FILE = "campaign.schema.json"


def schema_path() -> Path:
    return rule_schema_path(SCHEMA_FILE)


def campaign_schema() -> dict[str, Any]:
    return rule_schema(SCHEMA_FILE)


def load_campaign(file: str, content: bytes) -> Campaign:
    """Parse one campaign file. Raises RuleFileError with every problem found."""
    data, index, version = load_document(file, content, campaign_schema())
    return _Builder(file, index).campaign(data, version)


def find_duplicate_ids(campaigns: Mapping[str, Campaign]) -> dict[str, RuleFileError]:
    """Files whose campaign id an earlier file (by name) already uses: {file: error}."""
    return duplicate_ids(campaigns, "campaign")


class _Builder:
    """Builds a Campaign from schema-valid data, collecting the semantic problems."""

    def __init__(self, file: str, index: LineIndex) -> None:
        self.file = file
        self.index = index
        self.problems: list[RuleFileError] = []

    def fail(self, path: DataPath, reason: str) -> None:
        self.problems.append(RuleFileError(self.file, self.index.line(path), format_path(path), reason))

    def campaign(self, data: Mapping[str, Any], version: str) -> Campaign:
        tz = self._timezone(data.get("timezone", DEFAULT_TIMEZONE))
        active = data["active"]
        active_from = self._moment(("active", "from"), active["from"], tz)
        active_until = self._moment(("active", "until"), active["until"], tz) if "until" in active else None
        if active_from and active_until and active_until <= active_from:
            self.fail(("active", "until"), f"must be after active.from ({active['from']})")
        points = self._points(data["points"], tz, active_from) if "points" in data else None
        benefits = build_benefits(data["benefits"], self.fail) if "benefits" in data else None
        if self.problems:
            self.problems.sort(key=lambda p: (p.line or 0, p.path))
            raise RuleFileError.from_problems(self.problems)
        assert active_from is not None  # a failed parse is a problem, raised above
        return Campaign(
            id=data["campaign"],
            title=data["title"],
            version=version,
            file=self.file,
            active_from=active_from,
            active_until=active_until,
            timezone=tz,
            priority=data.get("priority", 0),
            exclusive=data.get("exclusive", False),
            points=points,
            id_line=self.index.line(("campaign",)),
            benefits=benefits,
        )

    def _timezone(self, name: str) -> ZoneInfo:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(("timezone",), f"unknown time zone '{name}' (use an IANA name like Asia/Shanghai)")
            return ZoneInfo(DEFAULT_TIMEZONE)  # to go on checking the rest of the file

    def _moment(self, path: DataPath, text: str, tz: ZoneInfo) -> datetime | None:
        try:
            return parse_moment(text, tz)
        except ValueError:
            self.fail(path, f"'{text}' is not a valid date or time")
            return None

    def _points(self, raw: Mapping[str, Any], tz: ZoneInfo, active_from: datetime | None) -> PointsTerms:
        caps = raw.get("caps", {})
        return PointsTerms(
            stacking=raw.get("stacking", "all"),
            budget=raw.get("budget"),
            caps=Caps(caps.get("per_user_per_day"), caps.get("per_user_per_week"), caps.get("per_user_per_campaign")),
            expiry=self._expiry(raw["expiry"], tz, active_from) if "expiry" in raw else None,
            rules=self._rules(raw["rules"]),
        )

    def _expiry(self, raw: Mapping[str, Any], tz: ZoneInfo, active_from: datetime | None) -> Expiry:
        if "days" in raw:
            return Expiry(days=raw["days"])
        path = ("points", "expiry", "on")
        try:
            on = date.fromisoformat(raw["on"])
        except ValueError:
            self.fail(path, f"'{raw['on']}' is not a valid date")
            return Expiry()
        if active_from is not None and on < active_from.astimezone(tz).date():
            self.fail(path, f"is before the campaign starts ({active_from.astimezone(tz).date()})")
        return Expiry(on=on)

    def _rules(self, raws: list[Mapping[str, Any]]) -> tuple[PointsRule, ...]:
        rules: list[PointsRule] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(raws):
            path: DataPath = ("points", "rules", i)
            rule_id = raw["id"]
            if rule_id in seen:
                self.fail((*path, "id"), f"duplicate rule id '{rule_id}' (also points.rules[{seen[rule_id]}])")
            seen.setdefault(rule_id, i)
            rules.append(
                PointsRule(
                    id=rule_id,
                    description=raw.get("description", ""),
                    priority=raw.get("priority", 0),
                    when=self._when((*path, "when"), raw["when"]),
                    award=_award(raw["award"]),
                )
            )
        return tuple(rules)

    def _when(self, path: DataPath, raw: Mapping[str, Any]) -> dict[str, Any]:
        when: dict[str, Any] = {}
        for field, spec in raw.items():
            if field in ("event", "amount"):
                when[field] = spec
                continue
            # Event attributes arrive as text (a protobuf map<string, string>), so written
            # numbers are compared as text; numeric comparisons on text would compare text.
            if isinstance(spec, Mapping):
                for op in spec:
                    if op in NUMERIC_OPERATORS:
                        self.fail(
                            (*path, field, op),
                            f"{op} compares numbers and only applies to amount; attribute values are text",
                        )
                when[field] = {op: arg if op in NUMERIC_OPERATORS else _as_text(arg) for op, arg in spec.items()}
            else:
                when[field] = _as_text(spec)
        try:
            compile_condition(when)
        except ConditionError as error:
            self.fail(path + error.path, error.reason)
        return when


def _as_text(value: Any) -> Any:
    if isinstance(value, list):
        return [_as_text(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _award(raw: int | Mapping[str, Any]) -> Award:
    if isinstance(raw, int):
        return FixedAward(raw)
    return ProportionalAward(Decimal(str(raw["per_amount"])), raw["points"], raw.get("max"))
