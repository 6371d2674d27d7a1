"""The task queue: hands each labeler the next task it may work on and leases it.

A task is available to a labeler when it is open, the labeler has neither submitted nor
skipped it, and its stored submissions plus live leases are below `required`. Tasks go out
by priority (higher first), then age (older first). A lease is a row per (task, labeler)
that holds one slot until `expires_at`; after that the slot is free again (the row stays,
so a labeler coming back to the task sees the same shuffled order of outputs).

Concurrency: leasing is one `app.db.atomic` step: on SQLite it holds the single writer lock from
its start until it commits, so the read-check-write below cannot interleave. On Postgres the candidate row is taken with
`SELECT ... FOR UPDATE SKIP LOCKED` (concurrent labelers pass over it instead of waiting),
and once the lock is held the live leases are counted again with a fresh snapshot: every
writer that changes a task's slots (lease, submit, skip) holds that task's row lock, so the
recount sees all of them and a task is never leased beyond `required`.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import BindParameter, ColumnElement, and_, bindparam, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.conversation import Message
from app.db import atomic, is_postgres, utcnow
from app.models import (
    SUBMISSION_MODELS,
    Completion,
    Lease,
    Project,
    ProjectMember,
    Prompt,
    Skip,
    Task,
    TaskCompletion,
    TaskKind,
    TaskStatus,
    table,
)
from app.services import Forbidden, NotFound

# Candidates tried per call when a race makes the first one full; each try is one short query.
_MAX_TRIES = 20


@dataclass
class Output:
    id: int
    text: str
    cut_off: bool = False
    """Sampling stopped at the token limit before the model ended its answer (labelers see a mark)."""


def cut_off(generation: dict | None) -> bool:
    """A sampled output that did not end by itself; imported or written outputs never are."""
    return (generation or {}).get("ended_with_eos") is False


@dataclass
class Assignment:
    """A leased task as the labeler sees it: outputs already in this labeler's display order."""

    task_id: int
    project_id: int
    kind: TaskKind
    prompt_id: int
    prompt_text: str
    """The conversation as plain text (Prompt.text)."""
    messages: list[Message]
    """The conversation the labeler answers, ranks or compares the next assistant turn of."""
    lease_id: int
    leased_at: datetime
    expires_at: datetime
    outputs: list[Output]


def live_leases(task_id, now):
    """Scalar subquery: leases of a task that still hold a slot."""
    return (
        select(func.count())
        .select_from(Lease)
        .where(Lease.task_id == task_id, Lease.expires_at > now)
        .scalar_subquery()
    )


def available_filter(user_id, kind: TaskKind, now):
    """WHERE clause: tasks of this kind that this labeler may be handed now (values or bindparams)."""
    done = SUBMISSION_MODELS[kind]
    return and_(
        Task.kind == kind,
        Task.status == TaskStatus.open,
        ~exists().where(done.task_id == Task.id, done.user_id == user_id),
        ~exists().where(Skip.task_id == Task.id, Skip.user_id == user_id),
        ~exists().where(Lease.task_id == Task.id, Lease.user_id == user_id, Lease.expires_at > now),
        Task.done_count + live_leases(Task.id, now) < Task.required,
    )


# The statements on the hot path are built once (with bind parameters): building SQLAlchemy
# expressions costs more CPU than running these short queries.
_uid: BindParameter[int] = bindparam("user_id")
_now: BindParameter[datetime] = bindparam("now")
_pid: BindParameter[int] = bindparam("project_id")
_tid: BindParameter[int] = bindparam("task_id")
_prio: BindParameter[int] = bindparam("priority")
_HELD = {
    kind: select(Lease.task_id)
    .join(Task, Task.id == Lease.task_id)
    .where(
        Lease.user_id == _uid,
        Lease.expires_at > _now,
        Task.project_id == _pid,
        Task.kind == kind,
        Task.status == TaskStatus.open,
    )
    .order_by(Lease.id)
    .limit(1)
    for kind in TaskKind
}
_TOP_PRIORITY = {
    kind: select(func.max(Task.priority)).where(
        Task.project_id == _pid, Task.kind == kind, Task.status == TaskStatus.open
    )
    for kind in TaskKind
}


