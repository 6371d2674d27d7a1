"""Alembic environment: the URL comes from the caller (app.migrate) or from Settings."""

import warnings

from alembic import context
from sqlalchemy.exc import SAWarning

from app.config import Settings
from app.db import make_engine
from app.models import Base

# On SQLite, batch migrations reflect the tables they copy, and SQLAlchemy cannot reflect the
# expression index ux_projects_name_lower (lower(name)) and warns at every fresh database. No batch
# migration copies the projects table (0004 adds its columns in place; 0010 rebuilds it from its
# stored SQL, indexes included), so the index is kept.
warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index", SAWarning)

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.attributes.get("url") or Settings().db_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=_url().startswith("sqlite")
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    if connection.dialect.name == "sqlite":  # a migration that rebuilt tables turned them off (0010)
        connection.exec_driver_sql("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
