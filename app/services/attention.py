"""What needs an admin's attention, for the dashboard: labelers' answers waiting for review, prompts
labelers flagged, written prompts waiting, runs that failed lately or are under way, and projects
whose open tasks wait for labelers. Each entry is a count and the page that deals with it.

Archived projects are left out (read-only: nothing there can be dealt with); imported feedback
(no labeler) is not counted as waiting for review: it arrives judged, and a file of 100,000 pairs
would drown everything else."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, true
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import (
    SUBMISSION_MODELS,
    Lease,
    Project,
    ReviewStatus,
    RunStatus,
    Skip,
    SkipReason,
    Task,
    TaskStatus,
    TrainingRun,
    WrittenPrompt,
)
from app.services import projects

LABELER_QUIET = timedelta(hours=24)
"""A project with open tasks and no labeler's answer, skip or held task for this long waits for labelers."""
FAILED_WITHIN = timedelta(days=7)
"""Failed runs listed: those that ended this recently (older ones stay on the Runs page)."""
REASON_WORDS = {SkipReason.pii: "PII", SkipReason.nonsense: "nonsense", SkipReason.harmful: "harmful"}


@dataclass
class Attention:
    what: str
    """review, flags, written, waiting, failed, running or queued."""
    count: int
    text: str
    href: str
    project: str = ""
    """The project's name, for entries of one project."""


def _plural(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def _live_projects(session: Session) -> dict[int, Project]:
    return {p.id: p for p in session.scalars(select(Project).where(Project.archived_at.is_(None)).order_by(Project.id))}


def _reviews(session: Session, live: dict[int, Project]) -> list[Attention]:
    found = []
    for kind, model in SUBMISSION_MODELS.items():
        sub: Any = model
        rows = session.execute(
            select(Task.project_id, func.count())
            .select_from(sub)
            .join(Task, Task.id == sub.task_id)
            .where(sub.review == ReviewStatus.pending, sub.user_id.is_not(None))
            .group_by(Task.project_id)
        ).all()
        for pid, n in rows:
            if pid in live:
                found.append(
                    Attention(
                        "review",
                        n,
                        f"{_plural(n, kind.value)} waiting for review",
                        f"/admin/projects/{pid}/review?kind={kind.value}&source=labelers",
                        live[pid].name,
                    )
                )
    return found


def _flags(session: Session, live: dict[int, Project]) -> list[Attention]:
    rows = session.execute(
        select(Task.project_id, Skip.reason, func.count())
        .join(Task, Task.id == Skip.task_id)
        .where(Skip.reason != SkipReason.skip, Skip.dismissed_at.is_(None))
        .group_by(Task.project_id, Skip.reason)
    ).all()
    by_project: dict[int, dict[SkipReason, int]] = {}
    for pid, reason, n in rows:
        by_project.setdefault(pid, {})[SkipReason(reason)] = n
    found = []
    for pid, reasons in sorted(by_project.items()):
        if pid not in live:
            continue
        total = sum(reasons.values())
        parts = ", ".join(f"{n} {REASON_WORDS[r]}" for r, n in sorted(reasons.items(), key=lambda rn: -rn[1]))
        found.append(
            Attention(
                "flags",
                total,
                f"{_plural(total, 'prompt')} flagged by labelers ({parts})",
                f"/admin/projects/{pid}/flags",
                live[pid].name,
            )
        )
    return found


def _written(session: Session, live: dict[int, Project]) -> list[Attention]:
    rows = session.execute(
        select(WrittenPrompt.project_id, func.count())
        .where(WrittenPrompt.status == ReviewStatus.pending)
        .group_by(WrittenPrompt.project_id)
        .order_by(WrittenPrompt.project_id)
    ).all()
    return [
        Attention(
            "written",
            n,
            f"{_plural(n, 'written prompt')} waiting for review",
            f"/admin/projects/{pid}/written",
            live[pid].name,
        )
        for pid, n in rows
        if pid in live
    ]


def _active_projects(session: Session, since) -> set[int]:
    """Projects where a labeler answered, skipped or took a task since `since`."""
    active: set[int] = set()
    for model in (*SUBMISSION_MODELS.values(), Skip, Lease):
        row: Any = model
        active.update(
            session.scalars(
                select(Task.project_id)
                .join(row, row.task_id == Task.id)
                .where(row.created_at >= since, row.user_id.is_not(None))
                .distinct()
            )
        )
    return active


def _waiting(session: Session, live: dict[int, Project]) -> list[Attention]:
    """Projects (not paused) with open tasks and no labeler at work on them lately."""
    open_tasks = dict(
        session.execute(
            select(Task.project_id, func.count()).where(Task.status == TaskStatus.open).group_by(Task.project_id)
        ).all()
    )
    candidates = [p for pid, p in live.items() if open_tasks.get(pid) and p.paused_at is None]
    if not candidates:
        return []
    active = _active_projects(session, utcnow() - LABELER_QUIET)
    hours = int(LABELER_QUIET.total_seconds() // 3600)
    labelers = projects.active_labeler_count(session)
    found = []
    for p in candidates:
        if p.id in active:
            continue
        n = open_tasks[p.id]
        text = f"{_plural(n, 'open task')}, and no labeler worked on {'it' if n == 1 else 'them'} in the last {hours} h"
        href = f"/admin/projects/{p.id}"
        if not labelers:
            text += ": there is no active labeler; invite some"
            href = "/admin/users"
        elif p.members_only and not projects.member_ids(session, p.id, active_only=True):
            text += ": the project is for its members only and has no active member"
        found.append(Attention("waiting", n, text, href, p.name))
    return found


def _runs(session: Session) -> list[Attention]:
    found = []
    since = utcnow() - FAILED_WITHIN
    groups = [
        (
            "failed",
            TrainingRun.status == RunStatus.failed,
            TrainingRun.finished_at >= since,
            "failed in the last 7 days",
        ),
        ("running", TrainingRun.status == RunStatus.running, true(), "running"),
        ("queued", TrainingRun.status == RunStatus.queued, true(), "waiting for a worker"),
    ]
    for what, status, when, words in groups:
        rows = session.execute(
            select(TrainingRun.id, TrainingRun.kind).where(status, when).order_by(TrainingRun.id.desc())
        ).all()
        if not rows:
            continue
        if len(rows) == 1:
            run_id, kind = rows[0]
            found.append(Attention(what, 1, f"Run #{run_id} ({kind.value}) {words}", f"/admin/runs/{run_id}"))
        else:
            found.append(
                Attention(what, len(rows), f"{_plural(len(rows), 'run')} {words}", f"/admin/runs?status={what}")
            )
    return found


def needs_attention(session: Session) -> list[Attention]:
    """Everything the dashboard lists, the failed runs first; empty when nothing needs attention."""
    live = _live_projects(session)
    runs = _runs(session)
    failed = [a for a in runs if a.what == "failed"]
    under_way = [a for a in runs if a.what != "failed"]
    return (
        failed
        + _reviews(session, live)
        + _flags(session, live)
        + _written(session, live)
        + _waiting(session, live)
        + under_way
    )
