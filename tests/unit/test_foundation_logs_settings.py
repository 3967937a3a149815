"""JSON logs and settings (pure)."""

from __future__ import annotations

import argparse
import json
import logging

from services.foundation.logs import JsonFormatter
from services.points.settings import PointsSettings


def test_log_lines_are_json_with_extras_and_utc_time() -> None:
    record = logging.LogRecord("alliance.rules", logging.ERROR, __file__, 1, "rule file rejected", None, None)
    record.file = "rules/campaigns/x.yaml"
    line = json.loads(JsonFormatter("points").format(record))
    assert line["msg"] == "rule file rejected" and line["file"] == "rules/campaigns/x.yaml"
    assert line["service"] == "points" and line["ts"].endswith("+00:00")


def test_every_setting_is_an_option_naming_its_variable(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    PointsSettings.add_arguments(parser)
    text = parser.format_help()
    for name in ("DATABASE_URL", "NATS_URL", "GRPC_PORT", "RULES_DIR", "SHUTDOWN_GRACE_SECONDS"):
        assert name in text
    monkeypatch.setenv("GRPC_PORT", "6000")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///env.db")
    settings = PointsSettings.from_args(parser.parse_args(["--grpc-port", "7000"]))
    assert settings.grpc_port == 7000  # the option wins over the environment
    assert settings.database_url == "sqlite:///env.db"