# One round trip for both: the labeler's live lease on this queue, and the queue's top priority.
def may_work_on(user_id) -> ColumnElement[bool]:
    """The project (of the enclosing query) is open to this labeler: not paused, and either open to
    every labeler or the labeler is one of its members."""
    member = exists().where(ProjectMember.project_id == Project.id, ProjectMember.user_id == user_id)
    return Project.paused_at.is_(None) & (Project.members_only.is_(False) | member)


_HELD_AND_TOP = {
    kind: select(
        Project.archived_at,
        Project.paused_at,
        may_work_on(_uid).label("open_to_me"),
        Project.lease_seconds,
        _HELD[kind].scalar_subquery().label("held"),
        _TOP_PRIORITY[kind].scalar_subquery().label("top"),
    ).where(Project.id == _pid)
    for kind in TaskKind
}
_CANDIDATE = {
    kind: select(Task.id, Task.done_count, Task.required, Task.prompt_id, Prompt.text, Prompt.messages)
    .join(Prompt, Prompt.id == Task.prompt_id)
    .where(Task.project_id == _pid, Task.priority == _prio, available_filter(_uid, kind, _now))
    .order_by(Task.id)
    .limit(1)
    for kind in TaskKind
}
TASK_OUTPUT_IDS = (
    select(TaskCompletion.completion_id).where(TaskCompletion.task_id == _tid).order_by(TaskCompletion.position)
)
_LOCK_TASK = select(Task.id).where(Task.id == _tid).with_for_update()
_OUTPUTS = (
    select(Completion.id, Completion.text, Completion.generation)
    .join(TaskCompletion, TaskCompletion.completion_id == Completion.id)
    .where(TaskCompletion.task_id == _tid)
    .order_by(TaskCompletion.position)
)


def next_task(
    session: Session,
    user_id: int,
    project: Project,
    kind: TaskKind,
    *,
    default_lease_seconds: int,
    now: datetime | None = None,
) -> Assignment | None:
    """The labeler's live lease on this queue if it has one, else a newly leased task, else None."""
    return next_task_in_project(
        session, user_id, project.id, kind, default_lease_seconds=default_lease_seconds, now=now
    )


@atomic
def next_task_in_project(
    session: Session,
    user_id: int,
    project_id: int,
    kind: TaskKind,
    *,
    default_lease_seconds: int,
    now: datetime | None = None,
) -> Assignment | None:
    """next_task by project id; NotFound when there is no such active project. The project is read
    in the same query as the labeler's live lease (the API's hot path: one round trip less)."""
    now = now or utcnow()
    row = session.execute(_HELD_AND_TOP[kind], {"user_id": user_id, "now": now, "project_id": project_id}).first()
    if row is None or row.archived_at is not None:
        raise NotFound(f"There is no active project {project_id}.")
    if row.paused_at is not None:
        raise Forbidden(f"Project {project_id} is paused by an admin: no task is handed out until it is resumed.")
    if not row.open_to_me:
        raise Forbidden(f"Project {project_id} is open to its members only; it has no task for you.")
    if row.held is not None:
        return assignment(session, row.held, user_id)
    expires_at = now + timedelta(seconds=row.lease_seconds or default_lease_seconds)
    got = _lease_available_task(session, user_id, project_id, kind, now, expires_at, row.top)
    if got is None:
        return None
    task, lease, outputs = got
    if lease.display_order and lease.display_order != [o.id for o in outputs]:  # an earlier lease's order
        by_id = {o.id: o for o in outputs}
        outputs = [by_id[cid] for cid in lease.display_order]
    return Assignment(
        task_id=task.id,
        project_id=project_id,
        kind=kind,
        prompt_id=task.prompt_id,
        prompt_text=task.text,
        messages=task.messages,
        lease_id=lease.id,
        leased_at=lease.created_at,
        expires_at=lease.expires_at,
        outputs=outputs,
    )


