"""Exports as JSON Lines, streamed in batches (a few queries per 1,000 rows, never one per row).

- sft: {"prompt", "completion"} from accepted demonstrations (TRL's prompt-completion format).
- preferences: {"prompt", "chosen", "rejected"} (TRL's preference format): every pair of outputs a
  labeler put in different groups of a ranking, and every A/B comparison that is not a tie. Ties dropped.
- rankings: one row per ranking with all outputs, the full order with ties, ratings, flags,
  the order shown and the labeler id.

Every row says its prompt's `split` and `category` (InstructGPT's use case; null when unset) and
its `source`: "labeler", or "imported" (feedback brought from a file, with its `origin`: file, line
and original id). An export holds the train split unless others are asked for (valid and test
prompts are for evaluation), and what app.services.data_scope lets out: no rejected submission,
nothing of a retired prompt, no labeler left out of runs. A prompt is a conversation (app.conversation) that ends with a user turn; the answer is
the next assistant turn. Two formats, as TRL reads them:
- plain: strings; the prompt is its plain rendering (`Prompt.text`: a single user turn as itself,
  a longer conversation as "User: ...\n\nAssistant: ..." blocks), and a trainer sees the text
  without the chat template;
- conversational: message lists, TRL's conversational prompt-completion and preference formats:
  "prompt" is the whole conversation ([system?, user, assistant, ..., user]) and "completion" (sft),
  "chosen" / "rejected" (preferences) are [assistant]; rankings: "prompt" the conversation and each
  completion's "messages" [assistant]. TRL applies the model's chat template to every turn and
  trains only on the answer.
"""

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Row, exists, select
from sqlalchemy.orm import Session

from app.db import read_session
from app.models import (
    IMPORTED,
    LABELER,
    Comparison,
    ComparisonChoice,
    Completion,
    Demonstration,
    Project,
    Prompt,
    Ranking,
    Task,
    TaskCompletion,
)
from app.services import ServiceError, data_scope

KINDS = {
    "sft": "SFT: prompt / completion",
    "preferences": "Preferences: prompt / chosen / rejected (ties dropped)",
    "rankings": "Rankings: full orders with ties, ratings, flags, labeler ids",
}
BATCH = 1000


FORMATS = {"plain": "plain strings", "conversational": "chat messages (TRL's conversational format)"}
SPLITS = ("train", "valid", "test")


@dataclass
class ExportFilter:
    project_id: int
    splits: list[str] = field(default_factory=list)
    """Empty: the train split only."""
    exclude_labelers: list[int] = field(default_factory=list)
    format: str = "plain"
    sources: list[str] = field(default_factory=lambda: list(data_scope.SOURCES))
    """labelers, imported, or both (the default)."""

    def __post_init__(self) -> None:
        self.splits = list(self.splits) or ["train"]


