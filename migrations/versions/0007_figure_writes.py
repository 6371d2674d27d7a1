"""figure writes: one row counting the committed transactions that updated or deleted rows the
admin figures read (app.models.FigureWrites), so remembered figures see edits and deletions

Revision ID: 0007_figure_writes
Revises: 0006_written_prompts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_figure_writes"
down_revision: str | None = "0006_written_prompts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "figure_writes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "n": 0}])


def downgrade() -> None:
    op.drop_table("figure_writes")
