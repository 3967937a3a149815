"""What every service gets from the host: health, reflection, and a schema matching its models."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from alembic import command
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.foundation import migrations
from services.foundation.db import Database
from services.registry import SERVICES
from tests.support import PointsUnderTest


async def test_health_and_reflection_list_every_service(points: PointsUnderTest) -> None:
    health = health_pb2_grpc.HealthStub(points.channel)
    for name in ("", "alliance.v1.Points"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    stub = reflection_pb2_grpc.ServerReflectionStub(points.channel)

    async def requests():  # type: ignore[no-untyped-def]
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names = set()
    async for reply in stub.ServerReflectionInfo(requests()):
        names |= {s.name for s in reply.list_services_response.service}
    assert {"alliance.v1.Points", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_services_migrations_match_its_models_and_go_both_ways(database_url: str, service: str) -> None:
    schema = SERVICES[service].load().schema
    db = Database(database_url)
    try:
        migrations.upgrade(db, schema)
        assert migrations.current_revision(db) is not None
        # Fails when a model changed without a migration, or a migration made what no model has.
        migrations.check(db, schema)
        command.downgrade(migrations.alembic_config(db, schema), "base")
        migrations.upgrade(db, schema)
    finally:
        db.close()


async def test_unknown_method_is_unimplemented_not_internal(points: PointsUnderTest) -> None:
    call = points.channel.unary_unary("/alliance.v1.Points/Nope")
    try:
        await call(b"")
        raise AssertionError("expected an error")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_replicas_starting_together_migrate_once_in_turn(database_url: str) -> None:
    """Two processes upgrading one fresh database at once (as replicas do at start): the second
    waits for the first's migrations to commit, then finds nothing to do."""
    command = [sys.executable, "-m", "services.cli", "db", "upgrade", "points", "--database-url", database_url]
    upgrades = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    for upgrade in upgrades:
        output = upgrade.communicate(timeout=90)[0].decode()
        assert upgrade.returncode == 0, output
    db = Database(database_url)
    try:
        migrations.check(db, SERVICES["points"].load().schema)
    finally:
        db.close()
