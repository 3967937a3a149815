"""The dispatch rule file: what it sets, its defaults, and located refusals; when its cutoffs
happen for a process that runs in UTC."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from services.dispatch.policy import Policy, PolicyBook, load_policy
from services.foundation.rules.errors import RuleFileError
from services.foundation.scheduled import catch_up_window

pytestmark = pytest.mark.timeout(30)

REPO_FILE = Path(__file__).parents[2] / "rules" / "dispatch" / "default.yaml"
MINIMAL = b"policy: p\ntitle: t\nfallback_branch: HQ\n"


def test_the_repository_file_loads_with_its_terms() -> None:
    policy = load_policy("default.yaml", REPO_FILE.read_bytes())
    assert policy.cutoff == time(17) and policy.product_cutoffs == {"loan": time(16)}
    assert policy.preferred_window == timedelta(minutes=30) and policy.contact_within == timedelta(hours=2)
    assert policy.return_to_pool and policy.fallback_branch == "HQ-001" and policy.timezone.key == "Asia/Shanghai"
    assert [(g.job, g.at, g.products) for g in policy.groups()] == [
        ("cutoff", time(17), ()),
        ("cutoff:loan", time(16), ("loan",)),
    ]


def test_defaults_are_17_00_shanghai_30_minutes_and_no_sla() -> None:
    policy = load_policy("p.yaml", MINIMAL)
    assert (policy.cutoff, policy.timezone.key, policy.preferred_window, policy.contact_within) == (
        time(17),
        "Asia/Shanghai",
        timedelta(minutes=30),
        None,
    )


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (MINIMAL + b'cutoff: "5pm"\n', 4, "HH:MM"),
        (MINIMAL + b"preferred_window: 30 minutes\n", 4, "unit"),
        (MINIMAL + b"timezone: Mars/Olympus\n", 4, "unknown time zone"),
        (
            MINIMAL + b'products:\n  - {product: loan, cutoff: "16:00"}\n  - {product: loan, cutoff: "15:00"}\n',
            6,
            "twice",
        ),
        (b"policy: p\ntitle: t\n", None, "fallback_branch"),
        (b'policy: p\ntitle: t\nfallback_branch: "  "\n', 3, "blank"),
        (MINIMAL + b'products:\n  - {product: " ", cutoff: "16:00"}\n', 5, "blank"),
    ],
)
def test_a_bad_file_is_refused_with_its_line(text: bytes, line: int | None, words: str) -> None:
    with pytest.raises(RuleFileError) as refused:
        load_policy("p.yaml", text)
    if line is not None:
        assert refused.value.line == line
    assert words in str(refused.value)


def test_the_book_keeps_the_first_file_by_name() -> None:
    book = PolicyBook()
    assert book.policy.fallback_branch is None  # nothing loaded: the built-in terms
    first, second = Policy(id="a", fallback_branch="A"), Policy(id="b", fallback_branch="B")
    book.replace({"b.yaml": second, "a.yaml": first})
    assert book.policy.id == "a"


def test_the_17_00_cutoff_is_09_00_utc_and_a_manager_day_starts_at_local_midnight() -> None:
    just_after = datetime(2026, 12, 2, 9, 0, 30, tzinfo=UTC)  # 17:00:30 in Shanghai
    due, _ = catch_up_window(time(17), "Asia/Shanghai", just_after, timedelta(hours=1))
    assert due == [datetime(2026, 12, 2, 9, 0, tzinfo=UTC)]
    before, _ = catch_up_window(time(17), "Asia/Shanghai", just_after - timedelta(minutes=1), timedelta(hours=1))
    assert before == []  # 16:59:30 local: not yet
    policy = Policy()
    assert policy.day_start(just_after) == datetime(2026, 12, 1, 16, 0, tzinfo=UTC)  # 00:00 local
