"""Creating, reading, deleting and withdrawing tasks. Tasks are only rows; app.services.queue hands
them out to labelers."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app.models import (
    IMPORTED,
    LABELER,
    SUBMISSION_MODELS,
    Completion,
    Project,
    Prompt,
    Skip,
    SkipReason,
    Task,
    TaskCompletion,
    TaskKind,
    TaskStatus,
    User,
    table,
)
from app.services import Conflict, NotFound, ServiceError, projects
from runconfig import K_MAX, K_MIN

INSERT_CHUNK = 5000
"""Rows per INSERT statement of a bulk write (well under SQLite's and Postgres' parameter limits)."""
_INSERT_TASKS = insert(table(Task))


def _check_prompt(project: Project, prompt: Prompt) -> None:
    if prompt.project_id != project.id:
        raise ServiceError(f"Prompt {prompt.id} belongs to another project, not to {project.name!r}.")


def _check_completions(session: Session, prompt: Prompt, completion_ids: list[int]) -> None:
    if len(set(completion_ids)) != len(completion_ids):
        raise ServiceError("The same output is listed twice for one task.")
    found = dict(
        session.execute(select(Completion.id, Completion.prompt_id).where(Completion.id.in_(completion_ids))).all()
    )
    missing = [cid for cid in completion_ids if cid not in found]
    if missing:
        raise ServiceError(f"Unknown output id(s): {', '.join(map(str, missing))}.")
    foreign = [cid for cid in completion_ids if found[cid] != prompt.id]
    if foreign:
        raise ServiceError(f"Output(s) {', '.join(map(str, foreign))} answer another prompt, not prompt {prompt.id}.")


def insert_demonstration_tasks(db: Session | Connection, project: Project, prompt_ids: Sequence[int]) -> int:
    """One demonstration task per prompt id, wanting `project.overlap` labelers each, written in Core
    statements (no ORM objects): the bulk path of the intake and of import jobs. The caller has
    checked that the prompts are the project's. Returns how many were written."""
    for start in range(0, len(prompt_ids), INSERT_CHUNK):
        db.execute(
            _INSERT_TASKS,
            [
                {"project_id": project.id, "prompt_id": i, "kind": TaskKind.demonstration, "required": project.overlap}
                for i in prompt_ids[start : start + INSERT_CHUNK]
            ],
        )
    return len(prompt_ids)


def create_demonstration_tasks(
    session: Session, project: Project, prompts: list[Prompt], priority: int = 0
) -> list[Task]:
    """One demonstration task per prompt, wanting `project.overlap` labelers each."""
    tasks = []
    for prompt in prompts:
        _check_prompt(project, prompt)
        tasks.append(
            Task(
                project_id=project.id,
                prompt_id=prompt.id,
                kind=TaskKind.demonstration,
                required=project.overlap,
                priority=priority,
            )
        )
    session.add_all(tasks)
    session.flush()
    return tasks


def _task_with_outputs(
    session: Session,
    project: Project,
    prompt: Prompt,
    kind: TaskKind,
    completion_ids: list[int],
    priority: int,
    source_run_id: int | None,
) -> Task:
    _check_prompt(project, prompt)
    _check_completions(session, prompt, completion_ids)
    task = Task(
        project_id=project.id,
        prompt_id=prompt.id,
        kind=kind,
        required=project.overlap,
        priority=priority,
        source_run_id=source_run_id,
    )
    task.outputs = [TaskCompletion(completion_id=cid, position=i) for i, cid in enumerate(completion_ids)]
    session.add(task)
    session.flush()
    return task


def create_ranking_task(
    session: Session,
    project: Project,
    prompt: Prompt,
    completion_ids: list[int],
    *,
    priority: int = 0,
    source_run_id: int | None = None,
) -> Task:
    """A task to rank 2..9 outputs of one prompt (shown to each labeler in a shuffled order)."""
    if not K_MIN <= len(completion_ids) <= K_MAX:
        raise ServiceError(f"A ranking task shows {K_MIN} to {K_MAX} outputs, not {len(completion_ids)}.")
    return _task_with_outputs(session, project, prompt, TaskKind.ranking, list(completion_ids), priority, source_run_id)


def create_comparison_task(
    session: Session,
    project: Project,
    prompt: Prompt,
    a_completion_id: int,
    b_completion_id: int,
    *,
    priority: int = 0,
    source_run_id: int | None = None,
) -> Task:
    """A side-by-side A/B task between two outputs of one prompt (sides randomized per labeler)."""
    if a_completion_id == b_completion_id:
        raise ServiceError("A comparison needs two different outputs.")
    return _task_with_outputs(
        session, project, prompt, TaskKind.comparison, [a_completion_id, b_completion_id], priority, source_run_id
    )


def get_task(session: Session, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"There is no task {task_id}.")
    return task


