"""Labeler-written prompts (InstructGPT §3.2: labelers wrote prompts of three kinds), reviewed by an admin.

- plain: any task; few_shot: an instruction and several query/response pairs; user_based: following
  one of the project's use cases (`Project.written_use_cases`, kept by the admin).
- A project asks for written prompts when it has targets (`Project.written_prompt_targets`:
  wanted per kind and per category); labelers see the "Write a prompt" page only then.
- A written prompt waits (pending) until an admin accepts it (optionally with its text or category
  edited) or rejects it with a reason; who and when are recorded. Accepting creates a real Prompt
  (source SOURCE, the category, `pii` kinds when the author ticked "contains personal information",
  split train: a written prompt is written to be demonstrated) with its demonstration task, as an
  import with tasks gives one. Near-duplicates are pointed out with the intake's prefix hash.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from app.db import utcnow
from app.models import Project, ProjectMember, Prompt, PromptCategory, ReviewStatus, Split, User, WrittenPrompt
from app.services import Conflict, Forbidden, NotFound, ServiceError, imports, intake, projects, queue, tasks
from app.validation import text_problem

KINDS = {"plain": "Plain", "few_shot": "Few-shot", "user_based": "User-based"}
SOURCE = "written by a labeler"
MAX_TEXT_CHARS = 16_000
MAX_USE_CASES = 100
MAX_USE_CASE_CHARS = 200
MAX_TARGET = 1_000_000
MAX_REASON_CHARS = 2_000
MIN_SHOTS = 2
FEW_SHOT_TEMPLATE = "Instruction: \n\nQuery: \nResponse: \n\nQuery: \nResponse: \n\nQuery: \nResponse: "


def _refuse(message: str) -> ServiceError:
    return ServiceError(message, status_code=422)


def wants_written(project: Project) -> bool:
    return bool(project.written_prompt_targets) or bool(project.written_use_cases)


def use_cases(project: Project) -> list[str]:
    return [str(u) for u in project.written_use_cases or []]


def few_shot_text(instruction: str, pairs: list[tuple[str, str]]) -> str:
    """The few-shot form's fields as one prompt: the instruction, then the filled query/response pairs."""
    parts = [instruction.strip()]
    for query, response in pairs:
        if query.strip() or response.strip():
            parts.append(f"Query: {query.strip()}\nResponse: {response.strip()}")
    return "\n\n".join(p for p in parts if p)


def _check_text(text: str, what: str = "The prompt") -> str:
    if not isinstance(text, str) or not text.strip():
        raise _refuse(f"{what} is empty.")
    if problem := text_problem(text, MAX_TEXT_CHARS):
        raise _refuse(f"{what} {problem}.")
    return imports.normalize(text)


def _category(value: str) -> PromptCategory:
    try:
        return PromptCategory(value)
    except ValueError:
        raise _refuse(
            f"Unknown category {value[:40]!r}; one of: {', '.join(c.value for c in PromptCategory)}."
        ) from None


def writable_project(session: Session, author: User, project_id: int) -> Project:
    """The project, if this labeler may write prompts for it (else 404, 403 or 409 saying why)."""
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    if project.members_only and session.get(ProjectMember, (project.id, author.id)) is None:
        raise Forbidden("This project is open to its members only.")
    if not wants_written(project):
        raise Conflict("This project asks for no written prompts.")
    return project


def write(
    session: Session,
    author: User,
    project_id: int,
    *,
    kind: str,
    text: str,
    category: str,
    use_case: str | None = None,
    has_pii: bool = False,
) -> WrittenPrompt:
    """Stores a labeler's prompt, pending review; refuses (422) bad input naming what is wrong."""
    project = writable_project(session, author, project_id)
    if kind not in KINDS:
        raise _refuse(f"Unknown kind {kind[:40]!r}; one of: {', '.join(KINDS)}.")
    cat = _category(category)
    text = _check_text(text)
    if kind == "few_shot" and (
        text.count("Query:") < MIN_SHOTS or text.count("Response:") < MIN_SHOTS or _bare_template(text)
    ):
        raise _refuse(f"A few-shot prompt needs an instruction and at least {MIN_SHOTS} filled Query:/Response: pairs.")
    if kind == "user_based":
        if use_case not in use_cases(project):
            raise _refuse("Pick one of the project's use cases for a user-based prompt.")
    else:
        use_case = None
    row = WrittenPrompt(
        project_id=project.id,
        author_id=author.id,
        kind=kind,
        category=cat,
        use_case=use_case,
        text=text,
        has_pii=bool(has_pii),
        status=ReviewStatus.pending,
        reason="",
    )
    session.add(row)
    session.flush()
    return row


