"""server-side sessions, password resets, per-IP login index, case-insensitive project names,
the database's identity (artifact folders), background import jobs

Revision ID: 0002_sessions
Revises: 0001
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0002_sessions"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("sid_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sid_hash"),
    )
    op.create_index("ix_user_sessions_user_id", "user_sessions", ["user_id"])
    op.create_table(
        "password_resets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("used_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_password_resets_user_id", "password_resets", ["user_id"])
    op.create_index("ix_login_failures_ip_at", "login_failures", ["ip", "at"])
    op.create_table(
        "database_identity",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("database_id", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "import_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("status", sa.Enum("running", "succeeded", "failed", name="importjobstatus", native_enum=False,
                                    length=32), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_import_jobs_project_id", "import_jobs", ["project_id"])
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("import_job_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_prompts_import_job_id", "import_jobs", ["import_job_id"], ["id"],
                                 ondelete="SET NULL")
        batch.create_index("ix_prompts_import_job_id", ["import_job_id"])
    # Projects whose names differ only in case (possible before) get " (2)", " (3)"... first.
    conn = op.get_bind()
    seen: dict[str, int] = {}
    for pid, name in conn.execute(sa.text("SELECT id, name FROM projects ORDER BY id")).all():
        n = seen.get(name.lower(), 0) + 1
        seen[name.lower()] = n
        if n > 1:
            conn.execute(sa.text("UPDATE projects SET name = :name WHERE id = :id"),
                         {"name": f"{name[:190]} ({n})", "id": pid})
    op.create_index("ux_projects_name_lower", "projects", [sa.text("lower(name)")], unique=True)


def downgrade() -> None:
    op.drop_index("ux_projects_name_lower", table_name="projects")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_index("ix_prompts_import_job_id")
        batch.drop_constraint("fk_prompts_import_job_id", type_="foreignkey")
        batch.drop_column("import_job_id")
    op.drop_index("ix_import_jobs_project_id", table_name="import_jobs")
    op.drop_table("import_jobs")
    op.drop_table("database_identity")
    op.drop_index("ix_login_failures_ip_at", table_name="login_failures")
    op.drop_index("ix_password_resets_user_id", table_name="password_resets")
    op.drop_table("password_resets")
    op.drop_index("ix_user_sessions_user_id", table_name="user_sessions")
    op.drop_table("user_sessions")
