"""Rule files for every service: located YAML, schema validation, the condition language, the
durable_rules adapter and hot reload of a rules directory."""

from services.foundation.rules.conditions import ConditionError, compile_condition
from services.foundation.rules.directory import RuleDirectory, report_rejection
from services.foundation.rules.document import load_document
from services.foundation.rules.engine import CompiledRuleset, Matcher, RulesetRemovedError
from services.foundation.rules.errors import RuleFileError, format_path
from services.foundation.rules.located_yaml import LineIndex, parse_yaml

__all__ = [
    "CompiledRuleset",
    "ConditionError",
    "LineIndex",
    "Matcher",
    "RuleDirectory",
    "RuleFileError",
    "RulesetRemovedError",
    "compile_condition",
    "format_path",
    "load_document",
    "parse_yaml",
    "report_rejection",
]
