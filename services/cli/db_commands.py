"""`alliance db upgrade NAME`: upgrade a service's schema (what services also do at start)."""

from __future__ import annotations

import argparse

from services.cli.services_registry import SERVICES
from services.foundation import migrations
from services.foundation.db import Database


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    db = commands.add_parser("db", help="database schema", description="Database schema migrations.")
    actions = db.add_subparsers(dest="action", metavar="ACTION", required=True)
    upgrade = actions.add_parser("upgrade", help="upgrade a service's schema to the newest revision")
    upgrade.add_argument("service", choices=sorted(SERVICES))
    upgrade.add_argument("--database-url", help="default: the service's DATABASE_URL setting")
    upgrade.set_defaults(func=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> int:
    entry = SERVICES[args.service]
    url = args.database_url or entry.settings().database_url
    db = Database(url)
    try:
        migrations.upgrade(db, entry.migrations)
        print(f"{args.service}: schema at revision {migrations.current_revision(db)}")
    finally:
        db.close()
    return 0
