"""written prompts: labeler-written prompts (plain, few-shot, user-based) pending an admin's review,
and the project's targets and use cases for them

Revision ID: 0006_written_prompts
Revises: 0005_prompt_intake
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0006_written_prompts"
down_revision: str | None = "0005_prompt_intake"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CATEGORY = sa.Enum(
    "generation",
    "open_qa",
    "brainstorming",
    "chat",
    "rewrite",
    "summarization",
    "classification",
    "other",
    "closed_qa",
    "extract",
    name="promptcategory",
    native_enum=False,
    length=32,
)
STATUS = sa.Enum("pending", "accepted", "rejected", name="reviewstatus", native_enum=False, length=32)


def upgrade() -> None:
    # Plain ADD COLUMN (nullable): no batch copy of projects, which would drop ux_projects_name_lower on SQLite.
    op.add_column("projects", sa.Column("written_prompt_targets", sa.JSON(), nullable=True))
    op.add_column("projects", sa.Column("written_use_cases", sa.JSON(), nullable=True))
    op.create_table(
        "written_prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("author_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("category", CATEGORY, nullable=False),
        sa.Column("use_case", sa.String(length=200), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("has_pii", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("edited", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("reviewed_by_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("prompt_id", sa.Integer(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["author_id"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["reviewed_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_written_prompts_project_status", "written_prompts", ["project_id", "status"])
    op.create_index("ix_written_prompts_author_id", "written_prompts", ["author_id"])


def downgrade() -> None:
    op.drop_index("ix_written_prompts_author_id", table_name="written_prompts")
    op.drop_index("ix_written_prompts_project_status", table_name="written_prompts")
    op.drop_table("written_prompts")
    # Plain DROP COLUMN (SQLite 3.35+), as 0005 does: no batch copy of projects.
    op.drop_column("projects", "written_use_cases")
    op.drop_column("projects", "written_prompt_targets")
