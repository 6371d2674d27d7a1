"""sqlite autoincrement: ids are never given out again after a delete (an invite naming a deleted
project made its invitee a member of the next project, which got the same id). SQLite tables
without AUTOINCREMENT hand out max(id) + 1, so the largest deleted id came back; every table with
an integer `id` key is rebuilt with AUTOINCREMENT. Postgres sequences never go back: nothing to do.

Revision ID: 0010_sqlite_autoincrement
Revises: 0009_follow_ups
"""

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0010_sqlite_autoincrement"
down_revision: str | None = "0009_follow_ups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID_COLUMN = re.compile(r"^(\s*)id INTEGER NOT NULL,", re.MULTILINE)
ID_KEY = re.compile(r"^\s*(?:CONSTRAINT \w+ )?PRIMARY KEY \(id\)(,?)\s*\n", re.MULTILINE)
NAME = re.compile(r'^CREATE TABLE ("?)(\w+)\1 \(')


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    # Dropping a table that others refer to, with foreign keys on, deletes (or blanks) the rows
    # that refer to it (ON DELETE CASCADE / SET NULL); and SQLite ignores PRAGMA foreign_keys
    # inside a transaction. So: commit what this upgrade did so far (alembic stamped each earlier
    # revision in the same transaction, so the database is exactly at 0009), then turn them off.
    # app.db begins the next transaction at the first write. env.py turns them on again.
    dbapi = bind.connection.dbapi_connection
    if dbapi is not None and dbapi.in_transaction:
        bind.exec_driver_sql("COMMIT")
    bind.exec_driver_sql("PRAGMA foreign_keys=OFF")
    tables = bind.exec_driver_sql(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
        "AND name != 'alembic_version' ORDER BY name"
    ).all()
    for name, sql in tables:
        if "AUTOINCREMENT" in sql.upper() or not ID_COLUMN.search(sql):
            continue  # done already (a rerun), or no single integer id (project_members, task_completions)
        _rebuild(bind, name, sql)
    problems = bind.exec_driver_sql("PRAGMA foreign_key_check").all()
    if problems:  # raised inside the transaction: nothing of the rebuild is kept
        raise RuntimeError(f"foreign keys broken by the rebuild (table, rowid, parent, fk): {problems[:10]}")


def _rebuild(bind, name: str, sql: str) -> None:
    """SQLite's way to change a table (https://sqlite.org/lang_altertable.html#otheralter): a new
    table from the stored CREATE statement with AUTOINCREMENT, the rows copied, the old one
    dropped, the new one renamed, and its indexes made again from their stored SQL (batch mode
    would reflect them instead, and can't reflect ux_projects_name_lower's lower(name))."""
    new_sql, columns = ID_COLUMN.subn(r"\1id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,", sql, count=1)
    new_sql, keys = ID_KEY.subn("", new_sql, count=1)
    if columns != 1 or keys != 1:
        raise RuntimeError(f"unexpected schema of table {name}: {sql}")
    new_sql = re.sub(r",(\s*\n\))$", r"\1", new_sql.rstrip())  # the key was the last line
    temp = f"_autoincrement_{name}"
    new_sql = NAME.sub(f'CREATE TABLE "{temp}" (', new_sql, count=1)
    indexes = (
        bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL", (name,)
        )
        .scalars()
        .all()
    )
    bind.exec_driver_sql(new_sql)
    bind.exec_driver_sql(f'INSERT INTO "{temp}" SELECT * FROM "{name}"')
    bind.exec_driver_sql(f'DROP TABLE "{name}"')
    bind.exec_driver_sql(f'ALTER TABLE "{temp}" RENAME TO "{name}"')
    for index in indexes:
        bind.exec_driver_sql(index)
    # Copying the rows already set sqlite_sequence to the largest id kept; made sure here, so the
    # next id is above every id in the table (a deleted larger one was already forgotten by SQLite).
    bind.exec_driver_sql(
        'UPDATE sqlite_sequence SET seq = (SELECT coalesce(max(id), 0) FROM "%s") WHERE name = ?' % name, (name,)
    )
    if bind.exec_driver_sql("SELECT count(*) FROM sqlite_sequence WHERE name = ?", (name,)).scalar_one() == 0:
        bind.exec_driver_sql(
            'INSERT INTO sqlite_sequence (name, seq) SELECT ?, coalesce(max(id), 0) FROM "%s"' % name, (name,)
        )


def downgrade() -> None:
    # The earlier schema works the same with AUTOINCREMENT tables; rebuilding them back would only
    # bring back the reuse of ids.
    pass
