"""The only module that talks to durable_rules: register rulesets, match one fact, remove them.

Rules come in as (rule_id, expression) where the expression is a durable_rules condition for one
fact, as produced by conditions.compile_condition. A match returns every rule the fact satisfies.

The quirks of the C core this module contains (measured on durable-rules 2.0.28, Python 3.11):

- no thread safety, and the handle table is global: every call into the engine, from any Matcher,
  holds the process-wide _ENGINE_LOCK; the Host's dispatcher threads are never started;
- `assert_fact` fires every satisfied rule; each evaluation uses a fresh sid whose state is
  deleted afterwards (a ruleset holds at most 1,024 sids);
- a fact that fires more than 64 times in one ruleset fails with error 303 (an $or fires once per
  satisfied alternative), so rules are split into rulesets of at most 64 firings;
- building a ruleset of more than ~512 comparisons never returns (measured: the process hangs), so
  a ruleset also holds at most MAX_NODES_PER_RULESET comparisons;
- `delete_state` after a fact that matched nothing segfaults if the ruleset has never run an
  action; every ruleset gets a hidden warm-up rule that is fired once when it is created;
- a negative pattern ($nex, ...) also matches the engine's own state object, which is re-asserted
  after each action: without a guard that loops forever. Every rule is ANDed with a marker field
  that only facts posted here carry;
- a ruleset name cannot be registered twice, so every load gets a new name (name~serial#chunk);
- a text value compared with a number ("7" against 7, "200" against amount >= 200) is answered
  differently from one call to the next for the very same fact (measured with random facts, see
  tests/unit/rules/test_rules_fact_keys.py): facts must carry numbers where rules compare numbers.

Answers are remembered per ruleset (fact_keys.py): the engine's Python host costs tens of
microseconds per fact, and a service's facts repeat.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import durable_rules_engine
from durable import engine as durable

from services.foundation.rules.fact_keys import FactKey, FactKeyFunction, fact_key_function

logger = logging.getLogger("alliance.rules")

MAX_FIRINGS_PER_RULESET = 64
DEFAULT_MEMO_SIZE = 4096
# Half of where the engine was measured to hang, because shared nodes make the count approximate.
MAX_NODES_PER_RULESET = 256

_FACT_MARKER = "_alliance_fact"
_WARMUP_FIELD = "_alliance_warmup"
_WARMUP_ACTION = "_alliance_warmup"
_GUARD = {"$ex": {_FACT_MARKER: 1}}
# Fields a caller's fact cannot set: the engine's session and identity keys, and ours.
_RESERVED = frozenset({"sid", "id", _FACT_MARKER, _WARMUP_FIELD})
_LOGICAL = ("$and", "$or")

_ENGINE_LOCK = threading.Lock()


class RulesetRemovedError(RuntimeError):
    """match() on a ruleset that was removed (a reload raced the caller): retry with the new one."""


@dataclass(frozen=True)
class _Chunk:
    name: str  # the durable_rules ruleset name
    first: int  # index of its first rule in the CompiledRuleset


class CompiledRuleset:
    """A handle to rules registered in a Matcher; opaque apart from its name and rule ids."""

    __slots__ = ("_chunks", "_fact_key", "_memo", "_removed", "name", "rule_ids")

    def __init__(
        self, name: str, rule_ids: tuple[str, ...], chunks: tuple[_Chunk, ...], fact_key: FactKeyFunction
    ) -> None:
        self.name = name
        self.rule_ids = rule_ids
        self._chunks = chunks
        self._removed = False
        self._fact_key = fact_key
        # fact key -> the engine's answer; dies with the ruleset, so a reload never sees old answers
        self._memo: dict[FactKey, tuple[str, ...]] = {}

    @property
    def engine_rulesets(self) -> int:
        return len(self._chunks)

    def __repr__(self) -> str:
        return f"CompiledRuleset({self.name!r}, {len(self.rule_ids)} rules, {len(self._chunks)} rulesets)"


class _Host(durable.Host):  # type: ignore[misc]  # durable_rules ships no types
    def __init__(self, actions: Mapping[str, Any]) -> None:
        self._actions = actions
        super().__init__()

    def _run(self) -> None:
        # No background dispatcher threads: they would call the C core outside the lock.
        pass

    def get_action(self, action_name: str) -> Any:
        return self._actions[action_name]

    def drop(self, name: str) -> None:
        ruleset = self._ruleset_directory.pop(name, None)
        if ruleset is None:  # its registration failed
            return
        self._ruleset_list.remove(ruleset)
        durable_rules_engine.delete_ruleset(ruleset._handle)


class Matcher:
    """Matches facts against named sets of rules. Thread-safe; cheap to share.

    Answers are remembered per ruleset for up to `memo_size` distinct facts, keyed so that facts
    the rules cannot tell apart share an entry (see fact_keys.py); 0 asks the engine every time.
    """

    def __init__(self, memo_size: int = DEFAULT_MEMO_SIZE) -> None:
        self._memo_size = memo_size
        self._actions: dict[str, Any] = {_WARMUP_ACTION: _ignore}
        self._host = _Host(self._actions)
        self._serial = itertools.count(1)
        self._sids = itertools.count(1)
        self._fired: list[int] | None = None  # the rule indexes the running evaluation fired
        self._live: set[CompiledRuleset] = set()

    def add(self, name: str, rules: Sequence[tuple[str, Mapping[str, Any]]]) -> CompiledRuleset:
        """Register rules as (rule_id, durable expression). Raises ValueError if they cannot be."""
        ids = tuple(rule_id for rule_id, _ in rules)
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: duplicate rule ids")
        plan = _plan(name, [(rule_id, _private_copy(rule_id, expr)) for rule_id, expr in rules])
        serial = next(self._serial)
        chunks: list[_Chunk] = []
        with _ENGINE_LOCK:
            try:
                first = 0
                for number, chunk_rules in enumerate(plan):
                    chunk = _Chunk(f"{_safe(name)}~{serial}#{number}", first)
                    chunks.append(chunk)
                    self._register(chunk, chunk_rules)
                    first += len(chunk_rules)
            except Exception as error:
                for chunk in chunks:
                    self._drop(chunk)
                raise ValueError(f"the rules engine refused {name}: {error}") from error
        compiled = CompiledRuleset(name, ids, tuple(chunks), fact_key_function([expr for _, expr in rules]))
        self._live.add(compiled)
        return compiled

    def match(self, compiled: CompiledRuleset, fact: Mapping[str, Any]) -> list[str]:
        """Ids of every rule `fact` satisfies, in the order the rules were given."""
        key = compiled._fact_key(fact) if self._memo_size else None
        if key is not None:
            known = compiled._memo.get(key)
            if known is not None:
                if compiled._removed:
                    raise RulesetRemovedError(compiled.name)
                return list(known)
        payload = {key: value for key, value in fact.items() if key not in _RESERVED}
        payload[_FACT_MARKER] = 1
        fired: set[int] = set()
        with _ENGINE_LOCK:
            if compiled._removed:
                raise RulesetRemovedError(compiled.name)
            for chunk in compiled._chunks:
                fired.update(chunk.first + index for index in self._evaluate(chunk.name, payload))
        matched = [compiled.rule_ids[index] for index in sorted(fired)]
        if key is not None:
            memo = compiled._memo
            if len(memo) >= self._memo_size:
                # Drop the oldest. Matches run on several threads; losing this race only means
                # another entry went first.
                with contextlib.suppress(RuntimeError, StopIteration, KeyError):
                    del memo[next(iter(memo))]
            memo[key] = tuple(matched)
        return matched

    def remove(self, compiled: CompiledRuleset) -> None:
        """Unregister; later match() calls on it raise RulesetRemovedError. Idempotent."""
        with _ENGINE_LOCK:
            if compiled._removed:
                return
            compiled._removed = True
            for chunk in compiled._chunks:
                self._drop(chunk)
        self._live.discard(compiled)

    def close(self) -> None:
        for compiled in list(self._live):
            self.remove(compiled)

    # -- under _ENGINE_LOCK --------------------------------------------------------------------

    def _register(self, chunk: _Chunk, rules: list[tuple[str, dict[str, Any]]]) -> None:
        definition: dict[str, Any] = {}
        for index, (_, expr) in enumerate(rules):
            action = f"{chunk.name}/{index}"
            self._actions[action] = self._recorder(index)
            definition[f"r{index}"] = {"all": [{"m": _guarded(expr)}], "run": action}
        definition["warmup"] = {"all": [{"m": {"$ex": {_WARMUP_FIELD: 1}}}], "run": _WARMUP_ACTION}
        self._host.set_rulesets({chunk.name: definition})
        self._host.assert_fact(chunk.name, {_WARMUP_FIELD: 1, "sid": "warmup"})
        self._host.delete_state(chunk.name, "warmup")

    def _recorder(self, index: int) -> Any:
        # durable_rules wants a plain one-argument function; it must never raise (the engine
        # would swallow the exception into the state and carry on).
        def record(c: Any) -> None:
            if self._fired is not None:
                self._fired.append(index)

        return record

    def _evaluate(self, name: str, payload: dict[str, Any]) -> list[int]:
        sid = str(next(self._sids))
        fired: list[int] = []
        self._fired = fired
        try:
            state = self._host.assert_fact(name, {**payload, "sid": sid})
        except durable.MessageNotHandledException:
            state = None
        except durable_rules_engine.error as error:
            raise RuntimeError(f"rules engine failed on ruleset {name}: {error}") from error
        finally:
            self._fired = None
            self._forget(name, sid)
        if isinstance(state, dict) and "exception" in state:
            logger.error("a rule action failed in %s: %s", name, state["exception"])
        return fired

    def _forget(self, name: str, sid: str) -> None:
        # Error 309 (sid not found) only means no state was created for this sid.
        with contextlib.suppress(durable_rules_engine.error):
            self._host.delete_state(name, sid)

    def _drop(self, chunk: _Chunk) -> None:
        self._host.drop(chunk.name)
        prefix = f"{chunk.name}/"
        for action in [a for a in self._actions if a.startswith(prefix)]:
            del self._actions[action]


def _ignore(c: Any) -> None:
    pass


def _safe(name: str) -> str:
    # The engine reads '$state'/'$flow' in a name as chart types; keep names to plain characters.
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", name)


def _guarded(expr: dict[str, Any]) -> dict[str, Any]:
    clauses = expr["$and"] if set(expr) == {"$and"} else [expr]
    return {"$and": [_GUARD, *clauses]}


def _private_copy(rule_id: str, expr: Mapping[str, Any]) -> dict[str, Any]:
    # The engine mutates definitions it is given; a JSON round trip also proves the expression
    # is plain data.
    try:
        copy = json.loads(json.dumps(expr))
    except (TypeError, ValueError) as error:
        raise ValueError(f"rule {rule_id}: expression is not plain JSON data: {error}") from None
    problem = _shape_problem(copy)
    if problem:
        raise ValueError(f"rule {rule_id}: {problem}")
    checked: dict[str, Any] = copy
    return checked


def _shape_problem(expr: Any) -> str | None:
    # Measured: the engine reads only one key of {"a": 1, "b": 2}, silently; insist on one.
    if not isinstance(expr, dict) or len(expr) != 1:
        return f"each part of an expression must be a mapping with one key, not {expr!r}"
    ((key, value),) = expr.items()
    if key in _LOGICAL:
        if not isinstance(value, list) or not value:
            return f"{key} needs a non-empty list"
        return next(filter(None, (_shape_problem(child) for child in value)), None)
    if key.startswith("$"):
        if not isinstance(value, dict) or len(value) != 1:
            return f"{key} needs a mapping with one field"
        value = next(iter(value.values()))
    if isinstance(value, dict | list) or value is None:
        return f"{key} must compare with a single value, not {value!r}"
    return None


def _plan(name: str, rules: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Split rules into engine rulesets within the firing and size limits, keeping their order."""
    plan: list[list[tuple[str, dict[str, Any]]]] = []
    current: list[tuple[str, dict[str, Any]]] = []
    firings = nodes = 0
    for rule_id, expr in rules:
        rule_firings, rule_nodes = firing_bound(expr), count_nodes(expr) + 1  # + the guard
        if rule_firings > MAX_FIRINGS_PER_RULESET:
            raise ValueError(
                f"{name}: rule {rule_id} can fire {rule_firings} times for one fact; "
                f"the engine allows {MAX_FIRINGS_PER_RULESET}"
            )
        if rule_nodes > MAX_NODES_PER_RULESET:
            raise ValueError(
                f"{name}: rule {rule_id} has {rule_nodes} comparisons; "
                f"the engine allows {MAX_NODES_PER_RULESET} per rule"
            )
        if current and (firings + rule_firings > MAX_FIRINGS_PER_RULESET or nodes + rule_nodes > MAX_NODES_PER_RULESET):
            plan.append(current)
            current, firings, nodes = [], 0, 0
        current.append((rule_id, expr))
        firings += rule_firings
        nodes += rule_nodes
    if current:
        plan.append(current)
    return plan


