"""Submissions (demonstration, ranking, comparison), skips with flags, drafts, and a labeler's history.

Rules (see app.services.queue for how slots are handed out):
- A labeler submits only a task they hold a lease on; someone else's task is refused (403) and
  nothing is stored.
- One submission per (task, labeler). A retry with the same Idempotency-Key and the same answer
  returns the stored submission; any other second submission is refused with 409 and the stored
  answer is kept unchanged.
- A late submission (lease expired) is accepted while the task still has a free slot (stored +
  live leases of others below `required`), otherwise refused with 409.
- Storing a submission, raising Task.done_count (closing the task when it has `required`) and
  removing the lease and draft happen in one transaction, under the task's row lock.
"""

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    BindParameter,
    String,
    and_,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal_column,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.orm import Session, aliased

from app.db import atomic, is_postgres, utcnow
from app.models import (
    OUTPUT_FLAGS,
    SUBMISSION_MODELS,
    ComparisonChoice,
    Draft,
    GuidelineVersion,
    Lease,
    Project,
    Prompt,
    ReviewStatus,
    Skip,
    SkipReason,
    SubmissionRevision,
    Task,
    TaskKind,
    TaskStatus,
    User,
    count_output_flags,
    table,
)
from app.services import Conflict, Forbidden, NotFound, ServiceError, projects
from app.services.queue import TASK_OUTPUT_IDS
from app.validation import check_values, text_problem

MAX_TIME_SPENT_MS = 24 * 3600 * 1000
MAX_REASON_CHARS = 2000
MAX_KEY_CHARS = 100
LIKERT_MIN, LIKERT_MAX = 1, 7


class LeaseLost(Conflict):
    """The lease expired and the task no longer needs this labeler's answer."""


@dataclass
class Receipt:
    """What a submit call stored (or found, on an idempotent retry: replayed=True)."""

    id: int
    task_id: int
    kind: TaskKind
    created_at: datetime
    time_spent_ms: int
    guideline_version_id: int | None
    replayed: bool = False


@dataclass
class Slot:
    task: Any  # the locked task row with this labeler's lease columns (see _LOCK_TASK)
    now: datetime
    user_id: int


# Hot-path statements are built once with bind parameters (building them costs more than running them).
_tid: BindParameter[int] = bindparam("task_id")
_uid: BindParameter[int] = bindparam("user_id")
_now: BindParameter[datetime] = bindparam("now")
_latest_guideline = (
    select(GuidelineVersion.id)
    .where(GuidelineVersion.project_id == Task.project_id)
    .order_by(GuidelineVersion.version.desc())
    .limit(1)
    .scalar_subquery()
)
_other = aliased(Lease)  # not the outer query's (outer-joined) lease
_others_live = (
    select(func.count())
    .select_from(_other)
    .where(_other.task_id == Task.id, _other.user_id != _uid, _other.expires_at > _now)
    .scalar_subquery()
)
_has_draft = exists().where(Draft.task_id == Task.id, Draft.user_id == _uid)
# FOR UPDATE OF tasks: serializes with the queue and other submitters of this task (SQLite renders
# no FOR UPDATE; there the caller's transaction already holds the writer lock).
_LOCK_TASK = (
    select(
        Task.id,
        Task.kind,
        Task.status,
        Task.required,
        Task.done_count,
        Task.project_id,
        Task.prompt_id,
        Project.max_demonstration_chars,
        _latest_guideline.label("guideline_id"),
    )
    .join(Project, Project.id == Task.project_id)
    .where(Task.id == _tid)
    .with_for_update(of=Task)
)
# Read in a statement of its own, after the lock is held: on Postgres a new statement sees what
# the transactions we waited for committed (their submissions and removed leases).
_SLOT = (
    select(
        Lease.id.label("lease_id"),
        Lease.created_at.label("leased_at"),
        Lease.expires_at,
        Lease.display_order,
        _others_live.label("others_live"),
        _has_draft.label("has_draft"),
    )
    .select_from(Task)
    .outerjoin(Lease, and_(Lease.task_id == Task.id, Lease.user_id == _uid))
    .where(Task.id == _tid)
)
_EXISTING = {
    kind: select(model).where(model.task_id == _tid, model.user_id == _uid) for kind, model in SUBMISSION_MODELS.items()
}
_HAS_SUBMITTED = {
    kind: exists().where(model.task_id == Task.id, model.user_id == _uid) for kind, model in SUBMISSION_MODELS.items()
}


