"""follow-ups: labelers grow conversations by writing the user's next turn after an accepted
demonstration (a written prompt of kind follow_up), up to a project's follow_up_turns

Revision ID: 0009_follow_ups
Revises: 0008_prompt_messages
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_follow_ups"
down_revision: str | None = "0008_prompt_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # add_column, not batch_alter_table: SQLite's batch mode rebuilds the table and would drop
    # the expression index on projects (ux_projects_name_lower), which it cannot reflect.
    op.add_column("projects", sa.Column("follow_up_turns", sa.Integer(), server_default="0", nullable=False))
    with op.batch_alter_table("written_prompts") as batch:  # no expression index here to lose
        batch.add_column(sa.Column("demonstration_id", sa.Integer()))
        batch.create_foreign_key(
            "fk_written_prompts_demonstration", "demonstrations", ["demonstration_id"], ["id"], ondelete="SET NULL"
        )
    op.create_index("ix_written_prompts_demonstration_id", "written_prompts", ["demonstration_id"])


def downgrade() -> None:
    op.execute("DELETE FROM written_prompts WHERE demonstration_id IS NOT NULL AND status = 'pending'")
    op.drop_index("ix_written_prompts_demonstration_id", "written_prompts")
    with op.batch_alter_table("written_prompts") as batch:
        batch.drop_constraint("fk_written_prompts_demonstration", type_="foreignkey")
        batch.drop_column("demonstration_id")
    op.drop_column("projects", "follow_up_turns")
