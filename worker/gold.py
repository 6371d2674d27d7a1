"""The real-data demo's data and its judge (`instructloop demo --profile hh`).

The shared hh-rlhf pairs are split once, by the opening user turn of their conversation, into the
loop's pairs and the gold pairs. The loop (SFT, reward model, PPO) is trained in one project that
holds only its own share; a gold reward model is trained in another project on the rest, and it
alone judges PPO against SFT on the loop's held-out prompts (Gao et al. 2022, "Scaling laws for
reward model overoptimization"), so the judge is not the training signal. The reward models are
also scored here on the loop's held-out pairs: overall, where the chosen answer is the shorter one
(a reward model that only learned "longer is better" fails those), and against "longer wins".
"""

import gzip
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import conversation
from app.models import Comparison, Completion, Prompt, Split, Task, TaskKind
from app.services import evaluation, imports

HH_FILE = "hh-rlhf/helpful-base/test-first1554.jsonl.gz"
OASST_FILE = "oasst-en-100/en_100_tree.jsonl.gz"
GOLD_FRACTION = 0.5
"""Share of the hh-rlhf conversations (by opening turn) kept for the gold judge."""


class DataFolderMissing(RuntimeError):
    pass


def default_data_folder() -> Path:
    """../shared/data beside the checkout: where the project's shared public data is kept."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def check_data_folder(folder: Path) -> Path:
    """The folder, if it holds the files the profile reads; DataFolderMissing saying what to give otherwise."""
    missing = [name for name in (HH_FILE, OASST_FILE) if not (folder / name).is_file()]
    if missing:
        where = "does not exist" if not folder.is_dir() else f"has no {', '.join(missing)}"
        raise DataFolderMissing(
            f"The hh profile needs the public hh-rlhf and OpenAssistant data, and the data folder "
            f"{folder} {where}. Give the folder that holds {HH_FILE} and {OASST_FILE} with --data."
        )
    return folder


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line for line in f.read().split("\n") if line.strip()]


def opening_key(line: str) -> str | None:
    """The hash of an hh-rlhf line's opening user turn (what the import draws its split from), or
    None for a line the import would refuse."""
    try:
        records, _ = imports.parse(line, fmt="hh-rlhf")
    except imports.ImportRefused:  # not JSON at all
        return None
    if len(records) != 1:
        return None
    try:
        return imports.split_key(conversation.check(records[0].messages, max_chars=imports.MAX_PROMPT_CHARS))
    except conversation.ConversationError:
        return None


def is_gold(key: str, gold_fraction: float = GOLD_FRACTION) -> bool:
    """Whether a conversation (by its opening turn's key) belongs to the gold share, so
    conversations that open alike stay together."""
    draw = int(hashlib.sha256(f"gold:{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return draw < gold_fraction


def split_hh(lines: Sequence[str], gold_fraction: float = GOLD_FRACTION) -> tuple[list[str], list[str]]:
    """(the loop's lines, the gold judge's lines) of an hh-rlhf file; a line the import would refuse
    stays in the loop's share, where the import reports it."""
    loop: list[str] = []
    gold: list[str] = []
    for line in lines:
        key = opening_key(line)
        (gold if key is not None and is_gold(key, gold_fraction) else loop).append(line)
    return loop, gold


# -- the reward models on held-out pairs ----------------------------------------------------------


@dataclass
class HeldOutPair:
    prompt: list[Any]
    chosen: str
    rejected: str


def held_out_pairs(session: Session, project_id: int, split: Split = Split.valid) -> list[HeldOutPair]:
    """The imported comparisons (chosen = A) on the project's prompts of `split`."""
    rows = session.execute(
        select(Prompt.messages, Comparison.a_completion_id, Comparison.b_completion_id)
        .join(Task, Task.prompt_id == Prompt.id)
        .join(Comparison, Comparison.task_id == Task.id)
        .where(
            Prompt.project_id == project_id,
            Prompt.split == split,
            Task.kind == TaskKind.comparison,
            Comparison.user_id.is_(None),
        )
        .order_by(Comparison.id)
    ).all()
    ids = {c for _, a, b in rows for c in (a, b)}
    texts = dict(session.execute(select(Completion.id, Completion.text).where(Completion.id.in_(ids))).all())
    return [HeldOutPair(list(m), texts[a], texts[b]) for m, a, b in rows]


def words(text: str) -> int:
    return len(text.split())


def pair_figures(pairs: Sequence[HeldOutPair], chosen_scores: Sequence[float], rejected_scores: Sequence[float]):
    """A reward model's accuracy on held-out pairs: overall, on the pairs whose chosen answer has
    fewer words (length-controlled; "longer wins" is wrong on every one of them), the mean of the
    accuracies on the chosen-shorter and chosen-longer pairs (where "longer wins" scores 50%), and
    how often it prefers the longer answer. Pairs of equal length count in the overall figure only."""
    right = [c > r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    shorter = [i for i, p in enumerate(pairs) if words(p.chosen) < words(p.rejected)]
    longer = [i for i, p in enumerate(pairs) if words(p.chosen) > words(p.rejected)]

    def share(idx: Sequence[int], hit) -> float | None:
        return sum(1 for i in idx if hit(i)) / len(idx) if idx else None

    on_shorter = share(shorter, lambda i: right[i])
    on_longer = share(longer, lambda i: right[i])
    unequal = shorter + longer
    return {
        "pairs": len(pairs),
        "accuracy": share(range(len(pairs)), lambda i: right[i]),
        "chosen_shorter_pairs": len(shorter),
        "accuracy_chosen_shorter": on_shorter,
        "accuracy_chosen_longer": on_longer,
        "balanced_accuracy": None if on_shorter is None or on_longer is None else (on_shorter + on_longer) / 2,
        "prefers_longer": share(
            unequal,
            lambda i: (chosen_scores[i] > rejected_scores[i]) == (words(pairs[i].chosen) > words(pairs[i].rejected)),
        ),
    }


def longer_wins(pairs: Sequence[HeldOutPair]) -> dict[str, Any]:
    """The rule "the longer answer wins" (in words) on the same pairs; a length tie counts as wrong."""
    lengths = [(words(p.chosen), words(p.rejected)) for p in pairs]
    return pair_figures(pairs, [float(c) for c, _ in lengths], [float(r) for _, r in lengths])


def score(
    model, tokenizer, items: Sequence[tuple[list[Any], str, bool]], batch_size: int = 8, max_length: int | None = None
) -> list[float]:
    """Reward scores of (conversation, answer, ended) triples, as the evaluate run scores them; cut
    to max_length (the judge's training length) when given."""
    import torch

    from trainer.evaluate import score_pairs

    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(items), batch_size):
            out += score_pairs(model, tokenizer, list(items[start : start + batch_size]), max_length).tolist()
    return out


def judge_pairs(model, tokenizer, pairs: Sequence[HeldOutPair], max_length: int | None = None) -> dict[str, Any]:
    items = [(p.prompt, t, True) for p in pairs for t in (p.chosen, p.rejected)]
    scores = score(model, tokenizer, items, max_length=max_length)
    return pair_figures(pairs, scores[0::2], scores[1::2])


# -- the gold judge of an evaluate run ------------------------------------------------------------


def evaluate_answers(session: Session, run_id: int, version_ids: tuple[int, int]) -> list[tuple[int, list, list]]:
    """(prompt id, conversation, [the answer of each version]) of an evaluate run, each answer a
    Completion row; prompts where one version has no answer are left out."""
    rows = session.execute(
        select(Completion, Prompt.messages)
        .join(Prompt, Prompt.id == Completion.prompt_id)
        .where(Completion.model_version_id.in_(version_ids))
        .order_by(Completion.id)
    ).all()
    by_prompt: dict[int, dict[int, Completion]] = {}
    messages: dict[int, list] = {}
    for completion, prompt_messages in rows:
        if (completion.generation or {}).get("run_id") != run_id:
            continue
        by_prompt.setdefault(completion.prompt_id, {})[completion.model_version_id] = completion
        messages[completion.prompt_id] = list(prompt_messages)
    return [
        (pid, messages[pid], [answers[v] for v in version_ids])
        for pid, answers in by_prompt.items()
        if all(v in answers for v in version_ids)
    ]


def gold_win_rate(
    model, tokenizer, answers: list[tuple[int, list, list]], max_length: int | None = None
) -> dict[str, Any]:
    """The candidate's (first answer's) win rate over the baseline by the gold reward model, with the
    bootstrap interval over prompts; identical answers and equal scores are ties."""
    items = [
        (prompt, c.text, bool((c.generation or {}).get("ended_with_eos", True)))
        for _, prompt, pair in answers
        for c in pair
    ]
    scores = score(model, tokenizer, items, max_length=max_length)
    outcomes: list[tuple[int, float]] = []
    identical = 0
    for (pid, _, (mine, theirs)), s_mine, s_theirs in zip(answers, scores[0::2], scores[1::2], strict=True):
        if mine.text.strip() == theirs.text.strip():
            identical += 1
            outcomes.append((pid, 0.5))
        elif abs(s_mine - s_theirs) < 1e-6:
            outcomes.append((pid, 0.5))
        else:
            outcomes.append((pid, 1.0 if s_mine > s_theirs else 0.0))
    return evaluation.win_rate(outcomes, identical=identical)


def answer_lengths(answers: list[tuple[int, list, list]]) -> list[dict[str, float]]:
    """Mean words and share ended by the model (not cut at max_new_tokens), per version."""
    out = []
    for i in range(2):
        column = [pair[i] for _, _, pair in answers]
        n = max(len(column), 1)
        out.append(
            {
                "mean_words": sum(words(c.text) for c in column) / n,
                "ended": sum(bool((c.generation or {}).get("ended_with_eos", True)) for c in column) / n,
            }
        )
    return out
