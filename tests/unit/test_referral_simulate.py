"""`alliance referral simulate` (the referral rule files dry-run on a scenario, through the real
linking and conversion code on a throwaway SQLite database) and `alliance rules validate` on
referral policy files."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.__main__ import main

REPO = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = REPO / "rules" / "referral" / "default.yaml"
START = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


def simulate(tmp_path: Path, scenario: dict[str, Any], rules: Path = REPO / "rules") -> int:
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    return main(["referral", "simulate", str(path), "--rules-dir", str(rules)])


def default_burst_rule() -> tuple[str, int, str, timedelta]:
    """The repository policy's velocity rule per referrer: (rule id, max, within, window)."""
    document = yaml.safe_load(DEFAULT_POLICY.read_text())
    [rule] = [r for r in document["velocity"] if r["per"] == "referrer"]
    within = rule["within"]
    return f"{document['policy']}/{rule['rule']}", rule["max"], within, int(within[:-1]) * UNITS[within[-1]]


def test_simulate_flags_the_registration_over_the_default_referrer_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule, most, within, window = default_burst_rule()
    step = window / (most + 2)  # the first and the last registration are inside one window
    registrations = [
        {"user_id": f"u-{i}", "referrer_id": "alice", "at": (START + i * step).isoformat(), "device_hash": f"d-{i}"}
        for i in range(most + 1)
    ]
    registrations.append(
        {"user_id": "v-1", "referrer_id": "bob", "at": (START + most * step).isoformat(), "device_hash": "d-v"}
    )
    later = START + window * 2
    conversions = [
        {"user_id": "u-0", "product": "credit_card", "at": later.isoformat(), "business_ref": "card-1"},
        {"user_id": f"u-{most}", "product": "loan", "at": later.isoformat()},
        {"user_id": "stranger", "product": "loan", "at": later.isoformat()},
    ]
    assert simulate(tmp_path, {"registrations": registrations, "conversions": conversions}) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert f"Policy referral-default ({DEFAULT_POLICY}, version " in out
    assert f"  velocity {rule}: more than {most} per referrer within {within} -> review" in lines
    outcomes = [line for line in lines if line.startswith("registration[")]
    linked = [line for line in outcomes if line.endswith(": linked under alice")]
    assert len(linked) == most
    [flagged] = [line for line in outcomes if "UNDER REVIEW" in line]
    assert flagged.startswith(f"registration[{most}] ")
    assert flagged.endswith(
        f"u-{most} via referrer alice: UNDER REVIEW by rule {rule}: "
        f"{most + 1} registrations under alice within {within} (max {most})"
    )
    assert any(line.endswith("v-1 via referrer bob: linked under bob") for line in outcomes)
    assert any(
        line.startswith("conversion[0] ") and line.endswith("(card-1): rewarded: level 1 alice") for line in lines
    )
    assert any(f"(sim-1): HELD: u-{most}'s link is under review" in line for line in lines)
    assert any(line.endswith("unattributed: stranger has no referrer") for line in lines)
    assert f"Registrations: {most + 1} linked, 1 under review, 0 already linked, 0 refused." in out
    assert "Conversions: 1 rewarded, 1 held, 1 unattributed, 0 refused." in out


def test_simulate_follows_the_rule_files_levels_cycles_and_time_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules"
    (rules / "referral").mkdir(parents=True)
    (rules / "referral" / "deep.yaml").write_text(
        "policy: deep\ntitle: Two levels\nvelocity:\n"
        "  - {rule: one-phone, per: phone, max: 1, within: 30d, action: refuse}\n"
        "rewards: {levels: 2}\n"
    )
    at = [(START + timedelta(minutes=i)).isoformat() for i in range(6)]
    scenario = {
        "registrations": [
            {"user_id": "c", "referrer_id": "b", "at": at[1], "phone_hash": "p-1"},  # run second
            {"user_id": "b", "referrer_id": "a", "at": at[0], "kind": "employee"},
            {"user_id": "a", "referrer_id": "c", "at": at[2]},
            {"user_id": "d", "referrer_id": "a", "at": at[3], "phone_hash": "p-1"},
            {"user_id": "c", "referrer_id": "b", "at": at[4]},
            {"user_id": "e", "code": "abcd-2345", "at": at[4]},
        ],
        "conversions": [{"user_id": "c", "product": "loan", "at": at[5], "attributes": {"amount": "5000"}}],
    }
    assert simulate(tmp_path, scenario, rules) == 0
    lines = capsys.readouterr().out.splitlines()
    body = [line.split(" ", 2)[0] + " " + line.split(": ", 1)[1] for line in lines if line.startswith(("reg", "con"))]
    assert body == [
        "registration[1] linked under a",
        "registration[0] linked under b",
        "registration[2] REFUSED (CYCLE): user_id: linking a under c closes a loop: a <- b <- c <- a",
        "registration[3] REFUSED (VELOCITY): deep/one-phone: 2 registrations with this phone within 30d (max 1)",
        "registration[4] already linked under b (nothing to do)",
        "registration[5] REFUSED (UNKNOWN_CODE): code: no referral code ABCD2345",
        "conversion[0] rewarded: level 1 b, level 2 a",
    ]
    assert "  rewards: 2 levels" in lines


