"""Hot reload of a directory of rule files, e.g. a Kubernetes ConfigMap mount.

A ConfigMap volume looks like this, and is updated by swapping the `..data` symlink atomically:

    x.yaml -> ..data/x.yaml
    ..data -> ..2026_11_23_10_00_00.123456789
    ..2026_11_23_10_00_00.123456789/x.yaml

so names starting with '.' are skipped, files are read through their symlinks, and a change is
detected by content hash: the swap can leave modification times as they were.

A file that does not parse is rejected and its last good version stays in force; a new file that
is bad is not loaded. Rejections are logged (ERROR, logger "alliance.rules", with file, line,
path and reason as structured fields) and counted in alliance_rule_file_rejections_total.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge

from services.foundation.rules.errors import RuleFileError

logger = logging.getLogger("alliance.rules")

T = TypeVar("T")

# Module level: the default registry refuses a second metric of the same name.
REJECTIONS = Counter(
    "alliance_rule_file_rejections_total",
    "Rule file versions refused (bad syntax, schema or semantics); the previous version stays in force.",
    ["ruleset", "file"],
)
FILES_LOADED = Gauge("alliance_rule_files_loaded", "Rule files currently in force.", ["ruleset"])
LAST_RELOAD = Gauge(
    "alliance_rule_file_last_reload_timestamp_seconds",
    "When the rules in force last changed (Unix time).",
    ["ruleset"],
)


def report_rejection(ruleset: str, error: RuleFileError) -> None:
    """Log and count one refused file version (all its problems in one record)."""
    REJECTIONS.labels(ruleset=ruleset, file=error.file).inc()
    logger.error(
        str(error),
        extra={
            "ruleset": ruleset,
            "file": error.file,
            "line": error.line,
            "path": error.path,
            "reason": error.reason,
            "problems": [str(problem) for problem in error.problems],
        },
    )


class RuleDirectory(Generic[T]):
    """Keeps {file: parsed} in force for the rule files of one directory.

    `parse(file, content)` returns the parsed file or raises RuleFileError; `on_change` receives
    the complete, read-only mapping of what is in force whenever it changes (and on the first poll).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[str, bytes], T],
        on_change: Callable[[Mapping[str, T]], None],
        pattern: Sequence[str] = ("*.yaml", "*.yml"),
        name: str = "campaigns",
    ) -> None:
        self.path = str(path)
        self.name = name
        self._parse = parse
        self._on_change = on_change
        self._patterns = (pattern,) if isinstance(pattern, str) else tuple(pattern)
        self._hashes: dict[str, str] = {}  # file -> hash of the last version seen, good or bad
        self._good: dict[str, T] = {}
        self._errors: dict[str, RuleFileError] = {}
        self._notify = True  # the first poll always tells on_change what is in force

    @property
    def in_force(self) -> Mapping[str, T]:
        return MappingProxyType(dict(self._good))

    @property
    def last_errors(self) -> Mapping[str, RuleFileError]:
        """Files whose current version is rejected (their last good version, if any, is in force)."""
        return MappingProxyType(dict(self._errors))

    def up_to_date(self) -> bool:
        """Whether every file as it is on disk now has been read and what is in force told (tests
        and health checks wait on this instead of sleeping past a poll interval)."""
        contents, unreadable = self._read_files()
        digests = {file: hashlib.sha256(content).hexdigest() for file, content in contents.items()}
        return not unreadable and not self._notify and digests == self._hashes

    def poll(self) -> bool:
        """Read the directory once; True if what is in force changed and on_change was called."""
        contents, unreadable = self._read_files()
        return self._apply(contents, unreadable)

    async def watch(self, interval: float, stop: asyncio.Event) -> None:
        """Poll every `interval` seconds until `stop` is set. Reading happens in a worker thread;
        parse and on_change run on the loop thread. Never ends on an error: it logs and goes on."""
        while not stop.is_set():
            try:
                contents, unreadable = await asyncio.to_thread(self._read_files)
                self._apply(contents, unreadable)
            except Exception:
                logger.exception("reloading rule files failed", extra={"ruleset": self.name, "dir": self.path})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    def _read_files(self) -> tuple[dict[str, bytes], set[str]]:
        contents: dict[str, bytes] = {}
        unreadable: set[str] = set()
        for entry in sorted(os.listdir(self.path)):
            if entry.startswith(".") or not any(fnmatch.fnmatch(entry, p) for p in self._patterns):
                continue
            file = os.path.join(self.path, entry)
            try:
                if os.path.islink(file) and not os.path.exists(file):
                    raise FileNotFoundError(file)
                if not os.path.isfile(file):  # follows the symlink; a directory named x.yaml is not a file
                    continue
                contents[file] = Path(file).read_bytes()
            except FileNotFoundError:
                # A dangling link or a file gone since listing, e.g. caught in the middle of a
                # ConfigMap update: keep what we had and look again at the next poll.
                unreadable.add(file)
        return contents, unreadable

    def _apply(self, contents: Mapping[str, bytes], unreadable: set[str]) -> bool:
        changed = self._notify
        for file in [f for f in self._hashes if f not in contents and f not in unreadable]:
            del self._hashes[file]
            self._errors.pop(file, None)
            if file in self._good:
                del self._good[file]
                changed = True
                logger.info("rule file removed", extra={"ruleset": self.name, "file": file})
        for file, content in contents.items():
            digest = hashlib.sha256(content).hexdigest()
            if self._hashes.get(file) == digest:
                continue
            self._hashes[file] = digest
            if self._load(file, content):
                changed = True
        FILES_LOADED.labels(ruleset=self.name).set(len(self._good))
        if not changed:
            return False
        # Until on_change succeeds, every poll retries it, even without new changes.
        self._notify = True
        self._on_change(self.in_force)
        self._notify = False
        LAST_RELOAD.labels(ruleset=self.name).set(time.time())
        return True

    def _load(self, file: str, content: bytes) -> bool:
        """Parse one new version; True if it is now in force."""
        try:
            parsed = self._parse(file, content)
        except RuleFileError as error:
            self._reject(file, error)
            return False
        except Exception as error:
            logger.exception("parsing a rule file failed unexpectedly", extra={"file": file})
            self._reject(file, RuleFileError(file, None, "", f"could not be loaded: {error!r}"))
            return False
        self._errors.pop(file, None)
        self._good[file] = parsed
        logger.info("rule file loaded", extra={"ruleset": self.name, "file": file})
        return True

    def _reject(self, file: str, error: RuleFileError) -> None:
        self._errors[file] = error
        report_rejection(self.name, error)
        if file in self._good:
            logger.warning(
                "the previous version of the rule file stays in force", extra={"ruleset": self.name, "file": file}
            )
