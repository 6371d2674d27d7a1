"""Plain training examples: what the algorithms (sft.py, reward.py, ppo.py, generate.py) take.

They never touch the database: worker/snapshots.py (the worker's side) reads these from it."""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SFTExample:
    prompt: str
    completion: str


@dataclass(frozen=True)
class RankingExample:
    """One labeler's ranking of one prompt's outputs.

    `order` lists groups of indices into `completions`, best first; indices in one group
    are tied, e.g. [[2], [0, 3], [1]]."""

    prompt: str
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
    split: str
