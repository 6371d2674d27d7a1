"""Review of what labelers submit: the admin's queue of submissions, each shown whole as the labeler
saw it, and the decision on it (accept / reject with a reason, reversible, recorded with who and
when). A rejected submission is left out of training snapshots and exports (worker/snapshots.py,
services/exports.py); the labeler sees the decision and its reason in their history.

Disagreements: tasks whose labelers disagree, side by side; an admin asks one more labeler
(raises the task's required count) or makes one answer the task's gold.

Flags: the prompts labelers skipped as PII, nonsense or harmful (with their notes), which an admin
retires (the prompt's open tasks with it) or dismisses; and the per-output flags of rankings
(InstructGPT's metadata), counted per project."""

import itertools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, null, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from app.db import atomic, changed_rows, utcnow
from app.models import (
    OUTPUT_FLAGS,
    SUBMISSION_MODELS,
    Completion,
    Project,
    Prompt,
    Ranking,
    ReviewStatus,
    Skip,
    SkipReason,
    Task,
    TaskCompletion,
    TaskKind,
    TaskStatus,
    User,
)
from app.services import Conflict, NotFound, ServiceError, data_scope, projects, stats, tasks
from app.validation import text_problem

MAX_REASON = 2000
PAGE = 25
DISAGREEMENT_SCAN = 2000
"""Shared tasks looked at for disagreements (the newest)."""


@dataclass
class Output:
    """One output of a ranking or comparison, as the labeler saw it."""

    letter: str
    completion_id: int
    text: str
    rank: int | None = None
    """1 = best; equal ranks are ties (rankings)."""
    likert: int | None = None
    flags: list[str] = field(default_factory=list)


@dataclass
class Item:
    kind: TaskKind
    submission: Any
    task: Task
    prompt: Prompt
    labeler: User | None
    """None: imported feedback (the submission's origin_file says from where)."""
    reviewer: User | None
    outputs: list[Output] = field(default_factory=list)


@dataclass
class Filters:
    kind: TaskKind = TaskKind.demonstration
    status: str = "pending"
    """pending, accepted, rejected or all."""
    labeler_id: int | None = None
    flagged: bool = False
    """Rankings with a flagged output or "none acceptable"; comparisons with a reason written."""
    days: int | None = None
    """Submitted in the last N days."""
    agreement_below: int | None = None
    """By labelers whose agreement with the others on shared ranking tasks is below this percent."""
    after: int = 0
    """Keyset cursor: submissions with a higher id."""
    source: str = ""
    """labelers or imported (feedback from a file, no labeler); empty: both."""
    text: str = ""
    """A substring, any case, of the prompt, the answer (a demonstration, a comparison's reason) or
    an output shown; empty: any."""


def parse_filters(
    kind: str,
    status: str,
    labeler: str,
    flagged: str,
    days: str,
    after: str,
    agreement_below: str = "",
    source: str = "",
    text: str = "",
) -> Filters:
    """Filters from query-string values; anything unknown falls back to the default (a search too
    long is refused: ServiceError)."""
    return Filters(
        text=tasks.search_text(text),
        agreement_below=int(agreement_below) if agreement_below.isdigit() and 0 < int(agreement_below) <= 100 else None,
        kind=TaskKind(kind) if kind in TaskKind.__members__ else TaskKind.demonstration,
        status=status if status in (*ReviewStatus.__members__, "all") else "pending",
        labeler_id=int(labeler) if labeler.isdigit() else None,
        flagged=flagged in ("1", "on", "true"),
        days=int(days) if days.isdigit() and 0 < int(days) <= 3650 else None,
        after=int(after) if after.isdigit() else 0,
        source=source if source in data_scope.SOURCES else "",
    )


