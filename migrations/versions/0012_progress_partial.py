"""progress partial: training_runs.progress_partial, the work done beyond progress_step in steps (a
fraction of a long PPO step), so the run page's bar and time left move inside a step

Revision ID: 0012_progress_partial
Revises: 0011_imported_feedback
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_progress_partial"
down_revision: str | None = "0011_imported_feedback"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("training_runs", sa.Column("progress_partial", sa.Float(), nullable=True))


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+ has it): rebuilding training_runs in batch mode would drop
    # the old table with foreign keys on, deleting every run's metrics by their ON DELETE CASCADE.
    op.execute("ALTER TABLE training_runs DROP COLUMN progress_partial")