def test_simulate_refuses_bad_policy_files_with_their_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules" / "referral", rules / "referral")
    bad = rules / "referral" / "extra.yaml"
    bad.write_text("policy: extra\ntitle: Extra\nvelocity:\n  - {rule: fast, per: referrer, max: 0, within: 1w}\n")
    (rules / "referral" / "z-copy.yaml").write_bytes(DEFAULT_POLICY.read_bytes())  # sorts after default.yaml
    scenario = {"registrations": [{"user_id": "b", "referrer_id": "a", "at": START.isoformat()}]}
    assert simulate(tmp_path, scenario, rules) == 1
    out = capsys.readouterr().out
    assert f"{bad}:4: velocity[0].max: " in out and f"{bad}:4: velocity[0].within: " in out
    assert f"{rules / 'referral' / 'z-copy.yaml'}:12: policy: policy id 'referral-default' is already used by" in out
    assert "2 policy files refused: fix them first (alliance rules validate" in out
    assert "registration[" not in out


@pytest.mark.parametrize(
    ("scenario", "problem"),
    [
        ({"registrations": [{"user_id": "b", "referrer_id": "a"}]}, "registrations[0].at is required"),
        (
            {"registrations": [{"user_id": "b", "referrer_id": "a", "at": "2026-11-23T10:00:00"}]},
            "registrations[0].at: '2026-11-23T10:00:00' needs a UTC offset",
        ),
        ({"registrations": [{"user_id": "b", "at": "2026-11-23T10:00:00Z"}]}, "referrer_id (or code) is required"),
        (
            {"registrations": [{"user_id": "b", "referrer": "a", "at": "2026-11-23T10:00:00Z"}]},
            "registrations[0]: unknown key(s) referrer (keys: ",
        ),
        ({"conversions": [{"user_id": "b", "at": "2026-11-23T10:00:00Z"}]}, "conversions[0].product is required"),
        ({"registrations": {}}, "registrations must be a list of objects"),
        ({"events": []}, 'must be a JSON object with "registrations" and "conversions"'),
        ({}, "has no registrations and no conversions"),
    ],
)
def test_scenario_problems_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], scenario: dict[str, Any], problem: str
) -> None:
    assert simulate(tmp_path, scenario) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'scenario.json'}: ") and problem in out, out


# -- alliance rules validate on referral policy files -----------------------------------------------


def test_validate_the_repository_rules_includes_the_referral_policy(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "validate", str(REPO / "rules")]) == 0
    out = capsys.readouterr().out
    assert f"OK {DEFAULT_POLICY} (referral policy referral-default, version " in out
    assert ", 3 velocity rules, rewards 1 level, 1 campaign)" in out
    assert f"OK {REPO}/rules/campaigns/referral-autumn-2026.yaml (referral-autumn-2026, version " in out
    total = len(list((REPO / "rules").rglob("*.yaml")))
    assert f"{total} of {total} files OK" in out


def test_validate_reports_referral_policy_errors_with_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    referral = tmp_path / "referral"
    referral.mkdir()
    bad = referral / "bad.yaml"
    bad.write_text("policy: bad\ntitle: Bad\nvelocity:\n  - {rule: r, per: person, max: 3, within: 1h}\nbugdet: 1\n")
    original, copy = referral / "a-default.yaml", referral / "z-copy.yaml"
    original.write_bytes(DEFAULT_POLICY.read_bytes())
    copy.write_bytes(DEFAULT_POLICY.read_bytes())
    elsewhere = tmp_path / "drafts" / "policy.yaml"  # a policy outside a referral directory, by its key
    elsewhere.parent.mkdir()
    elsewhere.write_text("policy: draft\ntitle: Draft\nrewards: {levels: 9}\n")
    campaign = tmp_path / "campaigns" / "c.yaml"
    campaign.parent.mkdir()
    campaign.write_bytes((REPO / "rules" / "campaigns" / "alliance-spend-2026.yaml").read_bytes())
    assert main(["rules", "validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.startswith(f"{bad}:4: velocity[0].per: ") for line in out)
    assert any(line.startswith(f"{bad}:5: bugdet: unknown field 'bugdet'") for line in out)
    assert any(line.startswith(f"{elsewhere}:3: rewards.levels: ") for line in out)
    assert any(line.startswith(f"OK {campaign} (alliance-spend-2026, ") for line in out)
    # a-default.yaml sorts first: z-copy.yaml is the one refused for its id, as the service would.
    assert any(line.startswith(f"OK {original} (referral policy referral-default") for line in out)
    assert any(
        line.startswith(f"{copy}:12: policy: policy id 'referral-default' is already used by {original}")
        for line in out
    )
    assert out[-1] == "2 of 5 files OK, 3 refused"
