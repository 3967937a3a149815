"""A hot-reloaded book of compiled rule files: what every service's rule book shares.

`replace({file: document})` puts exactly those documents in force, compiling only new versions
into the engine. Readers work on one immutable snapshot, swapped by a single assignment, so a
reader sees the old set or the new one, never a mix. The rules:

- a file whose document id an earlier file (by name) already uses is refused;
- a file the engine refuses (`compile` raises RuleFileError) is refused;
- a refused file keeps its last good version in force, unless that version's id is now taken;
- compiled rules no reader can reach any more are removed from the engine after the swap; a
  reader caught on the old snapshot gets RulesetRemovedError and `on_current` runs it again on
  the new one;
- each new refusal is reported once (log and metric), not on every reload.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Generic, Protocol, TypeVar

from services.foundation.rules.directory import report_rejection
from services.foundation.rules.engine import CompiledRuleset, Matcher, RulesetRemovedError
from services.foundation.rules.errors import RuleFileError


class RuleDocument(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def file(self) -> str: ...
    @property
    def id_line(self) -> int | None: ...


class Entry(Protocol):
    """What a book keeps per file: its document, its compiled rules, and what the book derives."""

    @property
    def document(self) -> RuleDocument: ...
    @property
    def compiled(self) -> CompiledRuleset | None: ...


D = TypeVar("D", bound=RuleDocument)
E = TypeVar("E", bound=Entry)
R = TypeVar("R")


@dataclass(frozen=True)
class Snapshot(Generic[E]):
    by_file: Mapping[str, E] = field(default_factory=dict)
    ordered: tuple[E, ...] = ()  # priority desc, then id


def duplicate_ids(documents: Mapping[str, RuleDocument], kind: str = "campaign") -> dict[str, RuleFileError]:
    """Files whose document id an earlier file (by name) already uses: {file: error}."""
    first: dict[str, str] = {}
    errors: dict[str, RuleFileError] = {}
    for file in sorted(documents):
        document = documents[file]
        if document.id in first:
            errors[file] = RuleFileError(
                file,
                document.id_line,
                kind,
                f"{kind} id '{document.id}' is already used by {first[document.id]}; "
                "this file is not loaded until the id is changed",
            )
        else:
            first[document.id] = file
    return errors


class RuleBook(Generic[D, E]):
    """`entry(document, compiled)` builds the book's entry; `compile(matcher, document)` registers
    a document's rules (None: it has none). `include` leaves documents out of this book entirely
    (e.g. campaigns without a benefits section)."""

    def __init__(
        self,
        name: str,
        compile: Callable[[Matcher, D], CompiledRuleset | None],
        entry: Callable[[D, CompiledRuleset | None], E],
        *,
        matcher: Matcher | None = None,
        include: Callable[[D], bool] = lambda _: True,
        report_duplicates: bool = True,
        kind: str = "campaign",
    ) -> None:
        self.name = name  # the ruleset label of metrics and logs
        self.matcher = matcher or Matcher()
        self._compile = compile
        self._entry = entry
        self._include = include
        self._report_duplicates = report_duplicates
        self._kind = kind  # what a document is called in messages: "campaign", "referral policy"
        self.snapshot: Snapshot[E] = Snapshot()
        self._rejected: dict[str, RuleFileError] = {}
        self._replacing = threading.Lock()

    @property
    def rejected(self) -> Mapping[str, RuleFileError]:
        """Files refused by the book itself (duplicate ids, engine limits)."""
        return MappingProxyType(dict(self._rejected))

    def replace(self, documents: Mapping[str, D], on_swap: Callable[[Snapshot[E]], None] | None = None) -> None:
        """Put exactly these documents ({file: document}) in force. `on_swap` runs with the new
        snapshot before the old rules leave the engine (for what a book derives from it)."""
        with self._replacing:
            old = self.snapshot
            duplicates = duplicate_ids(documents, self._kind)
            entries: dict[str, E] = {}
            created: list[CompiledRuleset] = []
            rejected: dict[str, RuleFileError] = dict(duplicates) if self._report_duplicates else {}
            try:
                for file in sorted(documents):
                    document = documents[file]
                    if file in duplicates or not self._include(document):
                        continue
                    found = self._current(document, old.by_file.get(file), created, rejected)
                    if found is not None:
                        entries[file] = found
            except BaseException:
                for compiled in created:
                    self.matcher.remove(compiled)
                raise
            self._keep_previous(rejected, old, entries)
            ordered = sorted(entries.values(), key=lambda e: (-e.document.priority, e.document.id))
            self.snapshot = new = Snapshot(MappingProxyType(entries), tuple(ordered))
            if on_swap is not None:
                on_swap(new)
            kept = {id(e.compiled) for e in entries.values()}
            for previous in old.ordered:
                if previous.compiled is not None and id(previous.compiled) not in kept:
                    self.matcher.remove(previous.compiled)
            for file, error in rejected.items():
                if str(self._rejected.get(file)) != str(error):
                    report_rejection(self.name, error)
            self._rejected = rejected

    def on_current(self, work: Callable[[Snapshot[E]], R]) -> R:
        """Run `work` on the snapshot in force; again on the new one if a reload removed rules it
        was using."""
        while True:
            snapshot = self.snapshot
            try:
                return work(snapshot)
            except RulesetRemovedError:
                if self.snapshot is snapshot:
                    raise

    def _current(
        self, document: D, previous: E | None, created: list[CompiledRuleset], rejected: dict[str, RuleFileError]
    ) -> E | None:
        if previous is not None and previous.document.version == document.version:
            return self._entry(document, previous.compiled)
        try:
            compiled = self._compile(self.matcher, document)
        except RuleFileError as error:
            rejected[document.file] = error
            return None
        if compiled is not None:
            created.append(compiled)
        return self._entry(document, compiled)

    @staticmethod
    def _keep_previous(rejected: Mapping[str, RuleFileError], old: Snapshot[E], entries: dict[str, E]) -> None:
        # A refused file keeps its last good version in force, unless that one's id is now taken.
        ids = {entry.document.id for entry in entries.values()}
        for file in sorted(rejected):
            previous = old.by_file.get(file)
            if previous is not None and previous.document.id not in ids:
                entries[file] = previous
                ids.add(previous.document.id)
