"""A prompt is a conversation: the ordered messages a model answers with its next assistant turn.

Shape (TRL's conversational format, OpenAI's chat messages): `[{"role": ..., "content": ...}]` with
roles `system` (at most one, first), then `user` and `assistant` alternating from a `user` turn, and
ending with a `user` turn. A single-turn prompt is one user message.

`Prompt.messages` holds the conversation; `Prompt.text` holds its plain rendering (`render`), which is
what lists, previews, hashes and the intake's duplicate check read. For a single-turn prompt both
say the same thing, so hashes of prompts stored before conversations still match.
"""

import hashlib
import json
from typing import Any, TypedDict

from app.validation import text_problem

ROLES = ("system", "user", "assistant")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}
MAX_MESSAGES = 200


class Message(TypedDict):
    role: str
    content: str


class ConversationError(ValueError):
    """What is wrong with a conversation, in words a person sending one can act on."""


def normalize_text(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def single(text: str) -> list[Message]:
    return [{"role": "user", "content": normalize_text(text)}]


def check(messages: Any, *, max_chars: int) -> list[Message]:
    """The conversation with its contents normalized, or ConversationError naming the first problem
    (the message's position counts from 1). Keys other than role and content are dropped."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("messages must be a non-empty list of {role, content} objects")
    if len(messages) > MAX_MESSAGES:
        raise ConversationError(f"the conversation has {len(messages)} messages; the limit is {MAX_MESSAGES}")
    checked: list[Message] = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict):
            raise ConversationError(f"message {n} is not an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ConversationError(f"message {n} has role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ConversationError(f"message {n} ({role}) has no text")
        if problem := text_problem(content):
            raise ConversationError(f"message {n} ({role}) {problem}")
        checked.append({"role": role, "content": normalize_text(content)})
    offset = 1 if checked[0]["role"] == "system" else 0
    turns = checked[offset:]
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] == "system":
            raise ConversationError(f"message {i + offset + 1} is a system message; only the first message may be one")
        if message["role"] != expected:
            raise ConversationError(
                f"message {i + offset + 1} is a {message['role']} turn where a {expected} turn belongs "
                "(after an optional system message, user and assistant turns alternate from a user turn)"
            )
    if not turns:
        raise ConversationError("the conversation has only a system message; it needs a user turn")
    if turns[-1]["role"] != "user":
        raise ConversationError("the conversation ends with an assistant turn; it must end with the user's turn")
    total = sum(len(m["content"]) for m in checked)
    if total > max_chars:
        raise ConversationError(f"the conversation has {total:,} characters; the limit is {max_chars:,}")
    return checked


def render(messages: list[Message]) -> str:
    """Plain text: a single user turn as itself, anything longer as "Role: content" blocks."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{ROLE_NAMES[m['role']]}: {m['content']}" for m in messages)


def last_user_turn(messages: list[Message]) -> str:
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


def content_hash(messages: list[Message]) -> str:
    """Equal for equal conversations. A single user turn hashes as its normalized text (as prompts
    stored before conversations were); longer ones as their JSON, so no single text collides with a
    conversation whose rendering it happens to equal."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        key = normalize_text(messages[0]["content"])
    else:
        key = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()


def user_turns(messages: list[Message]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user"]


def turns(messages: list[Message]) -> int:
    """User turns: 1 for a single-turn prompt."""
    return len(user_turns(messages))


def extend(messages: list[Message], answer: str, next_user_turn: str) -> list[Message]:
    """The conversation one turn deeper: the given answer, then the user's next turn."""
    return [
        *messages,
        {"role": "assistant", "content": normalize_text(answer)},
        {"role": "user", "content": normalize_text(next_user_turn)},
    ]
