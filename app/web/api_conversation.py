"""A prompt's conversation as the JSON API shows and takes it (app.conversation).

Every prompt an /api/v1 response shows carries `messages`, the whole conversation; the string field
it had before conversations (`text` or `prompt`) stays, holding the conversation's last user turn,
so a reader of the old shape sees what the user asked last (for a single-turn prompt, the prompt as
before)."""

from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatMessage(BaseModel):
    """One turn of a conversation (OpenAI's chat message, TRL's conversational format)."""

    role: Literal["system", "user", "assistant"] = Field(
        description="system (at most one, first), then user and assistant alternating from a user turn."
    )
    content: str = Field(description="The turn's text.")


MESSAGES = (
    "The prompt as a conversation: [{role, content}, ...], an optional system message first, then user "
    "and assistant turns alternating, ending with the user's turn that the next assistant turn answers. "
    "A single-turn prompt is one user message."
)
LAST_USER_TURN = (
    "The prompt's last user turn (a single-turn prompt: the whole prompt), kept for readers of the "
    "shape before conversations; `messages` holds every turn."
)


def messages_out(messages: list[Any]) -> list[ChatMessage]:
    return [ChatMessage(role=m["role"], content=m["content"]) for m in messages]