def _scoped(session: Session, project_id: int, f: Filters):
    model = SUBMISSION_MODELS[f.kind]
    stmt = select(model).join(Task, Task.id == model.task_id).where(Task.project_id == project_id)
    if f.agreement_below is not None:
        agreement, _ = stats.memo(session, "agreement", (project_id,), lambda s: stats.ranking_agreement(s, project_id))
        low = [
            uid for uid, a in agreement.per_labeler.items() if a.rate is not None and a.rate < f.agreement_below / 100
        ]
        stmt = stmt.where(model.user_id.in_(low))
    if f.labeler_id is not None:
        stmt = stmt.where(model.user_id == f.labeler_id)
    if f.source:
        stmt = stmt.where(data_scope.from_sources(model, [f.source]))
    if f.days is not None:
        stmt = stmt.where(model.created_at >= utcnow() - timedelta(days=f.days))
    if f.flagged and f.kind == TaskKind.ranking:
        stmt = stmt.where(or_(Ranking.flag_count > 0, Ranking.none_acceptable))
    elif f.flagged and f.kind == TaskKind.comparison:
        stmt = stmt.where(SUBMISSION_MODELS[TaskKind.comparison].reason != "")  # type: ignore[union-attr]
    if f.text:
        stmt = stmt.join(Prompt, Prompt.id == Task.prompt_id).where(_mentions(model, f.kind, f.text))
    return model, stmt


def _mentions(model: Any, kind: TaskKind, text: str) -> Any:
    """The submission's prompt, its answer or one of the outputs its task shows contains `text` (any case)."""
    shown = (
        select(TaskCompletion.task_id)
        .join(Completion, Completion.id == TaskCompletion.completion_id)
        .where(TaskCompletion.task_id == Task.id, Completion.text.icontains(text, autoescape=True))
    )
    found = [Prompt.text.icontains(text, autoescape=True)]
    if kind == TaskKind.demonstration:
        found.append(model.text.icontains(text, autoescape=True))
    else:
        found.append(shown.exists())
        if kind == TaskKind.comparison:
            found.append(model.reason.icontains(text, autoescape=True))
    return or_(*found)


def status_counts(session: Session, project_id: int, f: Filters) -> dict[str, int]:
    """How many submissions of the filter (whatever their status) are pending, accepted, rejected."""
    model, stmt = _scoped(session, project_id, f)
    rows = session.execute(stmt.with_only_columns(model.review, func.count()).group_by(model.review)).all()
    counts = {s.value: 0 for s in ReviewStatus}
    counts.update({ReviewStatus(status).value: n for status, n in rows})
    counts["all"] = sum(counts.values())
    return counts


def queue(session: Session, project_id: int, f: Filters, *, limit: int = PAGE) -> list[Item]:
    """The next `limit` submissions of the filter, oldest first, each whole."""
    model, stmt = _scoped(session, project_id, f)
    if f.status != "all":
        stmt = stmt.where(model.review == ReviewStatus(f.status))
    subs = list(session.scalars(stmt.where(model.id > f.after).order_by(model.id).limit(limit)))
    return items(session, f.kind, subs)


def _by_id(session: Session, model: Any, ids: set[int]) -> dict[int, Any]:
    """Rows by primary key: those the session holds already, the rest in one query (none if all are
    held). A decision's card is drawn again right after the decision, from rows just loaded."""
    found = {i: session.identity_map.get(identity_key(model, i)) for i in ids}
    missing = [i for i, row in found.items() if row is None]
    if missing:
        found.update((row.id, row) for row in session.scalars(select(model).where(model.id.in_(missing))))
    return found


def items(session: Session, kind: TaskKind, subs: list[Any]) -> list[Item]:
    """Submissions with what it takes to show them as the labeler saw them."""
    if not subs:
        return []
    tasks = _by_id(session, Task, {s.task_id for s in subs})
    prompts = _by_id(session, Prompt, {t.prompt_id for t in tasks.values()})
    users = _by_id(
        session,
        User,
        {s.user_id for s in subs if s.user_id is not None} | {s.reviewed_by_id for s in subs if s.reviewed_by_id},
    )
    completion_ids = {cid for s in subs for cid in _completion_ids(kind, s)}
    texts = (
        dict(session.execute(select(Completion.id, Completion.text).where(Completion.id.in_(completion_ids))).all())
        if completion_ids
        else {}
    )
    out = []
    for s in subs:
        task = tasks[s.task_id]
        out.append(
            Item(
                kind=kind,
                submission=s,
                task=task,
                prompt=prompts[task.prompt_id],
                labeler=users[s.user_id] if s.user_id is not None else None,
                reviewer=users.get(s.reviewed_by_id) if s.reviewed_by_id else None,
                outputs=_outputs(kind, s, texts),
            )
        )
    return out