def _close_slot(task_id):
    """Takes one slot of the task, closing it when it has all its answers."""
    return (
        update(Task)
        .where(Task.id == task_id)
        .values(
            done_count=Task.done_count + 1,
            status=case((Task.done_count + 1 >= Task.required, TaskStatus.closed.value), else_=Task.status),
        )
    )


_CLOSE_SLOT = _close_slot(_tid)
_DROP_LEASE = delete(Lease).where(Lease.task_id == _tid, Lease.user_id == _uid)
_DROP_DRAFT = delete(Draft).where(Draft.task_id == _tid, Draft.user_id == _uid)
_INSERT = {kind: insert(model).returning(model.id) for kind, model in SUBMISSION_MODELS.items()}


# Postgres: the slot update and the lease removal ride along with the insert (one round trip
# instead of three; SQLite has no data-modifying WITH). Every bind has its own name (slot_*, v_*):
# SQLAlchemy would apply execute() parameters named like columns to the UPDATE inside the WITH too.
_slot_tid: BindParameter[int] = bindparam("slot_task_id")
_slot_uid: BindParameter[int] = bindparam("slot_user_id")
_CLOSE_SLOT_CTE = _close_slot(_slot_tid).cte("closed_slot")
_DROP_LEASE_CTE = delete(Lease).where(Lease.task_id == _slot_tid, Lease.user_id == _slot_uid).cte("dropped_lease")


@functools.cache
def _insert_and_close(kind: TaskKind, columns: tuple[str, ...]):
    """Built once per kind and set of columns; the values are bound as v_<column>."""
    submissions = table(SUBMISSION_MODELS[kind])
    values = {name: bindparam(f"v_{name}", type_=submissions.c[name].type) for name in columns}
    return insert(submissions).values(values).add_cte(_CLOSE_SLOT_CTE, _DROP_LEASE_CTE).returning(submissions.c.id)


def _check_key(key: str | None) -> str | None:
    if key is not None and not 1 <= len(key) <= MAX_KEY_CHARS:
        raise ServiceError(f"The Idempotency-Key must have 1 to {MAX_KEY_CHARS} characters.")
    return key


def _locked_task(session: Session, user: User, task_id: int, kind: TaskKind):
    task = session.execute(_LOCK_TASK, {"task_id": task_id}).first()
    if task is None:
        raise NotFound(f"There is no task {task_id}.")
    slot = session.execute(
        _SLOT.add_columns(_HAS_SUBMITTED[TaskKind(task.kind)].label("submitted")),
        {"task_id": task_id, "user_id": user.id, "now": utcnow()},
    ).one()
    # Ownership first: someone else's task reveals nothing about itself (not even its kind).
    if slot.lease_id is None and not slot.submitted:
        raise Forbidden(f"Task {task_id} is not assigned to you. Ask for the next task to get one.")
    if task.kind != kind:
        raise ServiceError(f"Task {task_id} is a {TaskKind(task.kind).value} task, not a {kind.value} task.")
    return SimpleNamespace(**task._asdict(), **slot._asdict())  # one plain record of both


def _existing(session: Session, task, user: User):
    if not task.submitted:
        return None
    return session.scalar(_EXISTING[TaskKind(task.kind)], {"task_id": task.id, "user_id": user.id})