def _conversation(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The stored conversation as export rows carry it: role and content only, in order."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def _scoped(session: Session, stmt, model, f: ExportFilter):
    """The rows of `model` this export holds: the filter's project, splits and sources, and the
    shared rule of what may leave the app (data_scope), with the labelers left out of runs."""
    excluded = set(f.exclude_labelers) | set(data_scope.left_out_labelers(session))
    return (
        stmt.join(Task, Task.id == model.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .where(Task.project_id == f.project_id, Prompt.split.in_(f.splits))
        .where(*data_scope.submission_kept(model, Prompt.id, exclude_labelers=excluded, sources=f.sources))
    )


def _provenance(user_id: int | None, origin_file: str | None, origin_line: int | None, origin_id: str | None):
    """A row's `source`, and for imported feedback its `origin` (the file, line and original id)."""
    if user_id is not None:
        return {"source": LABELER}
    return {"source": IMPORTED, "origin": {"file": origin_file, "line": origin_line, "id": origin_id}}


def _origin_columns(model) -> tuple:
    return (model.user_id, model.origin_file, model.origin_line, model.origin_id)


def _batches(session: Session, stmt, id_column) -> Iterator[Sequence[Row]]:
    """Keyset pagination by id: each batch is one short query, whatever the table size."""
    last = 0
    while True:
        rows = session.execute(stmt.where(id_column > last).order_by(id_column).limit(BATCH)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def sft_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    """Demonstrations (an admin's rejected ones are left out, as in training)."""
    stmt = _scoped(
        session,
        select(
            Demonstration.id,
            _prompt_column(f),
            Demonstration.text,
            Prompt.split,
            Prompt.category,
            *_origin_columns(Demonstration),
        ),
        Demonstration,
        f,
    )
    for rows in _batches(session, stmt, Demonstration.id):
        for _, prompt, completion, split, category, *origin in rows:
            where = {"split": split.value, "category": _value(category), **_provenance(*origin)}
            if f.format == "conversational":
                yield {"prompt": _conversation(prompt), "completion": _assistant(completion), **where}
            else:
                yield {"prompt": prompt, "completion": completion, **where}


def _prompt_column(f: ExportFilter):
    """What a row's prompt is read from: the message list (conversational) or its rendering (plain)."""
    return Prompt.messages if f.format == "conversational" else Prompt.text


def _value(category) -> str | None:
    return category.value if category is not None else None


def _pair(f: ExportFilter, prompt, chosen: str, rejected: str, split, category, origin) -> dict[str, Any]:
    """`prompt`: the conversation (conversational) or its rendering (plain), as _prompt_column reads it;
    `origin`: the submission's user_id, origin_file, origin_line and origin_id."""
    where = {"split": split.value, "category": _value(category), **_provenance(*origin)}
    if f.format == "conversational":
        return {
            "prompt": _conversation(prompt),
            "chosen": _assistant(chosen),
            "rejected": _assistant(rejected),
            **where,
        }
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **where}


def _outputs(session: Session, task_ids: list[int]) -> dict[int, list[tuple[int, str, str]]]:
    """task id -> [(completion id, text, model source)] in canonical position order."""
    out: dict[int, list] = defaultdict(list)
    rows = session.execute(
        select(TaskCompletion.task_id, Completion.id, Completion.text, Completion.source, Completion.model_version_id)
        .join(Completion, Completion.id == TaskCompletion.completion_id)
        .where(TaskCompletion.task_id.in_(task_ids))
        .order_by(TaskCompletion.task_id, TaskCompletion.position)
    )
    for task_id, cid, text, source, model_id in rows:
        out[task_id].append((cid, text, source, model_id))
    return out


def _ranking_batches(session: Session, f: ExportFilter):
    stmt = _scoped(
        session, select(Ranking.id, Ranking, Prompt.id, _prompt_column(f), Prompt.split, Prompt.category), Ranking, f
    )
    for rows in _batches(session, stmt, Ranking.id):
        outputs = _outputs(session, sorted({r[1].task_id for r in rows}))
        yield rows, outputs


def preference_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    for rows, outputs in _ranking_batches(session, f):
        for _, ranking, _pid, prompt, split, category in rows:
            origin = (ranking.user_id, ranking.origin_file, ranking.origin_line, ranking.origin_id)
            texts = {cid: text for cid, text, *_ in outputs[ranking.task_id]}
            order = [[c for c in group if c in texts] for group in ranking.order]
            for i, better in enumerate(order):
                for worse in order[i + 1 :]:
                    for a in better:
                        for b in worse:
                            yield _pair(f, prompt, texts[a], texts[b], split, category, origin)
    stmt = _scoped(
        session,
        select(
            Comparison.id,
            _prompt_column(f),
            Comparison.choice,
            Comparison.a_completion_id,
            Comparison.b_completion_id,
            Prompt.split,
            Prompt.category,
            *_origin_columns(Comparison),
        ),
        Comparison,
        f,
    ).where(Comparison.choice != ComparisonChoice.tie)
    for rows in _batches(session, stmt, Comparison.id):
        ids = {c for r in rows for c in (r[3], r[4])}
        texts = dict(session.execute(select(Completion.id, Completion.text).where(Completion.id.in_(ids))).all())
        for _, prompt, choice, a, b, split, category, *who in rows:
            chosen, rejected = (a, b) if choice == ComparisonChoice.a else (b, a)
            yield _pair(f, prompt, texts[chosen], texts[rejected], split, category, who)


def ranking_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    for rows, outputs in _ranking_batches(session, f):
        for _, r, prompt_id, prompt, split, category in rows:
            ratings = r.ratings or {}
            conversational = f.format == "conversational"
            completions = []
            for cid, text, source, model_id in outputs[r.task_id]:
                rating = ratings.get(str(cid)) or {}
                completions.append(
                    {
                        "id": cid,
                        "text": text,
                        "source": source,
                        "model_version_id": model_id,
                        "likert": rating.get("likert"),
                        "flags": list(rating.get("flags") or []),
                        **({"messages": _assistant(text)} if conversational else {}),
                    }
                )
            yield {
                "ranking_id": r.id,
                "task_id": r.task_id,
                "prompt_id": prompt_id,
                "prompt": _conversation(prompt) if conversational else prompt,
                "split": split.value,
                "category": _value(category),
                "labeler_id": r.user_id,
                **_provenance(r.user_id, r.origin_file, r.origin_line, r.origin_id),
                "completions": completions,
                "order": r.order,
                "display_order": r.display_order,
                "none_acceptable": r.none_acceptable,
                "time_spent_ms": r.time_spent_ms,
                "guideline_version_id": r.guideline_version_id,
                "created_at": r.created_at.isoformat(),
            }


ROWS = {"sft": sft_rows, "preferences": preference_rows, "rankings": ranking_rows}


def check(session: Session, kind: str, f: ExportFilter) -> None:
    """Refuses an export that would be empty or unknown, before any byte is sent."""
    if kind not in ROWS:
        raise ServiceError(f"Unknown export {kind!r}; choose one of {', '.join(ROWS)}.", status_code=404)
    bad = [s for s in f.splits if s not in SPLITS]
    if bad:
        raise ServiceError(f"Unknown split {bad[0]!r}; use train, valid or test.")
    if f.format not in FORMATS:
        raise ServiceError(f"Unknown format {f.format!r}; use {' or '.join(FORMATS)}.")
    bad_sources = [s for s in f.sources if s not in data_scope.SOURCES]
    if bad_sources or not f.sources:
        raise ServiceError(
            f"Unknown source {bad_sources[0]!r}; use labelers or imported."
            if bad_sources
            else "Choose a source: labelers or imported."
        )
    if kind == "sft":
        probe = _scoped(session, select(Demonstration.id), Demonstration, f)
    else:
        probe = _scoped(session, select(Ranking.id), Ranking, f)
        if kind == "preferences":
            probe = probe.union_all(
                _scoped(session, select(Comparison.id), Comparison, f).where(Comparison.choice != ComparisonChoice.tie)
            )
    if not session.scalar(select(exists(probe.subquery().select()))):
        what = {"sft": "accepted demonstrations", "preferences": "rankings or comparisons", "rankings": "rankings"}[
            kind
        ]
        raise ServiceError(
            f"Nothing to export: this project has no {what} yet"
            f" on the {'/'.join(f.splits)} split{'s' * (len(f.splits) > 1)}"
            f"{' with these filters' if f.exclude_labelers else ''}."
        )
    if kind == "preferences" and not any(True for _ in _first_preference(session, f)):
        raise ServiceError("Nothing to export: every ranking so far is a full tie, so there are no preference pairs.")


def _first_preference(session: Session, f: ExportFilter):
    for row in preference_rows(session, f):
        yield row
        return


def stream_lines(engine: Engine, kind: str, f: ExportFilter) -> Iterator[str]:
    """jsonl_lines in a session of its own, for a streamed response: the request's session has ended
    before the body is sent."""
    with read_session(engine) as session:
        yield from jsonl_lines(session, kind, f)


def jsonl_lines(session: Session, kind: str, f: ExportFilter) -> Iterator[str]:
    for row in ROWS[kind](session, f):
        yield json.dumps(row, ensure_ascii=False) + "\n"


def filename(project: Project, kind: str, f: ExportFilter | None = None) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", project.name.lower()).strip("-") or f"project-{project.id}"
    suffix = "" if f is None else "-" + "-".join(f.splits) + ("-chat" if f.format == "conversational" else "")
    return f"{slug}-{kind}{suffix}.jsonl"
