"""prompt intake: prompts carry InstructGPT's use-case category, and the intake API's prefix hash
(deduplication), hashed end user (cap and split) and PII kinds; app tokens (one project, intake only)

Revision ID: 0005_prompt_intake
Revises: 0004_review
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0005_prompt_intake"
down_revision: str | None = "0004_review"
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


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, no constraint): no table copy on SQLite.
    op.add_column("prompts", sa.Column("category", CATEGORY, nullable=True))
    op.add_column("prompts", sa.Column("prefix_hash", sa.String(length=64), nullable=True))
    op.add_column("prompts", sa.Column("end_user_hash", sa.String(length=64), nullable=True))
    op.add_column("prompts", sa.Column("pii", sa.String(length=64), nullable=True))
    op.create_index("ux_prompts_project_prefix", "prompts", ["project_id", "prefix_hash"], unique=True)
    op.create_index("ix_prompts_project_end_user", "prompts", ["project_id", "end_user_hash"])
    op.create_index("ix_prompts_project_category", "prompts", ["project_id", "category", "pii"])
    op.create_table(
        "app_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("create_tasks", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_index("ix_app_tokens_project_id", "app_tokens", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_app_tokens_project_id", table_name="app_tokens")
    op.drop_table("app_tokens")
    op.drop_index("ix_prompts_project_category", table_name="prompts")
    op.drop_index("ix_prompts_project_end_user", table_name="prompts")
    op.drop_index("ux_prompts_project_prefix", table_name="prompts")
    # Plain DROP COLUMN (SQLite 3.35+), as 0004 does: the columns carry no index or constraint any more.
    op.drop_column("prompts", "pii")
    op.drop_column("prompts", "end_user_hash")
    op.drop_column("prompts", "prefix_hash")
    op.drop_column("prompts", "category")