def _receipt(row, kind: TaskKind, replayed: bool) -> Receipt:
    return Receipt(
        id=row.id,
        task_id=row.task_id,
        kind=kind,
        created_at=row.created_at,
        time_spent_ms=row.time_spent_ms,
        guideline_version_id=row.guideline_version_id,
        replayed=replayed,
    )


def _replay_or_conflict(existing, kind: TaskKind, key: str | None, same_answer: bool) -> Receipt:
    if key is not None and existing.idempotency_key == key:
        if same_answer:
            return _receipt(existing, kind, replayed=True)
        raise Conflict("This Idempotency-Key was already used with a different answer; the stored answer is kept.")
    raise Conflict(f"You already submitted task {existing.task_id}; your stored answer is kept unchanged.")


def _claim_slot(session: Session, user: User, task) -> Slot:
    """Checks that this labeler may store a submission for the locked task now."""
    now = utcnow()
    if task.lease_id is None:
        raise Forbidden(f"Task {task.id} is not assigned to you. Ask for the next task to get one.")
    if task.status != TaskStatus.open:
        raise LeaseLost(
            f"Task {task.id} is {TaskStatus(task.status).value} and takes no more answers; nothing was stored."
        )
    if task.done_count + task.others_live >= task.required:
        if task.expires_at <= now:
            raise LeaseLost(
                f"Your reservation of task {task.id} expired and other labelers have taken its "
                "remaining places; your answer was not stored."
            )
        # Cannot happen while the queue's invariant holds; refuse rather than over-fill the task.
        raise LeaseLost(f"Task {task.id} has all the answers it needs; nothing was stored.")
    return Slot(task, now, user.id)


def _time_spent(slot: Slot, reported_ms: int | None) -> int:
    """The time the client measured (active time on the page) when given, else time since the lease."""
    if reported_ms is None:
        return min(MAX_TIME_SPENT_MS, int((slot.now - slot.task.leased_at).total_seconds() * 1000))
    if not 0 <= reported_ms <= MAX_TIME_SPENT_MS:
        raise ServiceError(f"time_spent_ms must be between 0 and {MAX_TIME_SPENT_MS}.")
    return reported_ms


def _store(
    session: Session, slot: Slot, kind: TaskKind, time_spent_ms: int | None, key: str | None, **answer
) -> Receipt:
    """Inserts the submission, takes the task's slot (closing it when full), drops lease and draft."""
    task = slot.task
    values = dict(
        task_id=task.id,
        user_id=slot.user_id,
        guideline_version_id=task.guideline_id,
        created_at=slot.now,
        time_spent_ms=_time_spent(slot, time_spent_ms),
        idempotency_key=key,
        **answer,
    )
    check_values(table(SUBMISSION_MODELS[kind]), values)
    params = {"task_id": task.id, "user_id": slot.user_id}
    if is_postgres(session):
        new_id = session.scalar(
            _insert_and_close(kind, tuple(values)),
            {
                "slot_task_id": task.id,
                "slot_user_id": slot.user_id,
                **{f"v_{name}": value for name, value in values.items()},
            },
        )
    else:
        new_id = session.scalar(_INSERT[kind], values)
        session.execute(_CLOSE_SLOT, {"task_id": task.id})
        session.execute(_DROP_LEASE, params)
    if task.has_draft:
        session.execute(_DROP_DRAFT, params)
    return Receipt(
        id=new_id,
        task_id=task.id,
        kind=kind,
        created_at=slot.now,
        time_spent_ms=values["time_spent_ms"],
        guideline_version_id=task.guideline_id,
    )


# -- demonstrations ---------------------------------------------------------------------------


def clean_demonstration(text: str, limit: int) -> str:
    text = (text or "").replace("\r\n", "\n").strip()
    if not text:
        raise ServiceError("The demonstration is empty. Write the answer you would want the assistant to give.")
    if len(text) > limit:
        raise ServiceError(f"The demonstration has {len(text)} characters; the limit is {limit}.")
    if problem := text_problem(text):
        raise ServiceError(f"The demonstration {problem}; remove it and save again.", status_code=422)
    return text