def item(session: Session, kind: str, submission_id: int) -> Item:
    """One submission, whole: the submission, its task and prompt in one query."""
    if kind not in TaskKind.__members__:
        raise NotFound(f"Unknown submission kind {kind!r}.")
    model = SUBMISSION_MODELS[TaskKind(kind)]
    found = session.execute(
        select(model, Task, Prompt)
        .join(Task, model.task_id == Task.id)
        .join(Prompt, Task.prompt_id == Prompt.id)
        .where(model.id == submission_id)
    ).first()
    if found is None:
        raise NotFound(f"No {kind} #{submission_id}.")
    return items(session, TaskKind(kind), [found[0]])[0]


def _completion_ids(kind: TaskKind, sub: Any) -> list[int]:
    if kind == TaskKind.ranking:
        return list(sub.display_order or [cid for group in sub.order for cid in group])
    if kind == TaskKind.comparison:
        return [sub.a_completion_id, sub.b_completion_id]
    return []


def _outputs(kind: TaskKind, sub: Any, texts: dict[int, str]) -> list[Output]:
    """Outputs in the order the labeler saw them (A, B, ...), with rank, Likert and flags."""
    ids = _completion_ids(kind, sub)
    rank = {cid: i + 1 for i, group in enumerate(sub.order) for cid in group} if kind == TaskKind.ranking else {}
    ratings = (sub.ratings or {}) if kind == TaskKind.ranking else {}
    outputs = []
    for i, cid in enumerate(ids):
        rating = ratings.get(str(cid)) or ratings.get(cid) or {}
        outputs.append(
            Output(
                letter=chr(ord("A") + i),
                completion_id=cid,
                text=texts.get(cid, "(this output no longer exists)"),
                rank=rank.get(cid),
                likert=rating.get("likert"),
                flags=list(rating.get("flags") or []),
            )
        )
    return outputs


@dataclass
class Decision:
    kind: TaskKind
    submission_id: int
    review: ReviewStatus
    review_reason: str
    reviewed_by_id: int | None
    reviewed_at: datetime | None


class RevisionChanged(Conflict):
    """The submission was revised by its labeler since the admin read it (409): the decision is
    not recorded; `revision` is the one current now."""

    def __init__(self, message: str, revision: int):
        super().__init__(message)
        self.revision = revision


def _project_of(session: Session, model: Any, submission_id: int) -> Project:
    project = session.scalar(
        select(Project)
        .join(Task, Task.project_id == Project.id)
        .join(model, model.task_id == Task.id)
        .where(model.id == submission_id)
    )
    if project is None:
        raise NotFound(f"No {model.__name__.lower()} #{submission_id}.")
    return project