def task_submissions(session: Session, task: Task) -> list[Any]:
    model = SUBMISSION_MODELS[task.kind]
    return list(
        session.execute(
            select(model, User).join(User, User.id == model.user_id).where(model.task_id == task.id).order_by(model.id)
        ).all()
    )


MAX_SEARCH = 200
"""Characters of a text search (a substring of the prompt, any case)."""


@dataclass
class TaskFilter:
    kind: TaskKind | None = None
    shared_only: bool = False
    """Done by 2+ labelers."""
    source: str = ""
    """labelers (tasks handed out to labelers) or imported (feedback from a file); empty: both."""
    text: str = ""
    """A substring of the prompt, any case; empty: any prompt."""
    run_id: int | None = None
    """Made by this run (generate, evaluate)."""


def _imported(task_id: Any) -> Any:
    """The task holds imported feedback (a submission without a labeler): made by an import, never handed out."""
    return or_(*(exists().where(m.task_id == task_id, m.user_id.is_(None)) for m in SUBMISSION_MODELS.values()))


def search_text(text: str) -> str:
    """A text search as typed, trimmed; too long a search is refused."""
    text = text.strip()
    if len(text) > MAX_SEARCH:
        raise ServiceError(f"The search has {len(text)} characters; the limit is {MAX_SEARCH}.")
    return text


def tasks_page(
    session: Session, project_id: int, f: TaskFilter | None = None, *, offset: int = 0, limit: int = 50
) -> list[Task]:
    f = f or TaskFilter()
    q = select(Task).where(Task.project_id == project_id).order_by(Task.id.desc()).offset(offset).limit(limit)
    if f.kind is not None:
        q = q.where(Task.kind == f.kind)
    if f.shared_only:
        q = q.where(Task.done_count >= 2)
    if f.source:
        q = q.where(_imported(Task.id) if f.source == "imported" else ~_imported(Task.id))
    if f.run_id is not None:
        q = q.where(Task.source_run_id == f.run_id)
    if f.text:
        q = q.join(Prompt, Prompt.id == Task.prompt_id).where(Prompt.text.icontains(f.text, autoescape=True))
    return list(session.scalars(q))


@dataclass
class Source:
    kind: str
    """labeler (handed out to labelers) or imported (feedback from a file)."""
    origin_file: str | None = None
    """Imported: the file."""
    run_id: int | None = None
    """The run that made its outputs (generate, evaluate), if any."""


def sources(session: Session, listed: Sequence[Task]) -> dict[int, Source]:
    """Where each task's answers come from: labelers, or the imported file (one query per submission kind)."""
    ids = [t.id for t in listed]
    files: dict[int, str | None] = {}
    for model in SUBMISSION_MODELS.values():
        rows = session.execute(
            select(model.task_id, model.origin_file).where(model.task_id.in_(ids), model.user_id.is_(None))
        )
        files.update({task_id: origin for task_id, origin in rows})
    return {
        t.id: Source(IMPORTED, files[t.id], t.source_run_id)
        if t.id in files
        else Source(LABELER, None, t.source_run_id)
        for t in listed
    }


def _submitted(session: Session, task_ids) -> int:
    return sum(
        session.scalar(select(func.count()).select_from(m).where(m.task_id.in_(task_ids))) or 0
        for m in SUBMISSION_MODELS.values()
    )


def _delete_tasks(session: Session, task_ids: Any) -> None:
    """Deletes tasks nobody answered, their leases, skips and drafts with them (ON DELETE CASCADE);
    a task with a submission cannot go (RESTRICT): the callers check first."""
    session.execute(delete(Task).where(Task.id.in_(task_ids)).execution_options(synchronize_session=False))


def delete_task(session: Session, task_id: int) -> Task:
    """Deletes a task nobody has answered (its leases, skips and drafts with it); refused once a
    labeler submitted an answer to it (retire it instead)."""
    task = get_task(session, task_id)
    projects.check_writable(task.project)
    if _submitted(session, [task_id]):
        raise Conflict(f"Task {task_id} has answers, and answers are never deleted silently: retire the task instead.")
    _delete_tasks(session, [task_id])
    session.expunge(task)
    return task


# -- withdrawing a run's or a model version's open tasks --------------------------------------------


def of_run(run_id: int) -> Select[Any]:
    """The tasks a run made (generate: ranking tasks; evaluate: A/B tasks)."""
    return select(Task.id).where(Task.source_run_id == run_id)


def of_model_version(version_id: int) -> Select[Any]:
    """The tasks that show an output of the model version (whichever run sampled it)."""
    return (
        select(TaskCompletion.task_id)
        .join(Completion, Completion.id == TaskCompletion.completion_id)
        .where(Completion.model_version_id == version_id)
    )


