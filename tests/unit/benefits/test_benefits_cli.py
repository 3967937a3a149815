"""`alliance benefits quote` against the repository's campaign files."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from services.cli.benefits_commands import add_benefits_parser

ROOT = Path(__file__).resolve().parents[3]


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_benefits_parser(parser.add_subparsers())
    args = parser.parse_args(["benefits", "quote", "--rules-dir", str(ROOT / "rules"), *argv])
    return int(args.func(args))


def test_quote_prints_the_quote_and_says_no_database_was_read(capsys: pytest.CaptureFixture[str]) -> None:
    code = run("--merchant", "m-cinema-01", "--amount", "80", "--at", "2026-11-24T19:00:00+08:00", "--aum", "120000")
    out = capsys.readouterr().out
    assert code == 0
    assert "tier gold, off-peak" in out
    assert "pays 48.00 CNY" in out
    assert "beats the public discount of 10%" in out
    assert "No database was read" in out


def test_quote_flags_a_merchant_whose_public_discount_is_higher(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--merchant", "m-market-02", "--amount", "260", "--at", "2026-11-28T10:00:00+08:00") == 0
    assert "does NOT beat the public discount of 8%" in capsys.readouterr().out


def test_unknown_merchant_needs_a_category(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--merchant", "m-nowhere", "--amount", "80", "--at", "2026-11-24T19:00:00+08:00") == 1
    assert "give its category" in capsys.readouterr().out
    assert (
        run("--merchant", "m-nowhere", "--amount", "80", "--at", "2026-11-24T19:00:00+08:00", "--category", "cinema")
        == 0
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        run("--merchant", "m-cinema-01", "--amount", "eighty")
    with pytest.raises(SystemExit):
        run("--merchant", "m-cinema-01", "--amount", "80", "--at", "2026-11-24T19:00:00")