@atomic
def decide(
    session: Session,
    admin: User,
    kind: str,
    submission_id: int,
    decision: str,
    reason: str = "",
    *,
    revision: int | None = None,
) -> Decision:
    """Records an admin's decision on a submission: accepted, rejected (a reason is required) or
    pending again (undoes an earlier decision), in one UPDATE (the last decision wins).

    `revision`: the revision the admin read. Given, the UPDATE applies only while the submission is
    still that revision, so a decision never lands on text its labeler revised since (RevisionChanged,
    409; a revise in progress holds the row, and the UPDATE reads the row it leaves). None: whatever
    is current (API clients that send none)."""
    if kind not in TaskKind.__members__:
        raise NotFound(f"Unknown submission kind {kind!r}; use demonstration, ranking or comparison.")
    if decision not in ReviewStatus.__members__:
        raise ServiceError(f"Unknown decision {decision!r}; use accepted, rejected or pending.")
    reason = (reason or "").replace("\r\n", "\n").strip()
    if len(reason) > MAX_REASON:
        raise ServiceError(f"The reason has {len(reason)} characters; the limit is {MAX_REASON}.")
    if problem := text_problem(reason):
        raise ServiceError(f"The reason {problem}.")
    status = ReviewStatus(decision)
    if status == ReviewStatus.rejected and not reason:
        raise ServiceError("Say why it is rejected: the labeler sees the reason in their history.")
    decided = status != ReviewStatus.pending
    model = SUBMISSION_MODELS[TaskKind(kind)]
    projects.check_writable(_project_of(session, model, submission_id))
    stmt = update(model).where(model.id == submission_id)
    if revision is not None:
        stmt = stmt.where(model.revision == revision)
    row = session.execute(
        stmt.values(
            review=status,
            review_reason=reason if decided else "",
            reviewed_by_id=admin.id if decided else None,
            reviewed_at=utcnow() if decided else None,
        ).returning(model.review, model.review_reason, model.reviewed_by_id, model.reviewed_at)
    ).first()
    if row is None:
        now = session.scalar(select(model.revision).where(model.id == submission_id))
        if now is None:
            raise NotFound(f"No {kind} #{submission_id}.")
        raise RevisionChanged(
            f"The labeler revised {kind} #{submission_id} after you read it (revision {revision}; it is revision "
            f"{now} now): read it as it is now, then decide again.",
            now,
        )
    return Decision(TaskKind(kind), submission_id, ReviewStatus(row[0]), *row[1:])


MAX_SHOWN = 100
"""Items one "accept the shown items" takes (a review page shows PAGE)."""


@dataclass
class AcceptedShown:
    accepted: int
    revised: int
    """Skipped: their labeler revised them since the page showed them (they stay pending)."""
    decided: int
    """Skipped: no longer pending (another admin decided them meanwhile) or gone."""


@atomic
def accept_shown(
    session: Session, admin: User, project_id: int, kind: str, shown: list[tuple[int, int]]
) -> AcceptedShown:
    """Accepts the pending submissions a review page showed, each (submission id, revision shown)
    only while it is still that revision and still pending: in one UPDATE, so an answer revised
    since the page was rendered is never accepted (as `decide` with a revision), nor a decision
    another admin made meanwhile overwritten."""
    if kind not in TaskKind.__members__:
        raise NotFound(f"Unknown submission kind {kind!r}; use demonstration, ranking or comparison.")
    projects.check_writable(projects.get_project(session, project_id))
    wanted = dict(shown)  # (a repeated id: the last revision named)
    if not wanted:
        raise ServiceError("No pending items were shown, so none was accepted.")
    if len(wanted) > MAX_SHOWN:
        raise ServiceError(f"{len(wanted)} items at once is too many; the limit is {MAX_SHOWN}.")
    model = SUBMISSION_MODELS[TaskKind(kind)]
    in_project = model.task_id.in_(select(Task.id).where(Task.project_id == project_id))
    accepted = session.scalars(
        update(model)
        .where(
            or_(*(and_(model.id == sub_id, model.revision == rev) for sub_id, rev in wanted.items())),
            model.review == ReviewStatus.pending,
            in_project,
        )
        .values(review=ReviewStatus.accepted, review_reason="", reviewed_by_id=admin.id, reviewed_at=utcnow())
        .returning(model.id)
        .execution_options(synchronize_session=False)
    ).all()
    done = set(accepted)
    left = [i for i in wanted if i not in done]
    now = dict(session.execute(select(model.id, model.revision).where(model.id.in_(left), in_project)).all())
    revised = sum(1 for i in left if i in now and now[i] != wanted[i])
    session.expire_all()
    return AcceptedShown(len(accepted), revised, len(left) - revised)


# -- flags ------------------------------------------------------------------------------------


@dataclass
class Flag:
    skip: Skip
    task: Task
    prompt: Prompt
    labeler: User


