"""Each service owns its schema: its own table registry and MetaData, never SQLModel's global one.

    class PointsTable(SQLModel, registry=registry()):  # the service's own table registry
        pass

    SCHEMA = ServiceSchema("points", PointsTable, migrations=Path(__file__).parent / "migrations")

    class PointsAccount(PointsTable, table=True): ...

Two services can then both define a table called `account`, and a service's migration check and
autogenerate see exactly its own tables. The tables the kit itself needs in every service's
database (outbox, inbox, parked events, scheduled-job runs) are declared once on `KitTable` and
copied into each service's MetaData, so they migrate with the service that carries them.

Why copies work: a kit table has the same name and columns in every service's database, so the
kit's own statements (built from `KitTable` classes) run unchanged against any of them.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import MetaData, Table
from sqlalchemy.orm import registry
from sqlmodel import SQLModel


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Core table, for set-based statements (the stubs do not know `__table__`)."""
    table = getattr(model, "__table__", None)
    if not isinstance(table, Table):
        raise TypeError(f"{model.__name__} is not a table model")
    return table


class KitTable(SQLModel, registry=registry()):
    """Base of the tables every service carries (declared in the foundation's own modules)."""


def _kit_tables_loaded() -> MetaData:
    # The modules that declare kit tables, imported here so no service has to remember them.
    from services.foundation import idempotency, inbox, outbox, scheduled  # noqa: F401

    return KitTable.metadata


class ServiceSchema:
    def __init__(self, service: str, base: type[SQLModel], *, migrations: Path) -> None:
        if base.metadata is SQLModel.metadata or base.metadata is KitTable.metadata:
            raise ValueError(f"{service}: its table base needs a registry of its own (registry=registry())")
        self.service = service
        self.base = base
        self.migrations = Path(migrations)
        self.metadata: MetaData = base.metadata
        self._copied: set[str] = set()  # kit tables already copied in

    def complete_metadata(self) -> MetaData:
        """The service's tables plus the kit's: what its migrations must build, exactly."""
        for table in _kit_tables_loaded().tables.values():
            mine = self.metadata.tables.get(table.name)
            if mine is None:
                table.to_metadata(self.metadata)
            elif mine.metadata is self.metadata and table.name not in self._copied:
                raise ValueError(f"{self.service}: table {table.name} is the kit's; name the service's own otherwise")
            self._copied.add(table.name)
        return self.metadata

    @property
    def versions(self) -> Path:
        return self.migrations / "versions"