@atomic
def submit_demonstration(
    session: Session,
    user: User,
    task_id: int,
    text: str,
    *,
    time_spent_ms: int | None = None,
    idempotency_key: str | None = None,
) -> Receipt:
    kind = TaskKind.demonstration
    key = _check_key(idempotency_key)
    task = _locked_task(session, user, task_id, kind)
    text = clean_demonstration(text, task.max_demonstration_chars)
    existing = _existing(session, task, user)
    if existing is not None:
        return _replay_or_conflict(existing, kind, key, existing.text == text)
    slot = _claim_slot(session, user, task)
    return _store(session, slot, kind, time_spent_ms, key, prompt_id=task.prompt_id, text=text)


def own_submission(session: Session, user: User, kind: str, submission_id: int):
    """The labeler's own submission, whole (review.Item); NotFound for anyone else's."""
    from app.services import review

    model = SUBMISSION_MODELS.get(TaskKind(kind)) if kind in TaskKind.__members__ else None
    sub: Any = session.get(model, submission_id) if model is not None else None
    if sub is None or sub.user_id != user.id:
        raise NotFound(f"You have no {kind} {submission_id}.")
    return review.items(session, TaskKind(kind), [sub])[0]


def _revisable(session: Session, user: User, kind: TaskKind, submission_id: int) -> tuple[Any, Task]:
    """The labeler's own submission, locked, while it is not accepted and its task is not retired:
    pending (not reviewed yet) or rejected (to fix and resubmit)."""
    sub: Any = session.get(SUBMISSION_MODELS[kind], submission_id, with_for_update=True)
    if sub is None or sub.user_id != user.id:
        raise NotFound(f"You have no {kind.value} {submission_id}.")
    if sub.review == ReviewStatus.accepted:
        raise Conflict(f"An admin has accepted this {kind.value}; it can no longer be revised.")
    task = session.get_one(Task, sub.task_id)
    projects.check_writable(task.project)  # (a held task can still be submitted; a revision can't)
    if task.status == TaskStatus.retired:
        raise Conflict(f"This task was retired; its {kind.value} can no longer be revised.")
    return sub, task


def _keep_earlier(session: Session, kind: TaskKind, sub: Any, answer: dict[str, Any]) -> None:
    """Keeps the answer being replaced (SubmissionRevision) and counts the new revision. A rejected
    answer fixed this way goes back to review; its rejection stays with the answer it was about."""
    if sub.review == ReviewStatus.rejected:
        answer = {**answer, "rejected_because": sub.review_reason}
        sub.review, sub.review_reason, sub.reviewed_by_id, sub.reviewed_at = ReviewStatus.pending, "", None, None
    earlier = session.scalar(
        select(func.max(SubmissionRevision.replaced_at)).where(
            SubmissionRevision.kind == kind, SubmissionRevision.submission_id == sub.id
        )
    )
    session.add(
        SubmissionRevision(
            kind=kind, submission_id=sub.id, revision=sub.revision, answer=answer, written_at=earlier or sub.created_at
        )
    )
    sub.revision += 1


def _refuse_unchanged_rejection(sub: Any) -> None:
    if sub.review == ReviewStatus.rejected:
        raise ServiceError("This answer was rejected as it is: change it before sending it back for review.")


# A labeler revises their own submission while no admin has accepted it and its task is not
# retired (a rejected one is fixed and goes back to review); the earlier answer is kept and
# `revision` goes up by one. A run uses the answer current
# when it takes its snapshot, and records the revision.


@atomic
def revise_demonstration(session: Session, user: User, demonstration_id: int, text: str) -> Any:
    demo, task = _revisable(session, user, TaskKind.demonstration, demonstration_id)
    text = clean_demonstration(text, task.project.max_demonstration_chars)
    if text != demo.text:
        _keep_earlier(session, TaskKind.demonstration, demo, {"text": demo.text})
        demo.text = text
    else:
        _refuse_unchanged_rejection(demo)
    session.flush()
    return demo


