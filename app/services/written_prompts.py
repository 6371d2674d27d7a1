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
- Follow-ups grow conversations (Open-Assistant's prompter replies): where a project sets
  `follow_up_turns`, a labeler reads an accepted demonstration in its thread and writes the user's
  next turn; accepted, it becomes a prompt one turn deeper (the thread, the demonstration as the
  assistant's turn, the new user turn) with its demonstration task, until the conversation has
  `follow_up_turns` user turns.
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, not_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from app import conversation
from app.db import atomic, utcnow
from app.models import (
    Demonstration,
    Project,
    ProjectMember,
    Prompt,
    PromptCategory,
    ReviewStatus,
    Split,
    Task,
    TaskStatus,
    User,
    WrittenPrompt,
)
from app.services import Conflict, Forbidden, NotFound, ServiceError, imports, intake, projects, queue, tasks
from app.validation import text_problem

KINDS = {"plain": "Plain", "few_shot": "Few-shot", "user_based": "User-based"}
"""The kinds a labeler writes on the "Write a prompt" page (and sets targets for)."""
FOLLOW_UP = "follow_up"
KIND_TITLES = {**KINDS, FOLLOW_UP: "Follow-up"}
MAX_FOLLOW_UP_TURNS = 20
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


def _open_project(session: Session, author: User, project_id: int) -> Project:
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    if project.members_only and session.get(ProjectMember, (project.id, author.id)) is None:
        raise Forbidden("This project is open to its members only.")
    return project


def writable_project(session: Session, author: User, project_id: int) -> Project:
    """The project, if this labeler may write prompts for it (else 404, 403 or 409 saying why)."""
    project = _open_project(session, author, project_id)
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
    _refuse_existing(session, project.id, text)
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


def _refuse_existing(session: Session, project_id: int, text: str) -> None:
    """The labeler is told at once that the project has this prompt already (what an admin's accept
    would refuse as a duplicate: the same start, intake.PREFIX_CHARS characters), or that someone
    wrote it and it waits for review; rather than after an admin reads it."""
    if intake.existing_prompt(session, project_id, text) is not None:
        raise _refuse(
            f"This project already has this prompt (or one that starts the same way: the first "
            f"{intake.PREFIX_CHARS} characters, ignoring case and spacing). Write a different one."
        )
    waiting = select(WrittenPrompt.id).where(
        WrittenPrompt.project_id == project_id,
        WrittenPrompt.status == ReviewStatus.pending,
        WrittenPrompt.kind != FOLLOW_UP,
        WrittenPrompt.text == text,
    )
    if session.scalar(waiting.limit(1)) is not None:
        raise _refuse("Someone wrote this same prompt already; it waits for review. Write a different one.")


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
    # A follow-up is one turn of a conversation: its accept checks the whole conversation instead.
    keys = {r.id: (intake.prefix_hash(r.text), imports.content_hash(r.text)) for r in rows if r.kind != FOLLOW_UP}
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


def _pending(session: Session, project_id: int, written_id: int) -> tuple[WrittenPrompt, Project]:
    """The written prompt, locked until the decision commits (FOR UPDATE on Postgres; the `atomic`
    step's writer lock on SQLite) and read fresh, if it still waits for one: of two admins deciding
    at once, the second reads the first one's decision and is refused (409)."""
    row = session.scalar(
        select(WrittenPrompt)
        .where(WrittenPrompt.id == written_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None or row.project_id != project_id:
        raise NotFound(f"This project has no written prompt {written_id}.")
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    if row.status != ReviewStatus.pending:
        raise Conflict(f"Written prompt {row.id} is {row.status.value} already.")
    return row, project


@atomic
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
    row, project = _pending(session, project_id, written_id)
    new_text = _check_text(text) if text is not None and text.strip() != row.text.strip() else row.text
    new_category = _category(category) if category else row.category
    meta: dict[str, Any] = {"written_prompt_id": row.id, "kind": row.kind}
    if row.use_case:
        meta["use_case"] = row.use_case
    if row.kind == FOLLOW_UP:
        demo, parent = _continued(session, row)
        messages = _deeper(demo, parent, new_text)
        meta |= {"follows_prompt_id": demo.prompt_id, "follows_demonstration_id": demo.id}
        # Conversations grown from one thread share their start, so the intake's prefix hash (one
        # prompt per start) does not apply; an exact duplicate is still refused.
        prefix = None
        dup = session.scalar(
            select(Prompt.id).where(
                Prompt.project_id == project.id, Prompt.content_hash == conversation.content_hash(messages)
            )
        )
        if dup is not None:
            raise Conflict(f"Prompt {dup} of this project is this same conversation.")
    else:
        messages = conversation.single(new_text)
        prefix = intake.prefix_hash(new_text)
        if (dup := intake.existing_prompt(session, project.id, new_text)) is not None:
            raise Conflict(
                f"Prompt {dup} of this project starts the same way (first {intake.PREFIX_CHARS} characters)."
            )
    pii = None
    if row.has_pii:
        pii = ",".join(intake.pii_kinds(new_text)) or "other"
    prompt = Prompt(
        project_id=project.id,
        messages=messages,
        split=Split.train,
        source=SOURCE,
        content_hash=conversation.content_hash(messages),
        prefix_hash=prefix,
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


@atomic
def reject(session: Session, admin: User, project_id: int, written_id: int, reason: str) -> WrittenPrompt:
    row, _ = _pending(session, project_id, written_id)
    reason = (reason or "").strip()
    if not reason:
        raise _refuse("Say why it is rejected: the author sees the reason.")
    if problem := text_problem(reason, MAX_REASON_CHARS):
        raise _refuse(f"The reason {problem}.")
    row.status, row.reason = ReviewStatus.rejected, reason
    row.reviewed_by_id, row.reviewed_at = admin.id, utcnow()
    session.flush()
    return row


def set_settings(
    session: Session,
    project_id: int,
    *,
    targets: dict[str, dict[str, int]],
    cases: list[str],
    follow_up_turns: int | None = None,
) -> Project:
    """Targets per kind and per category (0 or missing: none wanted), the use cases (one per entry)
    and how many user turns follow-ups grow conversations to (None: unchanged; 0: no follow-ups)."""
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    if follow_up_turns is not None:
        if not 0 <= follow_up_turns <= MAX_FOLLOW_UP_TURNS or follow_up_turns == 1:
            raise _refuse(
                f"Conversations grow to 2 to {MAX_FOLLOW_UP_TURNS} user turns (0: labelers write no follow-ups)."
            )
        project.follow_up_turns = follow_up_turns
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
        .where(WrittenPrompt.project_id == project.id, WrittenPrompt.kind != FOLLOW_UP)
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


# ---------------------------------------------------------------- follow-ups: conversations one turn deeper


def follow_up_project(session: Session, author: User, project_id: int) -> Project:
    """The project, if this labeler may grow its conversations (else 404, 403 or 409 saying why)."""
    project = _open_project(session, author, project_id)
    if not project.follow_up_turns:
        raise Conflict("This project does not grow conversations.")
    return project


def follow_up_candidates(
    session: Session, author: User, project: Project, *, after: int = 0, limit: int = 1
) -> list[Demonstration]:
    """Accepted demonstrations this labeler may continue: their conversation is shorter than the
    project's follow_up_turns, their task is not retired, and this labeler has not continued them.
    The least continued first (a conversation tree grows in breadth before one branch is deepened),
    then by id after `after` (the one skipped), wrapping around."""
    followed_by_me = select(WrittenPrompt.demonstration_id).where(
        WrittenPrompt.author_id == author.id, WrittenPrompt.demonstration_id.is_not(None)
    )
    follow_ups = (
        select(func.count())
        .where(WrittenPrompt.demonstration_id == Demonstration.id, WrittenPrompt.status != ReviewStatus.rejected)
        .scalar_subquery()
    )
    rows = session.execute(
        select(Demonstration, Prompt.messages)
        .join(Prompt, Prompt.id == Demonstration.prompt_id)
        .join(Task, Task.id == Demonstration.task_id)
        .where(
            Prompt.project_id == project.id,
            Demonstration.review == ReviewStatus.accepted,
            Task.status != TaskStatus.retired,
            Prompt.pii.is_(None),
            # At most 2 * turns messages (a system message and turns - 1 answered turns before the
            # last user turn): the rest is counted below, exactly.
            func.json_array_length(Prompt.messages) < 2 * project.follow_up_turns,
            not_(Demonstration.id.in_(followed_by_me)),
        )
        .order_by(follow_ups, (Demonstration.id <= after), Demonstration.id)
        .limit(200)
    ).all()
    return [d for d, messages in rows if conversation.turns(messages) < project.follow_up_turns][:limit]


def _demonstration_in(
    session: Session, project: Project, demonstration_id: int
) -> tuple[Demonstration, Prompt] | tuple[None, None]:
    """The demonstration and its prompt, if it belongs to this project."""
    demo = session.get(Demonstration, demonstration_id)
    prompt = session.get(Prompt, demo.prompt_id) if demo is not None else None
    if demo is None or prompt is None or prompt.project_id != project.id:
        return None, None
    return demo, prompt


def follow_up_to_show(
    session: Session, author: User, project: Project, after: int = 0, demonstration_id: int | None = None
) -> tuple[Demonstration | None, list[conversation.Message]]:
    """The demonstration to continue (the one given, as when its form comes back with a message;
    else the next candidate after `after`) and the thread its author reads; (None, []) if none."""
    demo, prompt = _demonstration_in(session, project, demonstration_id) if demonstration_id else (None, None)
    if demo is None or prompt is None:
        found = follow_up_candidates(session, author, project, after=after)
        if not found:
            return None, []
        demo, prompt = found[0], session.get_one(Prompt, found[0].prompt_id)
    return demo, thread_of(demo, prompt)


def thread_of(demo: Demonstration, prompt: Prompt) -> list[conversation.Message]:
    """What the follow-up's author reads: the conversation and the demonstration as its answer."""
    return [*prompt.messages, {"role": "assistant", "content": demo.text}]


def write_follow_up(
    session: Session, author: User, project_id: int, demonstration_id: int, *, text: str, has_pii: bool = False
) -> WrittenPrompt:
    """Stores the user's next turn after an accepted demonstration, pending review like a written
    prompt; refuses (409, 422) a demonstration that can't be continued or bad text, saying why."""
    project = follow_up_project(session, author, project_id)
    demo, prompt = _demonstration_in(session, project, demonstration_id)
    if demo is None or prompt is None:
        raise NotFound(f"This project has no demonstration {demonstration_id}.")
    if demo.review != ReviewStatus.accepted:
        raise Conflict("Only an accepted demonstration can be continued; this one is not (any more).")
    if conversation.turns(prompt.messages) >= project.follow_up_turns:
        raise Conflict(f"This conversation has {project.follow_up_turns} user turns already, the project's maximum.")
    mine = select(WrittenPrompt.id).where(
        WrittenPrompt.author_id == author.id, WrittenPrompt.demonstration_id == demo.id
    )
    if session.scalar(mine) is not None:
        raise Conflict("You have continued this conversation already.")
    text = _check_text(text, "The next turn")
    _deeper(demo, prompt, text)
    row = WrittenPrompt(
        project_id=project.id,
        author_id=author.id,
        kind=FOLLOW_UP,
        category=prompt.category or PromptCategory.chat,
        text=text,
        has_pii=bool(has_pii),
        status=ReviewStatus.pending,
        reason="",
        demonstration_id=demo.id,
    )
    session.add(row)
    session.flush()
    return row


def _continued(session: Session, row: WrittenPrompt) -> tuple[Demonstration, Prompt]:
    demo = session.get(Demonstration, row.demonstration_id) if row.demonstration_id else None
    if demo is None:
        raise Conflict("The demonstration this follow-up continues was deleted; reject it.")
    if demo.review != ReviewStatus.accepted:
        raise Conflict("The demonstration this follow-up continues is no longer accepted; reject it.")
    return demo, session.get_one(Prompt, demo.prompt_id)


def _deeper(demo: Demonstration, prompt: Prompt, next_turn: str) -> list[conversation.Message]:
    try:
        return conversation.check(
            conversation.extend(prompt.messages, demo.text, next_turn), max_chars=imports.MAX_PROMPT_CHARS
        )
    except conversation.ConversationError as exc:
        raise _refuse(f"The conversation one turn deeper can't be stored: {exc}.") from exc


def follow_up_work(session: Session, user: User) -> list[tuple[Project, int]]:
    """The projects open to this labeler that grow conversations, with how many demonstrations wait
    for this labeler's follow-up (counted up to 200)."""
    rows = session.scalars(
        select(Project)
        .where(Project.archived_at.is_(None), Project.follow_up_turns > 0, queue.may_work_on(user.id))
        .order_by(Project.name)
    )
    work = [(p, len(follow_up_candidates(session, user, p, limit=200))) for p in rows]
    return [(p, n) for p, n in work if n]


def follow_up_threads(session: Session, rows: list[WrittenPrompt]) -> dict[int, list[conversation.Message]]:
    """Follow-up id -> the thread it continues (its conversation and the demonstration), for a page
    of written prompts in one query; a follow-up whose demonstration was deleted has none."""
    wanted = {r.demonstration_id: r.id for r in rows if r.kind == FOLLOW_UP and r.demonstration_id}
    if not wanted:
        return {}
    found = session.execute(
        select(Demonstration, Prompt)
        .join(Prompt, Prompt.id == Demonstration.prompt_id)
        .where(Demonstration.id.in_(wanted))
    ).all()
    return {wanted[demo.id]: thread_of(demo, prompt) for demo, prompt in found}