def open_flags(session: Session, project_id: int, *, limit: int = 200) -> list[Flag]:
    """Prompts labelers skipped as PII, nonsense or harmful, not yet dismissed, newest first."""
    rows = session.execute(
        select(Skip, Task, Prompt, User)
        .join(Task, Task.id == Skip.task_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .join(User, User.id == Skip.user_id)
        .where(Task.project_id == project_id, Skip.reason != SkipReason.skip, Skip.dismissed_at.is_(None))
        .order_by(Skip.created_at.desc(), Skip.id.desc())
        .limit(limit)
    ).all()
    return [Flag(*row) for row in rows]


def _flag(session: Session, project_id: int, skip_id: int) -> tuple[Skip, Task]:
    row = session.execute(
        select(Skip, Task).join(Task, Task.id == Skip.task_id).where(Skip.id == skip_id, Task.project_id == project_id)
    ).first()
    if row is None:
        raise NotFound(f"No flag #{skip_id} in this project.")
    return row[0], row[1]


def _decide_flag(session: Session, admin: User, project_id: int, skip_id: int) -> tuple[Skip, Task]:
    """Marks the open flag dealt with, once: of two admins deciding it at once (dismiss, retire),
    the second's conditional UPDATE finds it dealt with and is refused (409)."""
    skip, task = _flag(session, project_id, skip_id)
    projects.check_writable(projects.get_project(session, project_id))
    done = session.execute(
        update(Skip)
        .where(Skip.id == skip.id, Skip.dismissed_at.is_(None))
        .values(dismissed_at=utcnow(), dismissed_by_id=admin.id)
        .execution_options(synchronize_session=False)
    )
    if not changed_rows(done):
        raise Conflict(f"Flag #{skip.id} was dealt with already (dismissed, or its prompt retired); reload the page.")
    session.refresh(skip)
    return skip, task


@atomic
def dismiss_flag(session: Session, admin: User, project_id: int, skip_id: int) -> Skip:
    """The admin looked at the flag and lets the prompt be."""
    skip, _ = _decide_flag(session, admin, project_id, skip_id)
    return skip


@atomic
def retire_flagged_prompt(session: Session, admin: User, project_id: int, skip_id: int) -> int:
    """Retires the flagged prompt's open tasks (no labeler gets them again; what was submitted stays)
    and dismisses every open flag on the prompt. Returns how many tasks were retired."""
    _, task = _decide_flag(session, admin, project_id, skip_id)
    task_ids = select(Task.id).where(Task.prompt_id == task.prompt_id)
    retired = changed_rows(
        session.execute(
            update(Task)
            .where(Task.prompt_id == task.prompt_id, Task.status == TaskStatus.open)
            .values(status=TaskStatus.retired)
            .execution_options(synchronize_session=False)
        )
    )
    session.execute(
        update(Skip)
        .where(Skip.task_id.in_(task_ids), Skip.reason != SkipReason.skip, Skip.dismissed_at.is_(None))
        .values(dismissed_at=utcnow(), dismissed_by_id=admin.id)
        .execution_options(synchronize_session=False)
    )
    session.expire_all()
    return int(retired or 0)


def output_flag_counts(session: Session, project_id: int) -> dict[str, int]:
    """How often labelers ticked each output flag in the project's rankings (rankings with a flag only)."""
    counts: Counter[str] = Counter({flag: 0 for flag in OUTPUT_FLAGS})
    stmt = (
        select(Ranking.ratings)
        .join(Task, Task.id == Ranking.task_id)
        .where(Task.project_id == project_id, Ranking.flag_count > 0)
    )
    for ratings in session.scalars(stmt):
        for rating in (ratings or {}).values():
            if isinstance(rating, dict):
                counts.update(f for f in rating.get("flags") or [] if isinstance(f, str))
    return dict(counts)


# -- disagreements ----------------------------------------------------------------------------


@dataclass
class Mark:
    """One labeler's judgment of one output."""

    letter: str
    """The letter this labeler saw the output under (each labeler sees the outputs in an order of their own)."""
    rank: int | None = None
    """Rankings: 1 = best."""
    tied: bool = False
    """Rankings: another output shares the place."""
    likert: int | None = None
    flags: list[str] = field(default_factory=list)
    verdict: str = ""
    """Comparisons: "preferred", "not preferred" or "tie"."""


@dataclass
class OutputRow:
    """One output of a disagreement, identified by its completion id (not by the letters the
    labelers saw it under), with each labeler's mark in the order of Disagreement.items."""

    number: int
    """1, 2, ...: the output's place in the task."""
    completion_id: int
    text: str
    marks: list[Mark | None]
    """None: that labeler's answer does not hold this output."""
    spread: int = 0
    """Rankings: the worst place minus the best place the labelers gave it."""


@dataclass
class Disagreement:
    task: Task
    agreement: float
    """Rankings: the labeler pairs' mean same-order rate over strictly ordered output pairs;
    comparisons: the share of labeler pairs that picked the same winner."""
    items: list[Item]
    rows: list[OutputRow] = field(default_factory=list)


def _mark(kind: TaskKind, item: Item, output: Output) -> Mark:
    if kind == TaskKind.comparison:
        winner = stats.comparison_winner(
            item.submission.choice, item.submission.a_completion_id, item.submission.b_completion_id
        )
        verdict = "tie" if winner is None else "preferred" if winner == output.completion_id else "not preferred"
        return Mark(output.letter, verdict=verdict)
    tied = any(o.rank == output.rank and o is not output for o in item.outputs) if output.rank else False
    return Mark(output.letter, output.rank, tied, output.likert, output.flags)


def _rows(kind: TaskKind, positions: list[int], found: list[Item]) -> list[OutputRow]:
    """The task's outputs in the task's own order (`positions`: completion ids), one row each."""
    seen = {o.completion_id: o.text for item in found for o in item.outputs}
    ids = [cid for cid in positions if cid in seen] + sorted(set(seen) - set(positions))
    rows = []
    for number, cid in enumerate(ids, start=1):
        marks = []
        for item in found:
            output = next((o for o in item.outputs if o.completion_id == cid), None)
            marks.append(_mark(kind, item, output) if output is not None else None)
        places = [m.rank for m in marks if m is not None and m.rank is not None]
        rows.append(OutputRow(number, cid, seen[cid], marks, max(places) - min(places) if places else 0))
    return rows


def _agreement(kind: TaskKind, answers: list[Any]) -> float | None:
    """answers: each labeler's ranking order, or comparison winner (completion id, None for a tie)."""
    rates = []
    for a, b in itertools.combinations(answers, 2):
        if kind == TaskKind.comparison:
            rates.append(float(a == b))
        elif (rate := stats.compare_orders(a, b).rate) is not None:
            rates.append(rate)
    return sum(rates) / len(rates) if rates else None


def disagreements(
    session: Session, project_id: int, kind: TaskKind = TaskKind.ranking, *, below: float = 0.6, limit: int = 20
) -> tuple[list[Disagreement], int]:
    """Tasks of `kind` that two or more labelers did and whose agreement is below `below`, most
    disagreeing first (among the newest DISAGREEMENT_SCAN shared tasks), with their submissions
    whole; and how many shared tasks were looked at. Rejected answers do not count."""
    model: Any = SUBMISSION_MODELS[kind]
    shared = (
        select(Task.id)
        .where(Task.project_id == project_id, Task.kind == kind, Task.done_count >= 2)
        .order_by(Task.id.desc())
        .limit(DISAGREEMENT_SCAN)
        .subquery()
    )
    answer = (
        (model.order,) if kind == TaskKind.ranking else (model.choice, model.a_completion_id, model.b_completion_id)
    )
    rows = session.execute(
        select(model.id, model.task_id, *answer)
        .where(model.task_id.in_(select(shared.c.id)), model.review != ReviewStatus.rejected)
        .order_by(model.id)
    ).all()
    by_task: dict[int, list[tuple[int, Any]]] = {}
    for sub_id, task_id, *values in rows:
        value = values[0] if kind == TaskKind.ranking else stats.comparison_winner(*values)
        by_task.setdefault(task_id, []).append((sub_id, value))
    scored = [
        (rate, task_id)
        for task_id, answers in by_task.items()
        if len(answers) >= 2 and (rate := _agreement(kind, [v for _, v in answers])) is not None
    ]
    worst = sorted((r, t) for r, t in scored if r < below)[:limit]
    ids = [sub_id for _, t in worst for sub_id, _ in by_task[t]]
    found = {
        i.submission.id: i for i in items(session, kind, list(session.scalars(select(model).where(model.id.in_(ids)))))
    }
    positions: dict[int, list[int]] = {}
    for task_id, cid in session.execute(
        select(TaskCompletion.task_id, TaskCompletion.completion_id)
        .where(TaskCompletion.task_id.in_([t for _, t in worst]))
        .order_by(TaskCompletion.task_id, TaskCompletion.position)
    ):
        positions.setdefault(task_id, []).append(cid)
    shown = []
    for rate, t in worst:
        labelers = [found[sub_id] for sub_id, _ in by_task[t]]
        output_rows = _rows(kind, positions.get(t, []), labelers)
        shown.append(Disagreement(labelers[0].task, rate, labelers, output_rows))
    return shown, len(by_task)


def ask_one_more_labeler(session: Session, task_id: int) -> Task:
    """One more submission wanted on the task: it opens again for a labeler who has not done it."""
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"No task #{task_id}.")
    projects.check_writable(task.project)
    if task.status == TaskStatus.retired:
        raise ServiceError("This task is retired; it is not handed out again.")
    if task.required >= projects.OVERLAP_MAX:
        raise ServiceError(f"The task already asks for {task.required} labelers, the most there can be.")
    task.required += 1
    task.status = TaskStatus.open
    session.flush()
    return task