@atomic
def revise_ranking(
    session: Session, user: User, ranking_id: int, order: Any, ratings: Any, *, none_acceptable: bool = False
) -> Any:
    ranking, task = _revisable(session, user, TaskKind.ranking, ranking_id)
    clean_order, clean_ratings = clean_ranking(_task_output_ids(session, task), order, ratings)
    new = {"order": clean_order, "ratings": clean_ratings, "none_acceptable": bool(none_acceptable)}
    old = {"order": ranking.order, "ratings": ranking.ratings, "none_acceptable": ranking.none_acceptable}
    if new != old:
        _keep_earlier(session, TaskKind.ranking, ranking, old)
        ranking.order, ranking.ratings, ranking.none_acceptable = clean_order, clean_ratings, bool(none_acceptable)
        ranking.flag_count = count_output_flags(clean_ratings)
    else:
        _refuse_unchanged_rejection(ranking)
    session.flush()
    return ranking


@atomic
def revise_comparison(session: Session, user: User, comparison_id: int, choice: str, reason: str = "") -> Any:
    comparison, _ = _revisable(session, user, TaskKind.comparison, comparison_id)
    clean_choice, reason = clean_comparison(choice, reason)
    if (clean_choice, reason) != (comparison.choice, comparison.reason):
        _keep_earlier(
            session, TaskKind.comparison, comparison, {"choice": comparison.choice.value, "reason": comparison.reason}
        )
        comparison.choice, comparison.reason = clean_choice, reason
    else:
        _refuse_unchanged_rejection(comparison)
    session.flush()
    return comparison


# -- rankings ---------------------------------------------------------------------------------


def _task_output_ids(session: Session, task) -> list[int]:
    return list(session.scalars(TASK_OUTPUT_IDS, {"task_id": task.id}))


def clean_ranking(output_ids: list[int], order: Any, ratings: Any) -> tuple[list[list[int]], dict[str, Any]]:
    """Validates an order with ties (best first, groups of ids) and per-output ratings.

    Returns the order as lists of ints and ratings keyed by str(id) (JSON keys), flags sorted."""
    known = set(output_ids)
    if not isinstance(order, list) or not order:
        raise ServiceError("The order must be a list of groups of output ids, best first, e.g. [[3], [1, 4], [2]].")
    seen: set[int] = set()
    clean_order: list[list[int]] = []
    for group in order:
        if not isinstance(group, list) or not group:
            raise ServiceError("Each place in the order must be a non-empty list of output ids (ties share a place).")
        clean_group = []
        for cid in group:
            if isinstance(cid, bool) or not isinstance(cid, int):
                raise ServiceError(f"{cid!r} is not an output id.")
            if cid not in known:
                raise ServiceError(f"Output {cid} is not one of this task's outputs.")
            if cid in seen:
                raise ServiceError(f"Output {cid} is placed more than once.")
            seen.add(cid)
            clean_group.append(cid)
        clean_order.append(clean_group)
    missing = [cid for cid in output_ids if cid not in seen]
    if missing:
        raise ServiceError(
            f"Place every output: {', '.join(map(str, missing))} {'is' if len(missing) == 1 else 'are'} "
            "not in the order."
        )

    if not isinstance(ratings, dict):
        raise ServiceError('Ratings must map each output id to {"likert": 1-7, "flags": [...]}.')
    clean_ratings: dict[str, Any] = {}
    for raw_id, rating in ratings.items():
        try:
            cid = int(raw_id)
        except (TypeError, ValueError):
            raise ServiceError(f"{raw_id!r} is not an output id.") from None
        if cid not in known:
            raise ServiceError(f"Output {cid} is not one of this task's outputs.")
        if not isinstance(rating, dict):
            raise ServiceError(f'The rating of output {cid} must be {{"likert": 1-7, "flags": [...]}}.')
        likert = rating.get("likert")
        if isinstance(likert, bool) or not isinstance(likert, int) or not LIKERT_MIN <= likert <= LIKERT_MAX:
            raise ServiceError(
                f"The Likert rating of output {cid} must be a whole number from {LIKERT_MIN} to "
                f"{LIKERT_MAX}, not {likert!r}."
            )
        flags = rating.get("flags", [])
        if not isinstance(flags, list):
            raise ServiceError(f"The flags of output {cid} must be a list.")
        unknown = [f for f in flags if f not in OUTPUT_FLAGS]
        if unknown:
            raise ServiceError(
                f"Unknown flag(s) on output {cid}: {', '.join(map(str, unknown))}. "
                f"Known flags: {', '.join(OUTPUT_FLAGS)}."
            )
        clean_ratings[str(cid)] = {"likert": likert, "flags": sorted(set(flags))}
    unrated = [cid for cid in output_ids if str(cid) not in clean_ratings]
    if unrated:
        raise ServiceError(
            f"Rate every output on the 1-7 scale: {', '.join(map(str, unrated))} "
            f"{'has' if len(unrated) == 1 else 'have'} no rating."
        )
    return clean_order, clean_ratings


