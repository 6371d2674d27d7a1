"""Projects: create and edit their settings, and keep every version of their guidelines."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import after_commit, lock_writes, utcnow
from app.models import (
    GuidelineVersion,
    Project,
    ProjectMember,
    Prompt,
    PromptCategory,
    Role,
    Split,
    Task,
    TaskKind,
    TaskStatus,
    TrainingRun,
    User,
)
from app.services import Conflict, NotFound, ServiceError
from app.validation import text_problem
from runconfig import K_MAX, K_MIN

LEASE_MIN_S, LEASE_MAX_S = 60, 7 * 24 * 3600
OVERLAP_MAX = 50
"""Labelers one task can ask for (a project's overlap, and review.ask_one_more_labeler)."""
NAME_MAX = 200
TARGET_MAX = 10_000_000
TARGET_KINDS = [k.value for k in TaskKind]


@dataclass
class ProjectSettings:
    """What an admin sets on a project; checked as a whole so a form shows every problem at once."""

    name: str
    description: str = ""
    k: int = 4
    overlap: int = 1
    lease_seconds: int | None = None
    targets: dict[str, int] | None = None


def active_labeler_count(session: Session) -> int:
    """Real labelers who can work (the demo's simulated ones do not count)."""
    return (
        session.scalar(
            select(func.count(User.id)).where(User.role == Role.labeler, User.is_active, User.simulated.is_(False))
        )
        or 0
    )


def overlap_warning(session: Session, project: Project) -> str | None:
    """A project may ask for more labelers per task than it has yet (more can be invited or
    assigned), but its tasks then wait: the project page says so."""
    if project.members_only:
        labelers = len(member_ids(session, project.id, active_only=True))
        who = f"{labelers} active member{'s' if labelers != 1 else ''}"
    else:
        labelers = active_labeler_count(session)
        who = f"{labelers} active labeler{'s' if labelers != 1 else ''}"
    if project.overlap <= labelers:
        return None
    return (
        f"Overlap {project.overlap} is more than the {who}: tasks wait for more labelers before they are "
        "done. Invite or assign more, or lower the overlap."
    )


def member_ids(session: Session, project_id: int, *, active_only: bool = False) -> list[int]:
    stmt = select(ProjectMember.user_id).where(ProjectMember.project_id == project_id)
    if active_only:
        stmt = stmt.join(User, User.id == ProjectMember.user_id).where(User.is_active, User.simulated.is_(False))
    return list(session.scalars(stmt.order_by(ProjectMember.user_id)))


def set_members(session: Session, project_id: int, members_only: bool, user_ids: list[int]) -> Project:
    """Who labels the project: every labeler (members_only False; the member list is kept for later)
    or only the labelers listed. Leases already held stay until they end."""
    project = get_project(session, project_id)
    check_writable(project)
    known = set(session.scalars(select(User.id).where(User.id.in_(user_ids))))
    unknown = sorted(set(user_ids) - known)
    if unknown:
        raise NotFound(f"No user with the id(s) {unknown}.")
    project.members_only = members_only
    session.execute(delete(ProjectMember).where(ProjectMember.project_id == project_id))
    session.add_all(ProjectMember(project_id=project_id, user_id=uid) for uid in sorted(known))
    session.flush()
    return project


def set_paused(session: Session, project_id: int, paused: bool) -> Project:
    """Paused: no task is handed out until it is resumed (held tasks can still be submitted)."""
    project = get_project(session, project_id)
    check_writable(project)
    project.paused_at = (project.paused_at or utcnow()) if paused else None
    session.flush()
    return project


def _check(session: Session, s: ProjectSettings, project: Project | None) -> ProjectSettings:
    problems = []
    name = " ".join(s.name.split())
    for field, value in (("name", name), ("description", s.description)):
        if problem := text_problem(value):
            raise ServiceError(f"The {field} {problem}.", status_code=422)
    if not name:
        problems.append("Give the project a name.")
    elif len(name) > NAME_MAX:
        problems.append(f"The name is {len(name)} characters; keep it under {NAME_MAX}.")
    else:
        clash = select(Project.id).where(func.lower(Project.name) == name.lower())
        if project is not None:
            clash = clash.where(Project.id != project.id)
        if session.scalar(clash) is not None:
            raise Conflict(f"A project named “{name}” already exists. Pick another name.")
    if not K_MIN <= s.k <= K_MAX:
        problems.append(f"Outputs per prompt (K) must be between {K_MIN} and {K_MAX}; got {s.k}.")
    if s.overlap < 1:
        problems.append(f"Overlap (labelers per task) must be at least 1; got {s.overlap}.")
    elif s.overlap > OVERLAP_MAX:
        problems.append(f"Overlap (labelers per task) can be at most {OVERLAP_MAX}; got {s.overlap}.")
    if s.lease_seconds is not None and not LEASE_MIN_S <= s.lease_seconds <= LEASE_MAX_S:
        problems.append(
            f"The lease length must be between {LEASE_MIN_S // 60} minute and "
            f"{LEASE_MAX_S // 86400} days; got {s.lease_seconds} seconds."
        )
    targets: dict[str, int] = {}
    for target_kind, target in (s.targets or {}).items():
        if target_kind not in TARGET_KINDS:
            problems.append(f"Unknown target kind {target_kind!r}; use one of {', '.join(TARGET_KINDS)}.")
        elif not isinstance(target, int) or isinstance(target, bool) or not 0 <= target <= TARGET_MAX:
            problems.append(
                f"The {target_kind} target must be a whole number from 0 to {TARGET_MAX:,}; got {target!r}."
            )
        elif target:
            targets[target_kind] = target
    if problems:
        raise ServiceError(" ".join(problems))
    return ProjectSettings(
        name=name,
        description=s.description.strip(),
        k=s.k,
        overlap=s.overlap,
        lease_seconds=s.lease_seconds,
        targets=targets,
    )


def create_project(
    session: Session, settings: ProjectSettings, *, guidelines_md: str = "", created_by: User | None = None
) -> Project:
    s = _check(session, settings, None)
    project = Project(
        name=s.name,
        description=s.description,
        k=s.k,
        overlap=s.overlap,
        lease_seconds=s.lease_seconds,
        targets=s.targets,
    )
    with _unique_name(session, s.name):
        session.add(project)
    save_guidelines(session, project, guidelines_md, created_by=created_by)
    return project


def update_project(session: Session, project: Project, settings: ProjectSettings) -> Project:
    """Changes apply to tasks created from now on; open tasks keep the overlap they were made with."""
    check_writable(project)
    s = _check(session, settings, project)
    with _unique_name(session, s.name):
        project.name, project.description, project.k, project.overlap = s.name, s.description, s.k, s.overlap
        project.lease_seconds, project.targets = s.lease_seconds, s.targets or {}
    return project


@contextmanager
def _unique_name(session: Session, name: str) -> Iterator[None]:
    """Writes in a savepoint: when a parallel request took the name since _check looked, the
    database's unique index refuses it, only this write is undone and the answer is 409."""
    try:
        with session.begin_nested():
            yield
    except IntegrityError as exc:
        raise Conflict(f"A project named “{name}” already exists. Pick another name.") from exc


def check_writable(project: Project) -> None:
    """An archived project is read-only (its exports still work) until it is unarchived: the one
    guard of every service that writes to a project (settings, members, pause, guidelines, prompts,
    imports, tasks, reviews, flags, written prompts, revisions, runs). What stays open on an
    archived project, and why, is listed in tests/test_archived_guard.py, which walks every write
    route against one."""
    if project.archived_at is not None:
        raise Conflict(
            f"Project “{project.name}” is archived, so it is read-only (exports still work). Unarchive it to change it."
        )


def set_archived(session: Session, project_id: int, archived: bool) -> Project:
    """Archive: hidden from labelers (their held tasks can still be submitted), read-only, exportable.
    Unarchive: everything as before."""
    project = get_project(session, project_id)
    project.archived_at = (project.archived_at or utcnow()) if archived else None
    session.flush()
    return project


def get_project(session: Session, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"There is no project {project_id}.")
    return project


def project_by_name_or_id(session: Session, ref: str) -> Project:
    """For the CLI and API: a project id or its exact name."""
    project = session.get(Project, int(ref)) if ref.isdigit() else None
    project = project or session.scalar(select(Project).where(func.lower(Project.name) == ref.strip().lower()))
    if project is None:
        names = session.scalars(select(Project.name).order_by(Project.name).limit(20)).all()
        raise NotFound(f"There is no project {ref!r}. Projects: {', '.join(names) or 'none yet'}.")
    return project


def save_guidelines(
    session: Session, project: Project, body_md: str, *, created_by: User | None = None
) -> GuidelineVersion:
    """Every save is a new version; submissions record the version they were made under."""
    check_writable(project)
    # Two saves at once would both read the same latest version and the second insert would break
    # the unique (project, version): the writer lock (SQLite) or the project's row (Postgres) first.
    lock_writes(session)
    session.execute(select(Project.id).where(Project.id == project.id).with_for_update())
    latest = current_guidelines(session, project.id)
    if latest is not None and latest.body_md == body_md:
        return latest
    version = GuidelineVersion(
        project_id=project.id,
        version=(latest.version + 1) if latest else 1,
        body_md=body_md,
        created_by_id=created_by.id if created_by else None,
    )
    session.add(version)
    session.flush()
    return version


def current_guidelines(session: Session, project_id: int) -> GuidelineVersion | None:
    return session.scalar(
        select(GuidelineVersion)
        .where(GuidelineVersion.project_id == project_id)
        .order_by(GuidelineVersion.version.desc())
        .limit(1)
    )


def guideline_history(session: Session, project_id: int) -> list[GuidelineVersion]:
    return list(
        session.scalars(
            select(GuidelineVersion)
            .where(GuidelineVersion.project_id == project_id)
            .order_by(GuidelineVersion.version.desc())
        )
    )


def guideline_version(session: Session, project_id: int, version: int) -> GuidelineVersion:
    row = session.scalar(
        select(GuidelineVersion).where(GuidelineVersion.project_id == project_id, GuidelineVersion.version == version)
    )
    if row is None:
        raise NotFound(f"This project has no guidelines version {version}.")
    return row


@dataclass
class ProjectRow:
    project: Project
    prompts: int
    open_tasks: int
    guideline_version: int | None


def list_projects(session: Session) -> list[ProjectRow]:
    """All projects with their prompt and open-task counts, in three queries."""
    projects = session.scalars(select(Project).order_by(Project.archived_at.is_not(None), Project.name)).all()
    prompts = dict(session.execute(select(Prompt.project_id, func.count()).group_by(Prompt.project_id)).all())
    tasks = dict(
        session.execute(
            select(Task.project_id, func.count()).where(Task.status == TaskStatus.open).group_by(Task.project_id)
        ).all()
    )
    versions = dict(
        session.execute(
            select(GuidelineVersion.project_id, func.max(GuidelineVersion.version)).group_by(
                GuidelineVersion.project_id
            )
        ).all()
    )
    return [ProjectRow(p, prompts.get(p.id, 0), tasks.get(p.id, 0), versions.get(p.id)) for p in projects]


def project_choices(session: Session) -> list[Project]:
    """Every project by name, for the pickers of the admin pages."""
    return list(session.scalars(select(Project).order_by(Project.name)))


def project_names(session: Session) -> dict[int, str]:
    return dict(session.execute(select(Project.id, Project.name)).all())


def dashboard_counts(session: Session) -> dict[str, int]:
    return {
        "projects": session.scalar(select(func.count(Project.id))) or 0,
        "labelers": active_labeler_count(session),
        "runs": session.scalar(select(func.count(TrainingRun.id))) or 0,
    }


def list_prompts(
    session: Session,
    project_id: int,
    *,
    split: Split | None = None,
    after: int = 0,
    limit: int = 100,
    category: str | None = None,
    pii: bool = False,
    newest_first: bool = False,
) -> list[Prompt]:
    """The project's prompts with an id above `after` (keyset paging; below it when newest first),
    oldest first. `category`: one category, or "none" for the uncategorized; `pii`: only prompts
    the intake flagged."""
    get_project(session, project_id)
    stmt = select(Prompt).where(Prompt.project_id == project_id).limit(limit)
    if newest_first:
        stmt = stmt.order_by(Prompt.id.desc()).where(Prompt.id < after) if after else stmt.order_by(Prompt.id.desc())
    else:
        stmt = stmt.where(Prompt.id > after).order_by(Prompt.id)
    if split is not None:
        stmt = stmt.where(Prompt.split == split)
    if category == "none":
        stmt = stmt.where(Prompt.category.is_(None))
    elif category:
        stmt = stmt.where(Prompt.category == PromptCategory(category))
    if pii:
        stmt = stmt.where(Prompt.pii.is_not(None))
    return list(session.scalars(stmt))


def set_category(session: Session, project_id: int, prompt_id: int, category: PromptCategory | None) -> Prompt:
    """An admin's category for a prompt (None: uncategorized)."""
    project = get_project(session, project_id)
    prompt = session.get(Prompt, prompt_id)
    if prompt is None or prompt.project_id != project_id:
        raise NotFound(f"Project {project_id} has no prompt {prompt_id}.")
    check_writable(project)
    prompt.category = category
    session.flush()
    return prompt


@dataclass
class ProjectContents:
    prompts: int
    tasks: int
    submissions: int
    """By real labelers: they forbid deleting the project."""
    simulated_submissions: int
    """By the demo's simulated labelers: they go with the project."""


def _submission_counts(session: Session, project_id: int, *, simulated: bool) -> int:
    from app.models import SUBMISSION_MODELS

    task_ids = select(Task.id).where(Task.project_id == project_id)
    by = select(User.id).where(User.simulated.is_(simulated))
    return sum(
        session.scalar(select(func.count()).select_from(m).where(m.task_id.in_(task_ids), m.user_id.in_(by))) or 0
        for m in SUBMISSION_MODELS.values()
    )


def project_contents(session: Session, project_id: int) -> ProjectContents:
    return ProjectContents(
        prompts=session.scalar(select(func.count()).select_from(Prompt).where(Prompt.project_id == project_id)) or 0,
        tasks=session.scalar(select(func.count()).select_from(Task).where(Task.project_id == project_id)) or 0,
        submissions=_submission_counts(session, project_id, simulated=False),
        simulated_submissions=_submission_counts(session, project_id, simulated=True),
    )


def upload_folder(data_dir: Path, project_id: int) -> Path:
    """Where the import page keeps a project's previewed uploads until the import is confirmed: one
    folder per project, so that a deleted project's go with it."""
    return data_dir / "uploads" / str(project_id)


def delete_project(session: Session, project_id: int, *, data_dir: Path | None = None) -> ProjectContents:
    """Deletes a project with its prompts, tasks, model outputs, guidelines and imports, and the
    demo's simulated submissions (a demo project goes whole); its runs and model versions stay
    (without a project). Refused once real labelers made submissions in it (they are never deleted
    silently): archive it instead. With `data_dir`, its previewed uploads leave the disk once the
    deletion has committed."""
    from app.models import SUBMISSION_MODELS, Completion

    project = get_project(session, project_id)
    gone = project_contents(session, project_id)
    if gone.submissions:
        raise Conflict(
            f"Labelers made {gone.submissions} submission(s) in “{project.name}”, and submissions are never deleted "
            "silently: archive the project instead (hidden from labelers, read-only, exportable)."
        )
    task_ids = select(Task.id).where(Task.project_id == project_id)
    prompt_ids = select(Prompt.id).where(Prompt.project_id == project_id)
    for model in SUBMISSION_MODELS.values():  # only simulated ones are left (checked above)
        session.execute(delete(model).where(model.task_id.in_(task_ids)).execution_options(synchronize_session=False))
    # Children first: a task's outputs refer to completions that the prompts' deletion would remove.
    session.execute(delete(Task).where(Task.project_id == project_id).execution_options(synchronize_session=False))
    session.execute(
        delete(Completion).where(Completion.prompt_id.in_(prompt_ids)).execution_options(synchronize_session=False)
    )
    session.execute(delete(Prompt).where(Prompt.project_id == project_id).execution_options(synchronize_session=False))
    # (Core, not session.delete: the database cascades to the guidelines, imports and members.)
    session.execute(delete(Project).where(Project.id == project_id).execution_options(synchronize_session=False))
    session.expunge(project)
    if data_dir is not None:
        folder = upload_folder(data_dir, project_id)
        after_commit(session, lambda: shutil.rmtree(folder, ignore_errors=True))
    return gone