def _lease_available_task(
    session: Session,
    user_id: int,
    project_id: int,
    kind: TaskKind,
    now: datetime,
    expires_at: datetime,
    priority: int | None,
):
    """Locks and leases the next available task: (task row, lease row, outputs shuffled), or None."""
    # Walk the priorities from the top: within one priority the (project, kind, status, priority, id)
    # index gives the oldest first without sorting the whole queue. The max is taken over all open
    # tasks (an index lookup), not only the available ones (that would be a scan).
    postgres = is_postgres(session)
    params = {"user_id": user_id, "now": now, "project_id": project_id}
    tried: list[int] = []
    waits = 0
    while priority is not None and len(tried) + waits < _MAX_TRIES:
        stmt = _CANDIDATE[kind]
        if tried:
            stmt = stmt.where(Task.id.not_in(tried))
        if postgres:
            # Pass over rows other labelers are locking right now.
            row = session.execute(
                stmt.with_for_update(skip_locked=True, of=Task), {**params, "priority": priority}
            ).first()
            if row is None and not tried and _wait_for_first_candidate(session, stmt, {**params, "priority": priority}):
                waits += 1
                continue
        else:
            row = session.execute(stmt, {**params, "priority": priority}).first()
        if row is None:
            priority = session.scalar(_TOP_PRIORITY[kind].where(Task.priority < priority), params)
            continue
        outputs: list[Output] = []
        if kind != TaskKind.demonstration:
            outputs = [
                Output(cid, text, cut_off(generation))
                for cid, text, generation in session.execute(_OUTPUTS, {"task_id": row.id})
            ]
            random.shuffle(outputs)
        lease = session.execute(
            _LEASE[session.get_bind().dialect.name],
            {
                "task_id": row.id,
                "user_id": user_id,
                "now": now,
                "leased_at": now,
                "expires_at": expires_at,
                "display_order": [o.id for o in outputs],
            },
        ).first()
        if lease is not None:
            return row, lease, outputs
        tried.append(row.id)  # Postgres: filled up after the candidate query took its snapshot
    return None


def _wait_for_first_candidate(session: Session, stmt, params: dict) -> bool:
    """Waits until the first candidate, locked by another labeler, is free; False if there is none.

    Every candidate was locked (labelers leasing or submitting right now, short transactions):
    waiting for one, then looking again, makes "nothing for you" mean that. The wait holds no
    other row lock, and its own lock is given back (savepoint) before looking again: a waiting
    FOR UPDATE scan keeps the locks of rows it passes over, and two such scans deadlocked."""
    first = session.execute(stmt, params).first()  # no lock: the plain read waits for nobody
    if first is None:
        return False
    savepoint = session.begin_nested()
    session.execute(_LOCK_TASK, {"task_id": first.id})
    savepoint.rollback()
    return True


def _lease_statement(insert):
    """Leases a task to a labeler if it still has a free slot, in one (Core) statement: (id, created_at,
    expires_at, display_order) of the lease, or no row when the task is full.

    On Postgres this runs after the task's row lock is ours, and as a new statement it sees what
    the transactions we waited for committed, so its slot count is exact. (On SQLite the writer
    lock makes the candidate query exact already; the check costs nothing there.) A labeler
    whose earlier lease on this task expired gets the same row back, with the same display order
    (they may have seen the outputs already)."""
    c = table(Lease).c
    values = select(
        Task.id,
        bindparam("user_id", type_=c.user_id.type),
        bindparam("leased_at", type_=c.created_at.type),
        bindparam("expires_at", type_=c.expires_at.type),
        bindparam("display_order", type_=c.display_order.type),
    )
    values = values.where(Task.id == _tid, Task.done_count + live_leases(Task.id, _now) < Task.required)
    stmt = insert(table(Lease)).from_select([c.task_id, c.user_id, c.created_at, c.expires_at, c.display_order], values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[Lease.task_id, Lease.user_id],
        set_={"created_at": stmt.excluded.created_at, "expires_at": stmt.excluded.expires_at},
    )
    return stmt.returning(c.id, c.created_at, c.expires_at, c.display_order)


_LEASE = {"postgresql": _lease_statement(postgresql.insert), "sqlite": _lease_statement(sqlite.insert)}