def _bare_template(text: str) -> bool:
    """Nothing but the template's labels (the few-shot template sent unfilled)."""
    words = set(text.replace(":", " ").split())
    return words <= {"Instruction", "Query", "Response"}


def own(session: Session, author: User, project_id: int | None = None) -> list[WrittenPrompt]:
    query = select(WrittenPrompt).where(WrittenPrompt.author_id == author.id)
    if project_id is not None:
        query = query.where(WrittenPrompt.project_id == project_id)
    return list(session.scalars(query.order_by(WrittenPrompt.id.desc()).limit(200)))


def listing(session: Session, project_id: int, status: str | None = "pending") -> list[WrittenPrompt]:
    projects.get_project(session, project_id)
    query = select(WrittenPrompt).options(joinedload(WrittenPrompt.author), joinedload(WrittenPrompt.reviewed_by))
    query = query.where(WrittenPrompt.project_id == project_id)
    if status:
        query = query.where(WrittenPrompt.status == ReviewStatus(status))
    return list(session.scalars(query.order_by(WrittenPrompt.id).limit(500)))


def near_duplicates(session: Session, project_id: int, rows: list[WrittenPrompt]) -> dict[int, int]:
    """Written prompt id -> an existing prompt of the project that starts the same way (the intake's
    prefix hash) or has the same text, for those that have one: one query for a whole page of rows."""
    keys = {r.id: (intake.prefix_hash(r.text), imports.content_hash(r.text)) for r in rows}
    if not keys:
        return {}
    found: dict[str | None, int] = {}
    for prompt_id, prefix, content in session.execute(
        select(Prompt.id, Prompt.prefix_hash, Prompt.content_hash)
        .where(
            Prompt.project_id == project_id,
            or_(
                Prompt.prefix_hash.in_([p for p, _ in keys.values()]),
                Prompt.content_hash.in_([c for _, c in keys.values()]),
            ),
        )
        .order_by(Prompt.id)
    ):
        found.setdefault(prefix, prompt_id)
        found.setdefault(content, prompt_id)
    return {rid: found.get(p) or found[c] for rid, (p, c) in keys.items() if p in found or c in found}


def _get(session: Session, project_id: int, written_id: int) -> WrittenPrompt:
    row = session.get(WrittenPrompt, written_id)
    if row is None or row.project_id != project_id:
        raise NotFound(f"This project has no written prompt {written_id}.")
    return row


def accept(
    session: Session,
    admin: User,
    project_id: int,
    written_id: int,
    *,
    text: str | None = None,
    category: str | None = None,
) -> WrittenPrompt:
    """Creates the Prompt (train split) and its demonstration task; refuses a near-duplicate (409)."""
    row = _get(session, project_id, written_id)
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    if row.status != ReviewStatus.pending:
        raise Conflict(f"Written prompt {row.id} is {row.status.value} already.")
    new_text = _check_text(text) if text is not None and text.strip() != row.text.strip() else row.text
    new_category = _category(category) if category else row.category
    if (dup := intake.existing_prompt(session, project.id, new_text)) is not None:
        raise Conflict(f"Prompt {dup} of this project starts the same way (first {intake.PREFIX_CHARS} characters).")
    pii = None
    if row.has_pii:
        pii = ",".join(intake.pii_kinds(new_text)) or "other"
    meta: dict[str, Any] = {"written_prompt_id": row.id, "kind": row.kind}
    if row.use_case:
        meta["use_case"] = row.use_case
    prompt = Prompt(
        project_id=project.id,
        text=new_text,
        split=Split.train,
        source=SOURCE,
        content_hash=imports.content_hash(new_text),
        prefix_hash=intake.prefix_hash(new_text),
        category=new_category,
        pii=pii,
        meta=meta,
    )
    try:
        with session.begin_nested():
            session.add(prompt)
            session.flush()
    except IntegrityError as exc:  # the same text accepted at the same moment (another admin, a double click)
        raise Conflict("This prompt was just added to the project by someone else; reload the page.") from exc
    tasks.create_demonstration_tasks(session, project, [prompt])
    row.edited = new_text != row.text or new_category != row.category
    row.text, row.category = new_text, new_category
    row.status, row.prompt_id = ReviewStatus.accepted, prompt.id
    row.reviewed_by_id, row.reviewed_at = admin.id, utcnow()
    session.flush()
    return row