@atomic
def submit_ranking(
    session: Session,
    user: User,
    task_id: int,
    order: Any,
    ratings: Any,
    *,
    none_acceptable: bool = False,
    time_spent_ms: int | None = None,
    idempotency_key: str | None = None,
) -> Receipt:
    kind = TaskKind.ranking
    key = _check_key(idempotency_key)
    task = _locked_task(session, user, task_id, kind)
    clean_order, clean_ratings = clean_ranking(_task_output_ids(session, task), order, ratings)
    existing = _existing(session, task, user)
    if existing is not None:
        same = (
            existing.order == clean_order
            and existing.ratings == clean_ratings
            and existing.none_acceptable == bool(none_acceptable)
        )
        return _replay_or_conflict(existing, kind, key, same)
    slot = _claim_slot(session, user, task)
    return _store(
        session,
        slot,
        kind,
        time_spent_ms,
        key,
        order=clean_order,
        ratings=clean_ratings,
        flag_count=count_output_flags(clean_ratings),
        none_acceptable=bool(none_acceptable),
        display_order=list(slot.task.display_order or []),
    )


# -- comparisons ------------------------------------------------------------------------------


def clean_comparison(choice: str, reason: str) -> tuple[ComparisonChoice, str]:
    try:
        clean = ComparisonChoice(choice)
    except ValueError:
        raise ServiceError(f"Choose 'a', 'b' or 'tie', not {choice!r}.") from None
    reason = (reason or "").strip()
    if len(reason) > MAX_REASON_CHARS:
        raise ServiceError(f"The reason has {len(reason)} characters; the limit is {MAX_REASON_CHARS}.")
    return clean, reason


@atomic
def submit_comparison(
    session: Session,
    user: User,
    task_id: int,
    choice: str,
    reason: str = "",
    *,
    time_spent_ms: int | None = None,
    idempotency_key: str | None = None,
) -> Receipt:
    kind = TaskKind.comparison
    key = _check_key(idempotency_key)
    task = _locked_task(session, user, task_id, kind)
    choice, reason = clean_comparison(choice, reason)
    existing = _existing(session, task, user)
    if existing is not None:
        return _replay_or_conflict(existing, kind, key, existing.choice == choice and existing.reason == reason)
    slot = _claim_slot(session, user, task)
    a_id, b_id = slot.task.display_order or _task_output_ids(session, task)
    return _store(
        session,
        slot,
        kind,
        time_spent_ms,
        key,
        a_completion_id=a_id,
        b_completion_id=b_id,
        choice=choice,
        reason=reason,
    )


