"""Exports as JSON Lines, streamed in batches (a few queries per 1,000 rows, never one per row).

- sft: {"prompt", "completion"} from accepted demonstrations (TRL's prompt-completion format).
- preferences: {"prompt", "chosen", "rejected"} (TRL's preference format): every pair of outputs a
  labeler put in different groups of a ranking, and every A/B comparison that is not a tie. Ties dropped.
- rankings: one row per ranking with all outputs, the full order with ties, ratings, flags,
  the order shown and the labeler id.
"""

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from app.models import Comparison, ComparisonChoice, Completion, Demonstration, Project, Prompt, Ranking, Task, TaskCompletion
from app.services import ServiceError

KINDS = {
    "sft": "SFT: prompt / completion",
    "preferences": "Preferences: prompt / chosen / rejected (ties dropped)",
    "rankings": "Rankings: full orders with ties, ratings, flags, labeler ids",
}
BATCH = 1000


@dataclass
class ExportFilter:
    project_id: int
    splits: list[str] = field(default_factory=list)
    """Empty: every split."""
    exclude_labelers: list[int] = field(default_factory=list)


def _scoped(stmt, model, f: ExportFilter):
    stmt = stmt.join(Task, Task.id == model.task_id).join(Prompt, Prompt.id == Task.prompt_id).where(
        Task.project_id == f.project_id)
    if f.splits:
        stmt = stmt.where(Prompt.split.in_(f.splits))
    if f.exclude_labelers:
        stmt = stmt.where(model.user_id.not_in(f.exclude_labelers))
    return stmt


def _batches(session: Session, stmt, id_column) -> Iterator[list]:
    """Keyset pagination by id: each batch is one short query, whatever the table size."""
    last = 0
    while True:
        rows = session.execute(stmt.where(id_column > last).order_by(id_column).limit(BATCH)).all()
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def sft_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    stmt = _scoped(select(Demonstration.id, Prompt.text, Demonstration.text), Demonstration, f).where(
        Demonstration.accepted)
    for rows in _batches(session, stmt, Demonstration.id):
        for _, prompt, completion in rows:
            yield {"prompt": prompt, "completion": completion}


def _outputs(session: Session, task_ids: list[int]) -> dict[int, list[tuple[int, str, str]]]:
    """task id -> [(completion id, text, model source)] in canonical position order."""
    out: dict[int, list] = defaultdict(list)
    rows = session.execute(select(TaskCompletion.task_id, Completion.id, Completion.text, Completion.source,
                                  Completion.model_version_id)
                           .join(Completion, Completion.id == TaskCompletion.completion_id)
                           .where(TaskCompletion.task_id.in_(task_ids)).order_by(TaskCompletion.task_id,
                                                                                 TaskCompletion.position))
    for task_id, cid, text, source, model_id in rows:
        out[task_id].append((cid, text, source, model_id))
    return out


def _ranking_batches(session: Session, f: ExportFilter):
    stmt = _scoped(select(Ranking.id, Ranking, Prompt.id, Prompt.text, Prompt.split), Ranking, f)
    for rows in _batches(session, stmt, Ranking.id):
        outputs = _outputs(session, sorted({r[1].task_id for r in rows}))
        yield rows, outputs


def preference_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    for rows, outputs in _ranking_batches(session, f):
        for _, ranking, _pid, prompt, _split in rows:
            texts = {cid: text for cid, text, *_ in outputs[ranking.task_id]}
            order = [[c for c in group if c in texts] for group in ranking.order]
            for i, better in enumerate(order):
                for worse in order[i + 1:]:
                    for a in better:
                        for b in worse:
                            yield {"prompt": prompt, "chosen": texts[a], "rejected": texts[b]}
    stmt = _scoped(select(Comparison.id, Prompt.text, Comparison.choice, Comparison.a_completion_id,
                          Comparison.b_completion_id), Comparison, f).where(Comparison.choice != ComparisonChoice.tie)
    for rows in _batches(session, stmt, Comparison.id):
        ids = {c for r in rows for c in (r[3], r[4])}
        texts = dict(session.execute(select(Completion.id, Completion.text).where(Completion.id.in_(ids))).all())
        for _, prompt, choice, a, b in rows:
            chosen, rejected = (a, b) if choice == ComparisonChoice.a else (b, a)
            yield {"prompt": prompt, "chosen": texts[chosen], "rejected": texts[rejected]}


def ranking_rows(session: Session, f: ExportFilter) -> Iterator[dict[str, Any]]:
    for rows, outputs in _ranking_batches(session, f):
        for _, r, prompt_id, prompt, split in rows:
            ratings = r.ratings or {}
            yield {
                "ranking_id": r.id, "task_id": r.task_id, "prompt_id": prompt_id, "prompt": prompt,
                "split": split.value, "labeler_id": r.user_id,
                "completions": [{"id": cid, "text": text, "source": source, "model_version_id": model_id,
                                 "likert": (ratings.get(str(cid)) or {}).get("likert"),
                                 "flags": list((ratings.get(str(cid)) or {}).get("flags") or [])}
                                for cid, text, source, model_id in outputs[r.task_id]],
                "order": r.order, "display_order": r.display_order, "none_acceptable": r.none_acceptable,
                "time_spent_ms": r.time_spent_ms, "guideline_version_id": r.guideline_version_id,
                "created_at": r.created_at.isoformat(),
            }


ROWS = {"sft": sft_rows, "preferences": preference_rows, "rankings": ranking_rows}


def check(session: Session, kind: str, f: ExportFilter) -> None:
    """Refuses an export that would be empty or unknown, before any byte is sent."""
    if kind not in ROWS:
        raise ServiceError(f"Unknown export {kind!r}; choose one of {', '.join(ROWS)}.", status_code=404)
    bad = [s for s in f.splits if s not in ("train", "valid", "test")]
    if bad:
        raise ServiceError(f"Unknown split {bad[0]!r}; use train, valid or test.")
    if kind == "sft":
        probe = _scoped(select(Demonstration.id), Demonstration, f).where(Demonstration.accepted)
    else:
        probe = _scoped(select(Ranking.id), Ranking, f)
        if kind == "preferences":
            probe = probe.union_all(_scoped(select(Comparison.id), Comparison, f).where(
                Comparison.choice != ComparisonChoice.tie))
    if not session.scalar(select(exists(probe.subquery().select()))):
        what = {"sft": "accepted demonstrations", "preferences": "rankings or comparisons",
                "rankings": "rankings"}[kind]
        raise ServiceError(f"Nothing to export: this project has no {what} yet"
                           f"{' with these filters' if f.splits or f.exclude_labelers else ''}.")
    if kind == "preferences" and not any(True for _ in _first_preference(session, f)):
        raise ServiceError("Nothing to export: every ranking so far is a full tie, so there are no preference pairs.")


def _first_preference(session: Session, f: ExportFilter):
    for row in preference_rows(session, f):
        yield row
        return


def jsonl_lines(session: Session, kind: str, f: ExportFilter) -> Iterator[str]:
    for row in ROWS[kind](session, f):
        yield json.dumps(row, ensure_ascii=False) + "\n"


def filename(project: Project, kind: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", project.name.lower()).strip("-") or f"project-{project.id}"
    return f"{slug}-{kind}.jsonl"
