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
    op.add_column("prompts", sa.Column("messages", sa.JSON(), nullable=True))
    # One statement on the server: no row travels through Python, whatever the table's size.
    if op.get_bind().dialect.name == "postgresql":
        single = "json_build_array(json_build_object('role', 'user', 'content', text))"
    else:
        single = "json_array(json_object('role', 'user', 'content', text))"
    op.execute(f"UPDATE prompts SET messages = {single}")
    with op.batch_alter_table("prompts") as batch:
        batch.alter_column("messages", existing_type=sa.JSON(), nullable=False)


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
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("messages")
