"""`alliance`: the one command of the suite, for ops and for containers.

alliance serve points            run one service (the container command)
alliance run                     run NATS and every service locally (make run)
alliance rules validate rules/   check rule files; exit 1 on any error
alliance rules simulate ...      dry-run an event against a campaign
alliance points balance USER     ask a running points service
alliance referral tree USER      ask a running referral service (codes, reviews, imports, ...)
alliance referral simulate S.json  dry-run the referral rules on a scenario
alliance dispatch pool MANAGER   ask a running dispatch service (orders, run-cutoff --dry-run, ...)
alliance db upgrade points       upgrade a service's database schema
"""

from __future__ import annotations

import argparse
import sys

from services.cli import db_commands, dev_run, dispatch_commands, points_commands, referral_commands, serve
from services.cli.benefits_commands import add_benefits_parser
from services.cli.rules_commands import add_rules_parser


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="alliance",
        description="Bank merchant-alliance marketing: points, benefits, referral, dispatch, merchant evaluation.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.add_parser(commands)
    dev_run.add_parser(commands)
    add_rules_parser(commands)
    add_benefits_parser(commands)
    points_commands.add_parser(commands)
    referral_commands.add_parser(commands)
    dispatch_commands.add_parser(commands)
    db_commands.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
