"""Hot reload of a rules directory: rejection keeps the last good version, ConfigMap swaps."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.foundation.rules.directory import RuleDirectory
from services.foundation.rules.errors import RuleFileError
from tests.support import eventually


def parse(file: str, content: bytes) -> str:
    """A toy format: 'value' on line 1, or 'bad' somewhere, which is an error at that line."""
    lines = content.decode().splitlines()
    for number, line in enumerate(lines, start=1):
        if line.strip() == "bad":
            raise RuleFileError(file, number, "value", "must not be bad")
    return lines[0] if lines else ""


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.changed = asyncio.Event()  # for watch(): on_change runs on the loop thread

    def __call__(self, in_force: Mapping[str, str]) -> None:
        self.calls.append(dict(in_force))
        self.changed.set()

    async def next_change(self) -> dict[str, str]:
        await asyncio.wait_for(self.changed.wait(), timeout=3)
        self.changed.clear()
        return self.last

    @property
    def last(self) -> dict[str, str]:
        return self.calls[-1]


def rejections(ruleset: str, file: str) -> float:
    return REGISTRY.get_sample_value("alliance_rule_file_rejections_total", {"ruleset": ruleset, "file": file}) or 0.0


def loaded_gauge(ruleset: str) -> float | None:
    return REGISTRY.get_sample_value("alliance_rule_files_loaded", {"ruleset": ruleset})


def make(tmp_path: Path, name: str) -> tuple[RuleDirectory[str], Recorder]:
    recorder = Recorder()
    return RuleDirectory(tmp_path, parse=parse, on_change=recorder, name=name), recorder


def test_first_poll_loads_matching_files_and_skips_others(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("alpha\n")
    (tmp_path / "b.yml").write_text("beta\n")
    (tmp_path / "notes.txt").write_text("ignored\n")
    (tmp_path / ".hidden.yaml").write_text("ignored\n")
    (tmp_path / "dir.yaml").mkdir()
    directory, recorder = make(tmp_path, "first-poll")
    assert directory.poll() is True
    assert recorder.last == {f"{tmp_path}/a.yaml": "alpha", f"{tmp_path}/b.yml": "beta"}
    assert loaded_gauge("first-poll") == 2
    assert REGISTRY.get_sample_value("alliance_rule_file_last_reload_timestamp_seconds", {"ruleset": "first-poll"})
    assert directory.poll() is False  # nothing changed
    assert len(recorder.calls) == 1


def test_first_poll_of_an_empty_directory_still_reports(tmp_path: Path) -> None:
    directory, recorder = make(tmp_path, "empty")
    assert directory.poll() is True
    assert recorder.calls == [{}]


def test_bad_version_keeps_the_good_one_in_force_and_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    file = tmp_path / "x.yaml"
    key = str(file)
    file.write_text("v1\n")
    directory, recorder = make(tmp_path, "good-bad")
    directory.poll()
    assert recorder.last == {key: "v1"}

    file.write_text("v2\nok\nbad\n")
    with caplog.at_level(logging.ERROR, logger="alliance.rules"):
        assert directory.poll() is False
    assert recorder.last == {key: "v1"}  # the last good version stays in force
    assert len(recorder.calls) == 1
    assert rejections("good-bad", key) == 1
    assert directory.last_errors[key].line == 3
    record = next(r for r in caplog.records if r.levelno == logging.ERROR)
    assert record.getMessage() == f"{key}:3: value: must not be bad"
    assert (record.file, record.line, record.path, record.reason) == (key, 3, "value", "must not be bad")

    directory.poll()  # the same bad content is not reported again
    assert rejections("good-bad", key) == 1

    file.write_text("v3\n")
    assert directory.poll() is True
    assert recorder.last == {key: "v3"}
    assert directory.last_errors == {}


def test_a_new_bad_file_is_not_loaded(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text("good\n")
    (tmp_path / "new.yaml").write_text("bad\n")
    directory, recorder = make(tmp_path, "new-bad")
    directory.poll()  # at startup, bad files are reported the same way
    assert recorder.last == {f"{tmp_path}/good.yaml": "good"}
    assert rejections("new-bad", f"{tmp_path}/new.yaml") == 1
    assert set(directory.last_errors) == {f"{tmp_path}/new.yaml"}


def test_deleted_file_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("alpha\n")
    (tmp_path / "b.yaml").write_text("beta\n")
    directory, recorder = make(tmp_path, "delete")
    directory.poll()
    (tmp_path / "b.yaml").unlink()
    assert directory.poll() is True
    assert recorder.last == {f"{tmp_path}/a.yaml": "alpha"}
    assert loaded_gauge("delete") == 1


def test_change_is_seen_by_content_even_with_the_same_mtime(tmp_path: Path) -> None:
    file = tmp_path / "a.yaml"
    file.write_text("one\n")
    stat = file.stat()
    directory, recorder = make(tmp_path, "mtime")
    directory.poll()
    file.write_text("two\n")
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert directory.poll() is True
    assert recorder.last == {str(file): "two"}


def test_unexpected_parse_failure_is_a_rejection(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x\n")

    def broken(file: str, content: bytes) -> str:
        raise KeyError("bug")

    directory = RuleDirectory(tmp_path, parse=broken, on_change=Recorder(), name="broken")
    directory.poll()
    assert "could not be loaded" in directory.last_errors[f"{tmp_path}/a.yaml"].reason
    assert rejections("broken", f"{tmp_path}/a.yaml") == 1


def test_on_change_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("x\n")
    calls: list[dict[str, str]] = []

    def flaky(in_force: Mapping[str, str]) -> None:
        calls.append(dict(in_force))
        if len(calls) == 1:
            raise RuntimeError("not now")

    directory = RuleDirectory(tmp_path, parse=parse, on_change=flaky, name="flaky")
    with pytest.raises(RuntimeError):
        directory.poll()
    assert directory.poll() is True
    assert len(calls) == 2


def test_configmap_symlink_swap(tmp_path: Path) -> None:
    # The layout kubelet writes: visible files are symlinks into ..data, which points at a
    # timestamped directory and is replaced atomically (rename of a new symlink over it).
    old = tmp_path / "..2026_11_23_10_00_00.000000001"
    old.mkdir()
    (old / "x.yaml").write_text("first\n")
    (tmp_path / "..data").symlink_to(old.name)
    (tmp_path / "x.yaml").symlink_to("..data/x.yaml")
    directory, recorder = make(tmp_path, "configmap")
    directory.poll()
    assert recorder.last == {f"{tmp_path}/x.yaml": "first"}

    new = tmp_path / "..2026_11_23_10_05_00.000000002"
    new.mkdir()
    (new / "x.yaml").write_text("second\n")
    (tmp_path / "..data_tmp").symlink_to(new.name)
    os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    # kubelet keeps the old mtime semantics loosely; make them equal to be sure it is the content.
    os.utime(new / "x.yaml", ns=(old.stat().st_atime_ns, (old / "x.yaml").stat().st_mtime_ns))
    for stale in old.iterdir():
        stale.unlink()
    old.rmdir()

    assert directory.poll() is True
    assert recorder.last == {f"{tmp_path}/x.yaml": "second"}  # only the visible name, no ..data copies


def test_a_dangling_link_keeps_the_last_version_until_it_is_gone(tmp_path: Path) -> None:
    target = tmp_path / "..data"
    target.mkdir()
    (target / "x.yaml").write_text("kept\n")
    (tmp_path / "x.yaml").symlink_to("..data/x.yaml")
    directory, recorder = make(tmp_path, "dangling")
    directory.poll()
    (target / "x.yaml").unlink()
    assert directory.poll() is False
    assert directory.in_force == {f"{tmp_path}/x.yaml": "kept"}
    (tmp_path / "x.yaml").unlink()
    assert directory.poll() is True
    assert recorder.last == {}


async def test_watch_picks_up_changes_and_stops(tmp_path: Path) -> None:
    file = tmp_path / "a.yaml"
    file.write_text("one\n")
    directory, recorder = make(tmp_path, "watch")
    stop = asyncio.Event()
    task = asyncio.create_task(directory.watch(0.01, stop))
    assert await recorder.next_change() == {str(file): "one"}
    file.write_text("two\n")
    assert await recorder.next_change() == {str(file): "two"}
    stop.set()
    await asyncio.wait_for(task, timeout=2)


async def test_watch_survives_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "not-yet"
    recorder = Recorder()
    directory = RuleDirectory(missing, parse=parse, on_change=recorder, name="watch-errors")
    stop = asyncio.Event()

    async def several_polls_failed() -> bool:
        return sum("reloading rule files failed" in r.getMessage() for r in caplog.records) >= 3

    with caplog.at_level(logging.ERROR, logger="alliance.rules"):
        task = asyncio.create_task(directory.watch(0.01, stop))
        # Polls of a directory that does not exist yet fail, are logged, and the watch goes on.
        await eventually(several_polls_failed, timeout=5, every=0.01)
        assert not task.done()
        missing.mkdir()
        (missing / "a.yaml").write_text("late\n")
        assert await recorder.next_change() == {f"{missing}/a.yaml": "late"}
    stop.set()
    await asyncio.wait_for(task, timeout=2)


def test_up_to_date_says_whether_every_file_on_disk_has_been_read(tmp_path: Path) -> None:
    file = tmp_path / "x.yaml"
    file.write_text("v1\n")
    directory, _ = make(tmp_path, "up-to-date")
    assert not directory.up_to_date()  # never polled
    directory.poll()
    assert directory.up_to_date()
    file.write_text("v2\nok\nbad\n")  # a bad version counts as read once refused
    assert not directory.up_to_date()
    directory.poll()
    assert directory.up_to_date()
    (tmp_path / "y.yaml").write_text("new\n")
    assert not directory.up_to_date()
    directory.poll()
    file.unlink()
    assert not directory.up_to_date()
    directory.poll()
    assert directory.up_to_date()