def reject(session: Session, admin: User, project_id: int, written_id: int, reason: str) -> WrittenPrompt:
    row = _get(session, project_id, written_id)
    if row.status != ReviewStatus.pending:
        raise Conflict(f"Written prompt {row.id} is {row.status.value} already.")
    reason = (reason or "").strip()
    if not reason:
        raise _refuse("Say why it is rejected: the author sees the reason.")
    if problem := text_problem(reason, MAX_REASON_CHARS):
        raise _refuse(f"The reason {problem}.")
    row.status, row.reason = ReviewStatus.rejected, reason
    row.reviewed_by_id, row.reviewed_at = admin.id, utcnow()
    session.flush()
    return row


def set_settings(session: Session, project_id: int, *, targets: dict[str, dict[str, int]], cases: list[str]) -> Project:
    """Targets per kind and per category (0 or missing: none wanted) and the use cases (one per entry)."""
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    clean: dict[str, dict[str, int]] = {"kind": {}, "category": {}}
    for group, names in (("kind", list(KINDS)), ("category", [c.value for c in PromptCategory])):
        for name, n in (targets.get(group) or {}).items():
            if name not in names:
                raise _refuse(f"Unknown {group} {str(name)[:40]!r} in the targets.")
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_TARGET:
                raise _refuse(f"The target for {name} must be a whole number from 0 to {MAX_TARGET:,}.")
            if n:
                clean[group][name] = n
    for key in targets:
        if key not in clean:
            raise _refuse(f"Targets are given per 'kind' and 'category', not {str(key)[:40]!r}.")
    seen: list[str] = []
    for case in cases:
        case = case.strip() if isinstance(case, str) else ""
        if not case:
            continue
        if problem := text_problem(case, MAX_USE_CASE_CHARS):
            raise _refuse(f"A use case {problem}.")
        if case not in seen:
            seen.append(case)
    if len(seen) > MAX_USE_CASES:
        raise _refuse(f"At most {MAX_USE_CASES} use cases.")
    project.written_prompt_targets = clean if clean["kind"] or clean["category"] else None
    project.written_use_cases = seen or None
    session.flush()
    return project


@dataclass
class Progress:
    group: str
    name: str
    target: int
    written: int
    accepted: int


def progress(session: Session, project: Project) -> list[Progress]:
    """Written and accepted counts per kind and per category, against the targets (every one with a
    target or a written prompt)."""
    rows = session.execute(
        select(WrittenPrompt.kind, WrittenPrompt.category, WrittenPrompt.status, func.count())
        .where(WrittenPrompt.project_id == project.id)
        .group_by(WrittenPrompt.kind, WrittenPrompt.category, WrittenPrompt.status)
    ).all()
    targets = project.written_prompt_targets or {}
    out = []
    for group, names in (("kind", list(KINDS)), ("category", [c.value for c in PromptCategory])):
        for name in names:
            mine = [r for r in rows if (r[0] if group == "kind" else r[1].value) == name]
            written = sum(r[3] for r in mine if r[2] != ReviewStatus.rejected)
            accepted = sum(r[3] for r in mine if r[2] == ReviewStatus.accepted)
            target = int((targets.get(group) or {}).get(name, 0))
            if target or written:
                out.append(Progress(group, name, target, written, accepted))
    return out


def open_projects(session: Session, user: User) -> list[Project]:
    """The projects this labeler may write prompts for: open to them, not archived, asking for written prompts."""
    rows = session.scalars(
        select(Project).where(Project.archived_at.is_(None), queue.may_work_on(user.id)).order_by(Project.name)
    )
    return [p for p in rows if wants_written(p)]