def _kept_ids(session: Session, task_ids: Select[Any]) -> set[int]:
    """Of the tasks (a SELECT of their ids), those with a submission or an open flag on their prompt (PII, nonsense, harmful):
    withdrawing closes these rather than deleting them, so no answer and no flag goes."""
    kept: set[int] = set()
    for model in SUBMISSION_MODELS.values():
        kept.update(session.scalars(select(model.task_id).where(model.task_id.in_(task_ids)).distinct()))
    flagged = select(Skip.task_id).where(
        Skip.task_id.in_(task_ids), Skip.reason != SkipReason.skip, Skip.dismissed_at.is_(None)
    )
    kept.update(session.scalars(flagged.distinct()))
    return kept


def _open(selection: Select[Any]) -> Select[Any]:
    return select(Task.id).where(Task.id.in_(selection), Task.status == TaskStatus.open)


@dataclass
class OpenTasks:
    made: int
    """The selected tasks, whatever their status."""
    open: int
    """Of them, the open ones: labelers can still get them."""
    kept: int
    """Of the open ones, those with an answer or an open flag: withdrawing closes them, with what they hold."""


def _count(session: Session, selection: Select[Any]) -> int:
    return session.scalar(select(func.count()).select_from(selection.subquery())) or 0


def open_tasks(session: Session, selection: Select[Any]) -> OpenTasks:
    """How many tasks the selection holds, how many are open, and how many of those a withdrawal
    would close rather than delete."""
    n = _count(session, _open(selection))
    made = _count(session, select(Task.id).where(Task.id.in_(selection)))
    return OpenTasks(made, n, len(_kept_ids(session, _open(selection))) if n else 0)


@dataclass
class Withdrawn:
    deleted: int
    """Nobody had answered them: gone, with their leases and drafts."""
    closed: int
    """They had answers (or a flag): closed, what was submitted kept for review, exports and runs."""

    @property
    def total(self) -> int:
        return self.deleted + self.closed


def withdraw_open(session: Session, selection: Select[Any]) -> Withdrawn:
    """Takes the selected open tasks out of the labelers' queues: those nobody answered are deleted
    (as `delete_task` does one by one), those with answers or an open flag are closed, keeping them.
    In the caller's transaction (an `atomic` step: runs.withdraw_run_tasks, runs.withdraw_version_tasks).

    The open tasks are locked first (FOR UPDATE on Postgres; the writer lock on SQLite), so a labeler
    submitting at that moment either lands before (the task is kept, closed) or is refused after
    (the task takes no more answers)."""
    rows = session.execute(
        select(Task.id, Task.project_id)
        .where(Task.id.in_(selection), Task.status == TaskStatus.open)
        .order_by(Task.id)
        .with_for_update(of=Task)
    ).all()
    if not rows:
        return Withdrawn(0, 0)
    for project_id in sorted({p for _, p in rows}):
        projects.check_writable(projects.get_project(session, project_id))
    ids = [task_id for task_id, _ in rows]
    kept = _kept_ids(session, _open(selection)) & set(
        ids
    )  # (a task the run adds meanwhile waits for the next withdrawal)
    gone = [i for i in ids if i not in kept]
    for start in range(0, len(gone), INSERT_CHUNK):
        _delete_tasks(session, gone[start : start + INSERT_CHUNK])
    closing = sorted(kept)
    for start in range(0, len(closing), INSERT_CHUNK):
        session.execute(
            update(Task)
            .where(Task.id.in_(closing[start : start + INSERT_CHUNK]))
            .values(status=TaskStatus.closed)
            .execution_options(synchronize_session=False)
        )
    session.expire_all()
    return Withdrawn(len(gone), len(closing))


def delete_prompt(session: Session, project_id: int, prompt_id: int) -> int:
    """Deletes a prompt with its tasks and model outputs; refused once a labeler answered one of its
    tasks. Returns how many tasks went."""
    prompt = session.get(Prompt, prompt_id)
    if prompt is None or prompt.project_id != project_id:
        raise NotFound(f"Project {project_id} has no prompt {prompt_id}.")
    projects.check_writable(projects.get_project(session, project_id))
    task_ids = select(Task.id).where(Task.prompt_id == prompt_id)
    if _submitted(session, task_ids):
        raise Conflict(
            f"Labelers answered tasks of prompt {prompt_id}, and answers are never deleted silently: retire its "
            "tasks instead."
        )
    tasks_gone = session.scalar(select(func.count()).select_from(Task).where(Task.prompt_id == prompt_id)) or 0
    # Children first: a task's outputs refer to completions that the prompt's deletion would remove.
    session.execute(delete(Task).where(Task.prompt_id == prompt_id).execution_options(synchronize_session=False))
    session.execute(
        delete(Completion).where(Completion.prompt_id == prompt_id).execution_options(synchronize_session=False)
    )
    session.execute(delete(Prompt).where(Prompt.id == prompt_id).execution_options(synchronize_session=False))
    session.expunge(prompt)
    return int(tasks_gone)