# -- skips, flags and drafts ------------------------------------------------------------------


@atomic
def skip(session: Session, user: User, task_id: int, reason: str = "skip", note: str = "") -> Skip:
    """Passes on a held task (flagging its prompt when reason is pii / nonsense / harmful); it never
    comes back to this labeler and its slot is freed at once."""
    try:
        reason = SkipReason(reason or "skip")
    except ValueError:
        raise ServiceError(
            f"Unknown skip reason {reason!r}; use one of: {', '.join(r.value for r in SkipReason)}."
        ) from None
    note = (note or "").strip()
    if len(note) > MAX_REASON_CHARS:
        raise ServiceError(f"The note has {len(note)} characters; the limit is {MAX_REASON_CHARS}.")
    task = session.scalar(select(Task).where(Task.id == task_id).with_for_update())
    if task is None:
        raise NotFound(f"There is no task {task_id}.")
    existing = session.scalar(select(Skip).where(Skip.task_id == task_id, Skip.user_id == user.id))
    if existing is not None:
        return existing  # skipping twice changes nothing
    lease = session.scalar(select(Lease).where(Lease.task_id == task_id, Lease.user_id == user.id))
    if lease is None:
        raise Forbidden(f"Task {task_id} is not assigned to you, so you cannot skip it.")
    row = Skip(task_id=task_id, user_id=user.id, reason=reason, note=note)
    session.add(row)
    session.execute(delete(Lease).where(Lease.id == lease.id))
    session.execute(delete(Draft).where(Draft.task_id == task_id, Draft.user_id == user.id))
    session.flush()
    return row


@atomic
def save_draft(session: Session, user: User, task_id: int, text: str) -> Draft:
    """Keeps the demonstration being typed (one row per task and labeler)."""
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"There is no task {task_id}.")
    if session.scalar(select(Lease.id).where(Lease.task_id == task_id, Lease.user_id == user.id)) is None:
        raise Forbidden(f"Task {task_id} is not assigned to you.")
    limit = session.scalar(select(Project.max_demonstration_chars).where(Project.id == task.project_id)) or 0
    text = (text or "").replace("\r\n", "\n")
    if len(text) > limit:
        raise ServiceError(f"The draft has {len(text)} characters; the limit is {limit}.")
    if problem := text_problem(text):
        raise ServiceError(f"The draft {problem}.", status_code=422)
    draft = session.scalar(select(Draft).where(Draft.task_id == task_id, Draft.user_id == user.id))
    if draft is None:
        draft = Draft(task_id=task_id, user_id=user.id)
        session.add(draft)
    draft.text = text
    draft.updated_at = utcnow()
    session.flush()
    return draft


def get_draft(session: Session, user: User, task_id: int) -> str:
    return session.scalar(select(Draft.text).where(Draft.task_id == task_id, Draft.user_id == user.id)) or ""


# -- history and counts -----------------------------------------------------------------------


@dataclass
class HistoryRow:
    kind: TaskKind
    task_id: int
    project_name: str
    prompt_text: str
    created_at: datetime
    time_spent_ms: int
    submission_id: int | None = None
    """None for a skipped task."""
    review: str = ""
    """pending, accepted or rejected (an admin's decision); empty for a skipped task."""
    reason: str = ""
    """The admin's reason (submissions) or the labeler's own note (skips)."""
    skip_reason: SkipReason | None = None
    item: Any = None
    """review.Item: the submission whole, as the labeler made it."""
    prompt_messages: list = field(default_factory=list)
    """The conversation (Prompt.messages), shown as a thread."""


