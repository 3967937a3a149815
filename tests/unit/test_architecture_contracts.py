"""The import contracts of pyproject.toml name every registered service, so a new service is
checked from its first commit (import-linter only checks what the contracts list)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from services.registry import SERVICES

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    return {contract["name"]: contract for contract in config}


def test_every_registered_service_is_in_every_cross_service_contract() -> None:
    modules = {f"services.{name}" for name in SERVICES}
    found = contracts()
    foundation = next(c for c in found.values() if c["type"] == "forbidden")
    independence = next(c for c in found.values() if c["type"] == "independence")
    top = next(c for c in found.values() if c["type"] == "layers" and "containers" not in c)
    assert modules <= set(foundation["forbidden_modules"]), "the foundation must be forbidden to import it"
    assert modules <= set(independence["modules"]), "it must be independent of the other services"
    assert modules <= {m for layer in top["layers"] for m in str(layer).split(" | ")}, "it must sit in the layers"


def test_every_registered_service_has_its_own_layers() -> None:
    containers = {c for contract in contracts().values() for c in contract.get("containers", [])}
    assert {f"services.{name}" for name in SERVICES} <= containers
