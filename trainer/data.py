"""Plain training examples: what the algorithms (sft.py, reward.py, ppo.py, generate.py) take.

They never touch the database: worker/snapshots.py (the worker's side) reads these from it.

A prompt is a conversation: a list of {"role", "content"} messages (an optional first `system`,
then `user` and `assistant` turns alternating, ending with the `user` turn the model answers), or a
plain string, which is one user turn."""

from dataclasses import dataclass, field

Message = dict[str, str]
Conversation = str | list[Message]


@dataclass(frozen=True)
class SFTExample:
    prompt: Conversation
    completion: str
    """The next assistant turn: the only tokens SFT learns (earlier assistant turns are context)."""


@dataclass(frozen=True)
class RankingExample:
    """One labeler's ranking of one prompt's outputs.

    `order` lists groups of indices into `completions`, best first; indices in one group
    are tied, e.g. [[2], [0, 3], [1]]."""

    prompt: Conversation
    completions: list[str]
    order: list[list[int]]
    meta: dict = field(default_factory=dict, compare=False)
    ended: list[bool] | None = None
    """Per completion: did the sample end by itself (False: cut at its length limit, so the reward
    model must score it without an end token, as PPO will). None: all ended (written by people)."""


@dataclass(frozen=True)
class PromptItem:
    id: int
    text: str
    """The plain rendering (what notes and people read)."""
    split: str
    messages: list[Message] | None = field(default=None, hash=False)
    """The conversation the model answers; None: `text` is a single user turn."""

    @property
    def prompt(self) -> Conversation:
        return self.messages if self.messages is not None else self.text
