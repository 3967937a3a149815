"""`alliance rules validate` and `alliance rules simulate`, called as functions."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from services.cli.rules_commands import add_rules_parser

REPO = Path(__file__).resolve().parents[3]


def run(*argv: str) -> int:
    root = argparse.ArgumentParser(prog="alliance")
    add_rules_parser(root.add_subparsers(dest="command", required=True))
    args = root.parse_args(["rules", *argv])
    return args.func(args)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "rules" / "campaigns", tmp_path / "rules" / "campaigns")
    return tmp_path / "rules"


def write_event(tmp_path: Path, **event: object) -> str:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    return str(path)


def test_validate_the_repository_rules(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("validate", str(REPO / "rules")) == 0
    out = capsys.readouterr().out
    assert f"OK {REPO}/rules/campaigns/referral-autumn-2026.yaml (referral-autumn-2026, version " in out
    assert ", 4 rules)" in out
    assert "(supermarket-benefits-2026, version " in out and ", 0 rules, 3 benefit offers)" in out
    assert "7 of 7 files OK" in out  # five campaign files, the referral and the dispatch policy


def test_validate_prints_every_located_error_and_fails(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = rules_dir / "campaigns" / "bad.yaml"
    bad.write_text("campaign: bad\ntitle: t\nactive: {from: 2026-01-01}\nbugdet: 1\npriority: high\n")
    good = rules_dir / "campaigns" / "referral-autumn-2026.yaml"
    assert run("validate", str(bad), str(good)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"{bad}:4: bugdet: unknown field 'bugdet' "
        "(allowed here: active, benefits, campaign, exclusive, points, priority, timezone, title)",
        f"{bad}:5: priority: must be a whole number (got 'high')",
    ]
    assert out[2].startswith(f"OK {good} (referral-autumn-2026,")
    assert out[3] == "1 of 2 files OK, 1 refused"


def test_validate_finds_duplicate_ids_across_a_directory(rules_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = rules_dir / "campaigns" / "referral-autumn-2026.yaml"
    (rules_dir / "campaigns" / "z-copy.yaml").write_bytes(source.read_bytes())
    assert run("validate", str(rules_dir)) == 1
    assert "z-copy.yaml:13: campaign: campaign id 'referral-autumn-2026' is already used by" in capsys.readouterr().out


def test_validate_missing_path(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run("validate", str(tmp_path / "nope")) == 1
    assert "no such file or directory" in capsys.readouterr().out


def test_simulate_a_campaign_by_id(rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = write_event(
        tmp_path,
        event_type="referral.converted",
        occurred_at="2026-11-23T09:30:00+08:00",
        attributes={"product": "credit_card", "level": "1"},
    )
    assert run("simulate", "referral-autumn-2026", event, "--rules-dir", str(rules_dir)) == 0
    out = capsys.readouterr().out
    assert "rule credit-card: 50 points, expiring 2027-11-23T09:30:00+08:00" in out
    assert "total before caps and budget: 50 points" in out
    assert "not applied here: 500 per user per day; 2000 per user per week; 20000 per user over the campaign" in out
    assert "a budget of 5000000 points" in out
    assert "Nothing was written." in out


def test_simulate_a_draft_file_shows_what_is_suppressed(
    rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(
        "campaign: cinema-week\ntitle: Cinema week\nactive: {from: 2026-11-01, until: 2026-12-01}\n"
        "priority: 5\nexclusive: true\npoints:\n  stacking: highest\n  rules:\n"
        "    - {id: ticket, when: {event: merchant.spend, merchant_category: cinema}, award: 60}\n"
        "    - {id: big-ticket, priority: 1, when: {event: merchant.spend, amount: {gte: 100}}, award: 90}\n"
    )
    event = write_event(
        tmp_path,
        event_type="merchant.spend",
        occurred_at="2026-11-23T20:00:00+08:00",
        amount="238.50",
        attributes={"merchant_category": "cinema"},
    )
    assert run("simulate", str(draft), event, "--rules-dir", str(rules_dir)) == 0
    out = capsys.readouterr().out
    assert "rule big-ticket: 90 points, expiring never" in out
    assert "rule ticket: 60 points, NOT awarded: stacking is highest and rule 'big-ticket' (priority 1) awards" in out
    assert "this campaign has no caps and no budget" in out
    assert "Also awarded by campaign" not in out  # alliance-spend (priority 0) is suppressed


def test_simulate_reports_an_inactive_campaign(
    rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = write_event(tmp_path, event_type="referral.converted", occurred_at="2026-01-01T00:00:00Z")
    assert run("simulate", "referral-autumn-2026", event, "--rules-dir", str(rules_dir)) == 0
    assert "not active at the event" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"event_type": "x", "occurred_at": "2026-11-23T12:00:00"}, "occurred_at needs a UTC offset"),
        ({"occurred_at": "2026-11-23T12:00:00Z"}, "event_type is required"),
        ({"event_type": "x", "occurred_at": "2026-11-23T12:00:00Z", "amount": "lots"}, "amount must be a decimal"),
        ({"event_type": "x", "occurred_at": "2026-11-23T12:00:00Z", "user": "u"}, "unknown field(s) user"),
    ],
)
def test_simulate_refuses_a_bad_event(
    rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], event: dict, message: str
) -> None:
    assert run("simulate", "referral-autumn-2026", write_event(tmp_path, **event), "--rules-dir", str(rules_dir)) == 1
    assert message in capsys.readouterr().out


def test_simulate_unknown_campaign(rules_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    event = write_event(tmp_path, event_type="x", occurred_at="2026-11-23T12:00:00Z")
    assert run("simulate", "nope", event, "--rules-dir", str(rules_dir)) == 1
    assert "no campaign 'nope'" in capsys.readouterr().out