def _history_union(user_id: int):
    """The labeler's submissions of every kind and their skips, as one list of rows."""
    parts: list[Any] = [
        select(
            model.id.label("row_id"),
            model.task_id.label("task_id"),
            model.created_at.label("created_at"),
            model.time_spent_ms.label("time_spent_ms"),
            type_coerce(model.review, String).label("review"),  # (skips put their reason here)
            model.review_reason.label("reason"),
            literal_column(f"'{kind.value}'").label("source"),
        ).where(model.user_id == user_id)
        for kind, model in SUBMISSION_MODELS.items()
    ]
    parts.append(
        select(
            Skip.id.label("row_id"),
            Skip.task_id.label("task_id"),
            Skip.created_at.label("created_at"),
            literal_column("0").label("time_spent_ms"),
            type_coerce(Skip.reason, String).label("review"),
            Skip.note.label("reason"),
            literal_column("'skip'").label("source"),
        ).where(Skip.user_id == user_id)
    )
    return union_all(*parts).subquery()


def history(session: Session, user: User, *, limit: int = 50, offset: int = 0) -> list[HistoryRow]:
    """What the labeler submitted and skipped, newest first, each submission with its review and
    whole (review.Item), each skip with its reason and note."""
    from app.services import review

    sub = _history_union(user.id)
    rows = session.execute(
        select(
            Task.kind,
            Task.id,
            Project.name,
            Prompt.text,
            Prompt.messages,
            sub.c.created_at,
            sub.c.time_spent_ms,
            sub.c.row_id,
            sub.c.review,
            sub.c.reason,
            sub.c.source,
        )
        .join(Task, Task.id == sub.c.task_id)
        .join(Project, Project.id == Task.project_id)
        .join(Prompt, Prompt.id == Task.prompt_id)
        .order_by(sub.c.created_at.desc(), Task.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    out = []
    for kind, task_id, project, prompt, messages, created, spent, row_id, status, reason, source in rows:
        if source == "skip":
            out.append(
                HistoryRow(
                    TaskKind(kind),
                    task_id,
                    project,
                    prompt,
                    created,
                    spent,
                    skip_reason=SkipReason(status),
                    reason=reason,
                    prompt_messages=messages,
                )
            )
        else:
            out.append(
                HistoryRow(
                    TaskKind(kind),
                    task_id,
                    project,
                    prompt,
                    created,
                    spent,
                    row_id,
                    str(status),
                    reason,
                    prompt_messages=messages,
                )
            )
    for kind, model in SUBMISSION_MODELS.items():  # each submission whole, one query per kind
        ids = [r.submission_id for r in out if r.submission_id is not None and r.kind == kind]
        if ids:
            found = {
                i.submission.id: i
                for i in review.items(session, kind, list(session.scalars(select(model).where(model.id.in_(ids)))))
            }
            for r in out:
                if r.kind == kind and r.submission_id in found:
                    r.item = found[r.submission_id]
    return out


def rejected_count(session: Session, user: User) -> int:
    """The labeler's rejected answers still to fix (on tasks not retired): the home page asks for them."""
    return sum(
        session.scalar(
            select(func.count())
            .select_from(model)
            .join(Task, Task.id == model.task_id)
            .where(model.user_id == user.id, model.review == ReviewStatus.rejected, Task.status != TaskStatus.retired)
        )
        or 0
        for model in SUBMISSION_MODELS.values()
    )


def counts_since(session: Session, user: User, since: datetime) -> dict[TaskKind, int]:
    return {
        kind: session.scalar(
            select(func.count()).select_from(model).where(model.user_id == user.id, model.created_at >= since)
        )
        or 0
        for kind, model in SUBMISSION_MODELS.items()
    }


def start_of_today() -> datetime:
    now = utcnow()
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


def flagged_skips(session: Session, project_id: int, *, limit: int = 200) -> list[Skip]:
    """Prompts labelers flagged (PII, nonsense, harmful), newest first: for the admin pages."""
    return list(
        session.scalars(
            select(Skip)
            .join(Task, Task.id == Skip.task_id)
            .where(Task.project_id == project_id, Skip.reason != SkipReason.skip)
            .order_by(Skip.created_at.desc())
            .limit(limit)
        )
    )