def count_nodes(expr: Mapping[str, Any]) -> int:
    """Comparisons in an expression (each is a node in the engine's network)."""
    total = 0
    for key, value in expr.items():
        total += sum(count_nodes(child) for child in value) if key in _LOGICAL else 1
    return total


def firing_bound(expr: Mapping[str, Any]) -> int:
    """How many times one fact can fire a rule with this expression, at most.

    The engine fires once per satisfied combination of $or alternatives. Alternatives that
    exclude each other (equalities on one field, or "absent" versus tests of that field) count once.
    """
    bound = 1
    for key, value in expr.items():
        if key == "$and":
            bound *= math.prod(firing_bound(child) for child in value)
        elif key == "$or":
            bounds = [firing_bound(child) for child in value]
            bound *= max(bounds) if _exclusive(value) else sum(bounds)
    return bound


def _exclusive(alternatives: list[Mapping[str, Any]]) -> bool:
    equalities = [_equality(alt) for alt in alternatives]
    if all(equalities):
        fields = {field for field, _ in equalities}  # type: ignore[misc]
        values = [value for _, value in equalities]  # type: ignore[misc]
        kinds = {isinstance(value, str) for value in values}
        distinct = {value if isinstance(value, str) else float(value) for value in values}
        return len(fields) == 1 and len(kinds) == 1 and len(distinct) == len(values)
    first, rest = alternatives[0], alternatives[1:]
    absent = first.get("$nex") if len(first) == 1 else None
    if isinstance(absent, Mapping) and len(absent) == 1:
        (field,) = absent
        return all(_fields(alt) == {field} for alt in rest)
    return False


def _equality(expr: Mapping[str, Any]) -> tuple[str, Any] | None:
    if len(expr) != 1:
        return None
    ((key, value),) = expr.items()
    if key.startswith("$") or isinstance(value, dict | list | bool) or value is None:
        return None
    return key, value


def _fields(expr: Mapping[str, Any]) -> set[str]:
    fields: set[str] = set()
    for key, value in expr.items():
        if key in _LOGICAL:
            for child in value:
                fields |= _fields(child)
        elif key.startswith("$"):
            fields |= set(value)
        else:
            fields.add(key)
    return fields