_ASSIGNMENT = (
    select(
        Task.id,
        Task.project_id,
        Task.kind,
        Task.prompt_id,
        Prompt.text,
        Prompt.messages,
        Lease.id.label("lease_id"),
        Lease.created_at,
        Lease.expires_at,
        Lease.display_order,
    )
    .join(Prompt, Prompt.id == Task.prompt_id)
    .join(Lease, and_(Lease.task_id == Task.id, Lease.user_id == _uid))
    .where(Task.id == _tid)
)


def assignment(session: Session, task_id: int, user_id: int) -> Assignment | None:
    """The task as this labeler sees it (their lease, outputs in their order); None without a lease."""
    row = session.execute(_ASSIGNMENT, {"task_id": task_id, "user_id": user_id}).first()
    if row is None:
        return None
    outputs: list[Output] = []
    if row.display_order:
        found = {
            cid: Output(cid, text, cut_off(generation))
            for cid, text, generation in session.execute(
                select(Completion.id, Completion.text, Completion.generation).where(
                    Completion.id.in_(row.display_order)
                )
            )
        }
        outputs = [found[cid] for cid in row.display_order]
    return Assignment(
        task_id=row.id,
        project_id=row.project_id,
        kind=TaskKind(row.kind),
        prompt_id=row.prompt_id,
        prompt_text=row.text,
        messages=row.messages,
        lease_id=row.lease_id,
        leased_at=row.created_at,
        expires_at=row.expires_at,
        outputs=outputs,
    )


def held_task(session: Session, task_id: int, user_id: int) -> Assignment:
    """The task as `assignment` gives it; NotFound saying why when this labeler holds no lease on it."""
    got = assignment(session, task_id, user_id)
    if got is None:
        if session.get(Task, task_id) is None:
            raise NotFound(f"There is no task {task_id}. Go back to your work list to get the next one.")
        raise NotFound(
            "This task is not assigned to you (it may have been submitted or skipped). "
            "Go back to your work list to get the next one."
        )
    return got


@dataclass(frozen=True)
class WorkItem:
    project_id: int
    project: str
    kind: TaskKind
    available: int


def work_list(session: Session, user_id: int) -> list[WorkItem]:
    """What this labeler can work on now: tasks available per project and kind, by project name."""
    counts = available_counts(session, user_id)
    names = dict(session.execute(select(Project.id, Project.name).where(Project.id.in_({p for p, _ in counts}))).all())
    return [
        WorkItem(pid, names[pid], kind, n)
        for (pid, kind), n in sorted(counts.items(), key=lambda kv: (names[kv[0][0]].lower(), kv[0][1].value))
    ]


def paused_projects(session: Session, user_id: int) -> list[Project]:
    """Projects an admin paused that this labeler would otherwise work on (not archived, open to
    them, open tasks left): the home page says they are paused rather than that there is no task."""
    member = exists().where(ProjectMember.project_id == Project.id, ProjectMember.user_id == user_id)
    open_task = exists().where(Task.project_id == Project.id, Task.status == TaskStatus.open)
    return list(
        session.scalars(
            select(Project)
            .where(
                Project.archived_at.is_(None),
                Project.paused_at.is_not(None),
                Project.members_only.is_(False) | member,
                open_task,
            )
            .order_by(Project.name)
        )
    )


def available_counts(session: Session, user_id: int, now: datetime | None = None) -> dict[tuple[int, TaskKind], int]:
    """Tasks this labeler could be handed now (or already holds), per (project id, kind), live projects only."""
    now = now or utcnow()
    counts: dict[tuple[int, TaskKind], int] = {}
    for kind in TaskKind:
        held = exists().where(Lease.task_id == Task.id, Lease.user_id == user_id, Lease.expires_at > now)
        rows = session.execute(
            select(Task.project_id, func.count())
            .join(Project, Project.id == Task.project_id)
            .where(
                Project.archived_at.is_(None),
                may_work_on(user_id),
                Task.kind == kind,
                Task.status == TaskStatus.open,
                available_filter(user_id, kind, now) | held,
            )
            .group_by(Task.project_id)
        ).all()
        for project_id, n in rows:
            counts[(project_id, kind)] = n
    return counts
