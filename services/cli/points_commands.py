"""`alliance points ...`: ops look-ups against a running points service over gRPC."""

from __future__ import annotations

import argparse
import sys

import grpc
from google.protobuf.json_format import MessageToJson

from alliance.v1 import points_pb2 as api
from alliance.v1 import points_pb2_grpc
from services.registry import SERVICES


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    points = commands.add_parser("points", help="look up balances and ledgers", description=__doc__)
    points.add_argument("--address", default=SERVICES["points"].address, help="points service (default %(default)s)")
    actions = points.add_subparsers(dest="action", metavar="ACTION", required=True)
    balance = actions.add_parser("balance", help="a user's balance and what expires soon")
    balance.add_argument("user_id")
    balance.set_defaults(func=show_balance)
    ledger = actions.add_parser("ledger", help="a user's ledger, newest first")
    ledger.add_argument("user_id")
    ledger.add_argument("--limit", type=int, default=20)
    ledger.set_defaults(func=show_ledger)


def _stub(args: argparse.Namespace) -> points_pb2_grpc.PointsStub:
    return points_pb2_grpc.PointsStub(grpc.insecure_channel(args.address))


def show_balance(args: argparse.Namespace) -> int:
    try:
        reply = _stub(args).GetBalance(api.GetBalanceRequest(user_id=args.user_id), timeout=10)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    print(MessageToJson(reply, always_print_fields_with_no_presence=True, indent=2))
    return 0


def show_ledger(args: argparse.Namespace) -> int:
    try:
        reply = _stub(args).ListLedger(api.ListLedgerRequest(user_id=args.user_id, page_size=args.limit), timeout=10)
    except grpc.RpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    for e in reply.entries:
        print(
            f"{e.created_at.ToJsonString():<27} {api.EntryKind.Name(e.kind)[11:]:<15} {e.points:>+9} "
            f"{e.campaign_id or '-':<24} {e.rule_id or '-':<18} {e.rule_version or '-':<12} {e.transaction_id}"
        )
    if reply.next_page_token:
        print("(more: older entries exist)")
    return 0
