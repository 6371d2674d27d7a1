"""run attempts: a run whose worker vanished or was stopped is queued again, up to max_attempts;
the run's current phase

Revision ID: 0003_attempts
Revises: 0002_sessions
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_attempts"
down_revision: str | None = "0002_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False))
        batch.add_column(sa.Column("attempt_log", sa.JSON(), server_default="[]", nullable=False))
        batch.add_column(sa.Column("phase", sa.String(length=40), nullable=True))
    # Runs that already ran had one attempt.
    op.execute("UPDATE training_runs SET attempts = 1 WHERE started_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("phase")
        batch.drop_column("attempt_log")
        batch.drop_column("max_attempts")
        batch.drop_column("attempts")
