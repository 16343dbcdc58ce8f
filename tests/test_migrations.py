"""The Alembic history matches the models, and goes down and up again, on every backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.db import downgrade, migrate
from storage.models import Base


async def test_migrated_schema_matches_the_models(db: AsyncEngine) -> None:
    def diff(connection):  # type: ignore[no-untyped-def]
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with db.connect() as connection:
        assert await connection.run_sync(diff) == []


async def test_downgrade_to_base_and_upgrade_again(db: AsyncEngine) -> None:
    def tables(connection):  # type: ignore[no-untyped-def]
        return set(inspect(connection).get_table_names()) - {"alembic_version"}

    await downgrade(db, "base")
    async with db.connect() as connection:
        assert await connection.run_sync(tables) == set()
    await migrate(db)
    async with db.connect() as connection:
        assert await connection.run_sync(tables) == set(Base.metadata.tables)
