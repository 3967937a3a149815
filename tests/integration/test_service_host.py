"""What every service gets from the host: health, reflection, and a schema matching its models."""

from __future__ import annotations

import grpc
from alembic import command
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.foundation import migrations
from services.foundation.db import Database
from services.points.models import SCHEMA as POINTS_SCHEMA
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


def test_migrations_match_the_models(database_url: str) -> None:
    db = Database(database_url)
    try:
        migrations.upgrade(db, POINTS_SCHEMA)
        assert migrations.current_revision(db) is not None
        # Fails when a model changed without a migration.
        command.check(migrations.alembic_config(db, POINTS_SCHEMA))
        command.downgrade(migrations.alembic_config(db, POINTS_SCHEMA), "base")
        migrations.upgrade(db, POINTS_SCHEMA)
    finally:
        db.close()


async def test_unknown_method_is_unimplemented_not_internal(points: PointsUnderTest) -> None:
    call = points.channel.unary_unary("/alliance.v1.Points/Nope")
    try:
        await call(b"")
        raise AssertionError("expected an error")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
