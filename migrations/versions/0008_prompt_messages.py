"""prompt messages: a prompt holds a conversation (app.conversation); every existing prompt becomes
one user message with its text, and `text` stays the conversation's plain rendering

Revision ID: 0008_prompt_messages
Revises: 0007_figure_writes
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_prompt_messages"
down_revision: str | None = "0007_figure_writes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added NOT NULL with a placeholder default and filled at once: SQLite can't make a column NOT
    # NULL later without rebuilding the table (batch mode), and rebuilding `prompts` fails its
    # foreign keys once other tables point at it. Postgres drops the default again; SQLite keeps it
    # (never used: every insert gives messages, app.models.Prompt).
    op.add_column("prompts", sa.Column("messages", sa.JSON(), nullable=False, server_default="[]"))
    # One statement on the server: no row travels through Python, whatever the table's size.
    if op.get_bind().dialect.name == "postgresql":
        op.execute("UPDATE prompts SET messages = json_build_array(json_build_object('role', 'user', 'content', text))")
        op.alter_column("prompts", "messages", server_default=None)
    else:
        op.execute("UPDATE prompts SET messages = json_array(json_object('role', 'user', 'content', text))")


def downgrade() -> None:
    # `text` already holds every conversation as plain text ("User: ...\n\nAssistant: ..."), which is
    # what the earlier version stored for hh-rlhf dialogues; only the hashes of conversations longer
    # than one message change back to the hash of that text.
    bind = op.get_bind()
    prompts = sa.table(
        "prompts", sa.column("id", sa.Integer), sa.column("text", sa.Text), sa.column("messages", sa.JSON),
        sa.column("content_hash", sa.String),
    )
    for row in bind.execute(sa.select(prompts.c.id, prompts.c.text, prompts.c.messages)):
        if len(row.messages) > 1:
            digest = hashlib.sha256(row.text.replace("\r\n", "\n").strip().encode()).hexdigest()
            bind.execute(prompts.update().where(prompts.c.id == row.id).values(content_hash=digest))
    op.drop_column("prompts", "messages")  # SQLite drops an unindexed column in place
