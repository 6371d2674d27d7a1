"""review of submissions: each demonstration, ranking and comparison carries an admin's decision
(pending / accepted / rejected, with the reason, who and when; replaces demonstrations.accepted),
an admin can leave a labeler's data out of future runs, simulated labelers are marked, invites can be revoked and name projects, projects can be paused and have members, model versions deleted (a tombstone when others name them),
a labeler's flag on a prompt can be dismissed, and a labeler can revise a submission (earlier
answers kept in submission_revisions)

Revision ID: 0004_review
Revises: 0003_attempts
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import app.db

revision: str = "0004_review"
down_revision: str | None = "0003_attempts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SUBMISSIONS = ("demonstrations", "rankings", "comparisons")
REVIEW = sa.Enum("pending", "accepted", "rejected", name="reviewstatus", native_enum=False, length=32)


def upgrade() -> None:
    for name in SUBMISSIONS:
        with op.batch_alter_table(name) as batch:
            batch.add_column(sa.Column("review", REVIEW, server_default="pending", nullable=False))
            batch.add_column(sa.Column("review_reason", sa.Text(), server_default="", nullable=False))
            batch.add_column(sa.Column("reviewed_by_id", sa.Integer(), nullable=True))
            batch.add_column(sa.Column("reviewed_at", app.db.UTCDateTime(timezone=True), nullable=True))
            batch.add_column(sa.Column("revision", sa.Integer(), server_default="1", nullable=False))
            batch.create_foreign_key(f"fk_{name}_reviewed_by", "users", ["reviewed_by_id"], ["id"], ondelete="SET NULL")
    # A demonstration an admin had rejected (accepted = false) keeps that decision.
    op.execute(sa.text("UPDATE demonstrations SET review = 'rejected' WHERE accepted = :no").bindparams(no=False))
    with op.batch_alter_table("demonstrations") as batch:
        batch.drop_column("accepted")
    op.create_table(
        "submission_revisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "kind",
            sa.Enum("demonstration", "ranking", "comparison", name="taskkind", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("submission_id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("answer", sa.JSON(), nullable=False),
        sa.Column("written_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("replaced_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_submission_revisions_kind_submission", "submission_revisions", ["kind", "submission_id"])
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("deleted_at", app.db.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("invites") as batch:
        batch.add_column(sa.Column("revoked_at", app.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("project_ids", sa.JSON(), server_default="[]", nullable=False))
    # Plain ADD COLUMN, not batch mode: SQLite's batch mode copies the table and would lose the
    # expression index ux_projects_name_lower (it cannot reflect it).
    op.add_column("projects", sa.Column("paused_at", app.db.UTCDateTime(timezone=True), nullable=True))
    op.add_column("projects", sa.Column("members_only", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_table(
        "project_members",
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", app.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("project_id", "user_id"),
    )
    op.create_index("ix_project_members_user_id", "project_members", ["user_id"])
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("left_out_of_training", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("simulated", sa.Boolean(), server_default=sa.false(), nullable=False))
    # The demo's labelers so far (trainer/simulate.py names them sim-N@simulated.invalid).
    op.execute(
        sa.text("UPDATE users SET simulated = :yes WHERE email LIKE '%@simulated.invalid'").bindparams(yes=True)
    )
    with op.batch_alter_table("skips") as batch:
        batch.add_column(sa.Column("dismissed_at", app.db.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("dismissed_by_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_skips_dismissed_by", "users", ["dismissed_by_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("deleted_at")
    op.drop_index("ix_project_members_user_id", table_name="project_members")
    op.drop_table("project_members")
    op.drop_column("projects", "members_only")
    op.drop_column("projects", "paused_at")
    with op.batch_alter_table("invites") as batch:
        batch.drop_column("project_ids")
        batch.drop_column("revoked_at")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("simulated")
        batch.drop_column("left_out_of_training")
    with op.batch_alter_table("skips") as batch:
        batch.drop_constraint("fk_skips_dismissed_by", type_="foreignkey")
        batch.drop_column("dismissed_by_id")
        batch.drop_column("dismissed_at")
    op.drop_index("ix_submission_revisions_kind_submission", table_name="submission_revisions")
    op.drop_table("submission_revisions")
    with op.batch_alter_table("demonstrations") as batch:
        batch.add_column(sa.Column("accepted", sa.Boolean(), server_default=sa.true(), nullable=False))
    op.execute(sa.text("UPDATE demonstrations SET accepted = :no WHERE review = 'rejected'").bindparams(no=False))
    for name in SUBMISSIONS:
        with op.batch_alter_table(name) as batch:
            batch.drop_constraint(f"fk_{name}_reviewed_by", type_="foreignkey")
            batch.drop_column("revision")
            batch.drop_column("reviewed_at")
            batch.drop_column("reviewed_by_id")
            batch.drop_column("review_reason")
            batch.drop_column("review")