def set_gold(session: Session, task: Task, gold: dict | None) -> None:
    """Gold for a ranking task: {"order": [[id], [id, id], ...]} over exactly its outputs;
    for a comparison task: {"winner": completion id or None for a tie}; None removes it."""
    projects.check_writable(task.project)
    if gold is None:
        task.gold = null()
        return
    ids = {o.completion_id for o in task.outputs}
    if task.kind == TaskKind.ranking:
        order = gold.get("order")
        flat = [c for g in order or [] for c in g] if isinstance(order, list) else []
        if sorted(flat) != sorted(ids) or any(not g for g in order or []):
            raise ServiceError("The gold order must place every output of the task exactly once.")
        task.gold = {"order": [[int(c) for c in g] for g in order or []]}
    elif task.kind == TaskKind.comparison:
        winner = gold.get("winner")
        if winner is not None and winner not in ids:
            raise ServiceError("The gold winner must be one of the two outputs, or a tie.")
        task.gold = {"winner": winner}
    else:
        raise ServiceError("Gold answers are for ranking and comparison tasks; demonstrations are free text.")


def gold_from_submission(session: Session, kind: str, submission_id: int) -> Task:
    """The submission's answer becomes its task's gold answer (rankings and comparisons)."""
    one = item(session, kind, submission_id)
    sub = one.submission
    if one.kind == TaskKind.ranking:
        set_gold(session, one.task, {"order": sub.order})
    elif one.kind == TaskKind.comparison:
        set_gold(
            session, one.task, {"winner": stats.comparison_winner(sub.choice, sub.a_completion_id, sub.b_completion_id)}
        )
    else:
        raise ServiceError("Gold answers are for ranking and comparison tasks; demonstrations are free text.")
    session.flush()
    return one.task


# -- labeler quality --------------------------------------------------------------------------


def acceptance(session: Session, project_id: int | None = None) -> dict[int, tuple[int, int]]:
    """Per labeler: (accepted, rejected) demonstrations among those an admin reviewed."""
    model = SUBMISSION_MODELS[TaskKind.demonstration]
    stmt = select(model.user_id, model.review, func.count()).where(model.review != ReviewStatus.pending)
    if project_id is not None:
        stmt = stmt.join(Task, Task.id == model.task_id).where(Task.project_id == project_id)
    out: dict[int, list[int]] = {}
    for user_id, status, n in session.execute(stmt.group_by(model.user_id, model.review)):
        if user_id is None:  # imported feedback: no labeler's figure
            continue
        out.setdefault(user_id, [0, 0])[0 if status == ReviewStatus.accepted else 1] += n
    return {uid: (a, r) for uid, (a, r) in out.items()}


def leave_out_of_training(session: Session, user_id: int, left_out: bool) -> User:
    """Leaves a labeler's data out of every run created from now on (or takes it back in); runs
    already created keep the data they were made with."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"No user #{user_id}.")
    user.left_out_of_training = left_out
    session.flush()
    return user
