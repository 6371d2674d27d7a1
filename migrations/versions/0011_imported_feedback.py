"""imported feedback: submissions without a labeler (user_id NULL) that say where they came from
(origin_file, origin_line, origin_id, import_job_id): hh-rlhf pairs, OpenAssistant ranks...

Revision ID: 0011_imported_feedback
Revises: 0010_sqlite_autoincrement
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_imported_feedback"
down_revision: str | None = "0010_sqlite_autoincrement"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("demonstrations", "rankings", "comparisons")


def _columns() -> list[sa.Column]:
    return [
        sa.Column("origin_file", sa.String(200)),
        sa.Column("origin_line", sa.Integer()),
        sa.Column("origin_id", sa.String(200)),
        sa.Column("import_job_id", sa.Integer()),
    ]


def _fk(table: str) -> str:
    return f"fk_{table}_import_job_id"


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table in TABLES:
            for column in _columns():
                op.add_column(table, column)
            op.create_foreign_key(_fk(table), table, "import_jobs", ["import_job_id"], ["id"], ondelete="SET NULL")
            op.alter_column(table, "user_id", existing_type=sa.Integer(), nullable=True)
        return
    # SQLite can make user_id nullable only by rebuilding the table (batch mode). Nothing refers to
    # rankings or comparisons; written_prompts.demonstration_id refers to demonstrations with ON
    # DELETE SET NULL, and foreign keys stay on inside the migration's transaction, so dropping the
    # old demonstrations table would blank those links: they are kept aside and put back.
    _rebuild_keeping_links(lambda table, batch: _upgrade_table(table, batch))


def _upgrade_table(table: str, batch) -> None:
    for column in _columns():
        batch.add_column(column)
    batch.create_foreign_key(_fk(table), "import_jobs", ["import_job_id"], ["id"], ondelete="SET NULL")
    batch.alter_column("user_id", existing_type=sa.Integer(), nullable=True)


def _rebuild_keeping_links(change) -> None:
    bind = op.get_bind()
    links = bind.execute(
        sa.text("SELECT id, demonstration_id FROM written_prompts WHERE demonstration_id IS NOT NULL")
    ).all()
    for table in TABLES:
        # AUTOINCREMENT (0010) is a table option that reflection does not see: kept as it was.
        sql = bind.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}).scalar() or ""
        options = {"sqlite_autoincrement": True} if "AUTOINCREMENT" in sql.upper() else {}
        with op.batch_alter_table(table, recreate="always", table_kwargs=options) as batch:
            change(table, batch)
    for written_id, demonstration_id in links:
        bind.execute(
            sa.text("UPDATE written_prompts SET demonstration_id = :d WHERE id = :w"),
            {"d": demonstration_id, "w": written_id},
        )


def downgrade() -> None:
    # Imported feedback has no labeler to give back to a NOT NULL user_id: it goes, with the tasks
    # and outputs made for it (labelers' submissions are untouched).
    bind = op.get_bind()
    if any(bind.execute(sa.text(f"SELECT 1 FROM {t} WHERE user_id IS NULL LIMIT 1")).first() for t in TABLES):
        _delete_imported()
    if bind.dialect.name != "sqlite":
        for table in TABLES:
            op.alter_column(table, "user_id", existing_type=sa.Integer(), nullable=False)
            op.drop_constraint(_fk(table), table, type_="foreignkey")
            for column in reversed(_columns()):
                op.drop_column(table, column.name)
        return
    _rebuild_keeping_links(lambda table, batch: _downgrade_table(table, batch))


def _delete_imported() -> None:
    task_ids = " UNION ".join(f"SELECT task_id FROM {t} WHERE user_id IS NULL" for t in TABLES)
    op.execute(f"CREATE TEMPORARY TABLE imported_tasks AS {task_ids}")
    op.execute(
        "CREATE TEMPORARY TABLE imported_outputs AS SELECT completion_id FROM task_completions "
        "WHERE task_id IN (SELECT task_id FROM imported_tasks)"
    )
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE user_id IS NULL")
    op.execute("DELETE FROM task_completions WHERE task_id IN (SELECT task_id FROM imported_tasks)")
    op.execute("DELETE FROM tasks WHERE id IN (SELECT task_id FROM imported_tasks)")
    op.execute(
        "DELETE FROM completions WHERE id IN (SELECT completion_id FROM imported_outputs) "
        "AND id NOT IN (SELECT completion_id FROM task_completions)"
    )
    op.execute("DROP TABLE imported_tasks")
    op.execute("DROP TABLE imported_outputs")


def _downgrade_table(table: str, batch) -> None:
    batch.alter_column("user_id", existing_type=sa.Integer(), nullable=False)
    batch.drop_constraint(_fk(table), type_="foreignkey")
    for column in reversed(_columns()):
        batch.drop_column(column.name)
