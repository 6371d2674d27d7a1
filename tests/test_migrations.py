"""The baseline migration builds exactly the ORM schema, upgrades from empty and downgrades to base."""

import os

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db import make_engine
from app.migrate import downgrade, upgrade
from app.models import Base


def _diff(engine):
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_models_and_migration_agree(engine):
    assert _diff(engine) == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    engine = make_engine(url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    downgrade(url, "base")
    assert inspect(engine).get_table_names() == ["alembic_version"]
    upgrade(url)
    assert _diff(engine) == []
    engine.dispose()


@pytest.mark.postgres
def test_postgres_upgrade_from_empty_and_downgrade_to_base():
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set: Postgres tests skipped")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA IF NOT EXISTS migration_test"))
    scoped = url + ("&" if "?" in url else "?") + "options=-csearch_path%3Dmigration_test"
    try:
        upgrade(scoped)
        scoped_engine = make_engine(scoped)
        names = set(inspect(scoped_engine).get_table_names(schema="migration_test"))
        assert set(Base.metadata.tables) <= names
        assert _diff(scoped_engine) == []
        downgrade(scoped, "base")
        assert inspect(scoped_engine).get_table_names(schema="migration_test") == ["alembic_version"]
        upgrade(scoped)
        scoped_engine.dispose()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA migration_test CASCADE"))
        engine.dispose()
