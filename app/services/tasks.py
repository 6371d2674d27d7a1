"""Creating and reading tasks. Tasks are only rows; app.services.queue hands them out to labelers."""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select
from sqlalchemy.orm import Session

from app.models import (
    SUBMISSION_MODELS,
    Completion,
    Project,
    Prompt,
    Task,
    TaskCompletion,
    TaskKind,
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


def tasks_page(
    session: Session,
    project_id: int,
    kind: TaskKind | None,
    *,
    offset: int = 0,
    limit: int = 50,
    shared_only: bool = False,
) -> list[Task]:
    q = select(Task).where(Task.project_id == project_id).order_by(Task.id.desc()).offset(offset).limit(limit)
    if kind is not None:
        q = q.where(Task.kind == kind)
    if shared_only:
        q = q.where(Task.done_count >= 2)
    return list(session.scalars(q))


def _submitted(session: Session, task_ids) -> int:
    return sum(
        session.scalar(select(func.count()).select_from(m).where(m.task_id.in_(task_ids))) or 0
        for m in SUBMISSION_MODELS.values()
    )


def delete_task(session: Session, task_id: int) -> Task:
    """Deletes a task nobody has answered (its leases, skips and drafts with it); refused once a
    labeler submitted an answer to it (retire it instead)."""
    task = get_task(session, task_id)
    projects.check_writable(task.project)
    if _submitted(session, [task_id]):
        raise Conflict(f"Task {task_id} has answers, and answers are never deleted silently: retire the task instead.")
    session.execute(delete(Task).where(Task.id == task_id).execution_options(synchronize_session=False))
    session.expunge(task)
    return task


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
