"""ORM tables: the nouns of DESIGN.md.

State machines (documented here, enforced in app.services):

- Task.status: open -> closed (when it has `required` submissions) ; open -> retired (admin).
- Lease: a row per (task, labeler) while the labeler holds the task; it counts toward the
  task's `required` slots until `expires_at`, then frees its slot. Deleted on submit or skip.
- TrainingRun.status: queued -> running -> succeeded | failed | cancelled;
  queued -> cancelled. `cancel_requested` asks a running worker to stop.
"""

import enum
import re
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Connection,
    Delete,
    Engine,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    Update,
    event,
    false,
    func,
    inspect,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app import conversation
from app.db import UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


@event.listens_for(Table, "after_parent_attach")
def _never_reuse_ids(table: Table, parent: Any) -> None:
    """Table args of every model: AUTOINCREMENT on SQLite, so an id is never given out again after a
    delete (plain SQLite hands out max(id) + 1: a deleted project's id went to the next project, and
    an invite naming the old one to the new one). Postgres sequences never go back. Migration 0010."""
    if parent is Base.metadata:
        table.dialect_kwargs["sqlite_autoincrement"] = True


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (no native Postgres ENUM): adding a value needs no migration dance.
    return Enum(cls, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class Role(enum.StrEnum):
    labeler = "labeler"
    admin = "admin"


class Split(enum.StrEnum):
    train = "train"
    valid = "valid"
    test = "test"


class TaskKind(enum.StrEnum):
    demonstration = "demonstration"
    ranking = "ranking"
    comparison = "comparison"


class TaskStatus(enum.StrEnum):
    open = "open"
    closed = "closed"
    retired = "retired"


class SkipReason(enum.StrEnum):
    skip = "skip"
    pii = "pii"
    nonsense = "nonsense"
    harmful = "harmful"


class PromptCategory(enum.StrEnum):
    """InstructGPT's use-case categories of the API prompt dataset (Ouyang et al. 2022, Table 1)."""

    generation = "generation"
    open_qa = "open_qa"
    brainstorming = "brainstorming"
    chat = "chat"
    rewrite = "rewrite"
    summarization = "summarization"
    classification = "classification"
    other = "other"
    closed_qa = "closed_qa"
    extract = "extract"


PAPER_CATEGORY_SHARES: dict[PromptCategory, float] = {
    PromptCategory.generation: 45.6,
    PromptCategory.open_qa: 12.4,
    PromptCategory.brainstorming: 11.2,
    PromptCategory.chat: 8.4,
    PromptCategory.rewrite: 6.6,
    PromptCategory.summarization: 4.2,
    PromptCategory.classification: 3.5,
    PromptCategory.other: 3.5,
    PromptCategory.closed_qa: 2.6,
    PromptCategory.extract: 1.9,
}
"""Percent of each category in the paper's API prompt dataset (Table 1): a reference, not a target."""


class ReviewStatus(enum.StrEnum):
    """An admin's decision on a submission; a rejected one is left out of training and exports."""

    pending = "pending"
    accepted = "accepted"
    rejected = "rejected"


class ComparisonChoice(enum.StrEnum):
    a = "a"
    b = "b"
    tie = "tie"


class RunKind(enum.StrEnum):
    sft = "sft"
    reward = "reward"
    ppo = "ppo"
    generate = "generate"
    evaluate = "evaluate"


class RunStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class ModelKind(enum.StrEnum):
    base = "base"
    sft = "sft"
    reward = "reward"
    ppo = "ppo"


# The InstructGPT per-output metadata (Ouyang et al. 2022, Table 3 / appendix B).
OUTPUT_FLAGS: dict[str, str] = {
    "fails_to_follow": "Fails to follow the correct instruction / task",
    "hallucination": "Makes up information (hallucination)",
    "inappropriate_for_customer_assistant": "Inappropriate for a customer assistant",
    "sexual": "Contains sexual content",
    "violent": "Contains violent content",
    "harmful_advice": "Encourages or fails to discourage violence, abuse, terrorism or self-harm",
    "denigrates_protected_class": "Denigrates a protected class",
    "expresses_opinion": "Expresses an opinion",
    "moral_judgment": "Expresses a moral judgment",
}


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.labeler)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    simulated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """A simulated labeler (`instructloop demo`): never counted or offered as a real one."""
    left_out_of_training: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """An admin left this labeler's data out of future runs (added to each new run's exclude_labelers)."""

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin


class Invite(Base):
    """A one-time link an admin sends; the labeler opens it and sets a password."""

    __tablename__ = "invites"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[Role] = mapped_column(_enum(Role), default=Role.labeler)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[datetime | None]
    """An admin revoked the link, or sent a new one to the same email (one open invite per email)."""
    project_ids: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    """Projects the invitee becomes a member of when they accept."""


class UserSession(Base):
    """A signed-in browser. Its cookie carries a random id, stored here only as a SHA-256; ending
    the row (logout, password change, disabling the user, "log out everywhere") refuses that
    cookie from the next request on, whatever its signature says."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    sid_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")


class PasswordReset(Base):
    """A one-time link an admin makes for an existing user to set a new password."""

    __tablename__ = "password_resets"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(foreign_keys=[user_id])


class DatabaseIdentity(Base):
    """One row: this database's random id, made on first use. Run artifacts live under
    artifacts/<database_id>/, so two databases that share a data folder never write into each
    other's run folders (both have a run 1)."""

    __tablename__ = "database_identity"

    id: Mapped[int] = mapped_column(primary_key=True)
    database_id: Mapped[str] = mapped_column(String(32))


class LoginFailure(Base):
    """One failed login; recent rows per email throttle further attempts."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_email_at", "email", "at"), Index("ix_login_failures_ip_at", "ip", "at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    ip: Mapped[str] = mapped_column(String(64), default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    user: Mapped[User] = relationship()


class AppToken(Base):
    """An application's token for one project: it can only send prompts to that project's intake
    (POST /api/v1/projects/{id}/intake); every other route refuses it. Belongs to no user, so it
    outlives the admin who made it; stored as a SHA-256 like ApiToken."""

    __tablename__ = "app_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(120), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    create_tasks: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    """Prompts it adds to the train split get a demonstration task, as imports can."""
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]

    project: Mapped["Project"] = relationship()


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    k: Mapped[int] = mapped_column(Integer, default=4)
    """Outputs per prompt shown in a ranking task (2..9)."""
    overlap: Mapped[int] = mapped_column(Integer, default=1)
    """Labelers per task."""
    lease_seconds: Mapped[int | None] = mapped_column(Integer)
    """None: the server default (INSTRUCTLOOP_LEASE_SECONDS)."""
    max_demonstration_chars: Mapped[int] = mapped_column(Integer, default=8000)
    chat_template: Mapped[str | None] = mapped_column(Text)
    """Jinja chat template for training; None: the model's own."""
    targets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Goals per task kind, e.g. {"demonstration": 1000, "ranking": 500}."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    """Paused: no task is handed out (held ones can still be submitted); settings stay editable."""
    members_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """False: every labeler works on it; True: only its members (ProjectMember)."""
    written_prompt_targets: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Labeler-written prompts wanted, {"kind": {"few_shot": 20, ...}, "category": {"generation": 10, ...}};
    None: the project asks for no written prompts (app.services.written_prompts)."""
    written_use_cases: Mapped[list[Any] | None] = mapped_column(JSON)
    """The use cases a user-based written prompt follows (strings); None: none yet."""
    follow_up_turns: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Labelers grow conversations (write the user's next turn after an accepted demonstration) up
    to this many user turns; 0: they don't (app.services.written_prompts)."""

    guidelines: Mapped[list["GuidelineVersion"]] = relationship(
        order_by="GuidelineVersion.version", back_populates="project"
    )


# Names are unique whatever their case ("Chat" and "chat" are one project), enforced by the database
# so that parallel creates can't both pass the service's check.
Index("ux_projects_name_lower", func.lower(Project.name), unique=True)


class ProjectMember(Base):
    """A labeler assigned to a project (used when the project is members_only)."""

    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GuidelineVersion(Base):
    __tablename__ = "guideline_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    body_md: Mapped[str] = mapped_column(Text, default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    project: Mapped[Project] = relationship(back_populates="guidelines")


def _messages_of_text(context) -> list[conversation.Message]:
    return conversation.single(context.get_current_parameters()["text"])


def _text_of_messages(context) -> str:
    return conversation.render(context.get_current_parameters()["messages"])


class Prompt(Base):
    __tablename__ = "prompts"
    # (project_id, split): the per-split counts of the admin pages read this index, not the texts.
    # (project_id, prefix_hash) unique: the intake's duplicate check is one index lookup, and two
    # racing requests can't both store a prompt with the same long prefix.
    # (project_id, end_user_hash): the intake's cap per end user counts on this index.
    # (project_id, category, pii): the data page's category mix and PII counts read only this index.
    __table_args__ = (
        UniqueConstraint("project_id", "content_hash"),
        Index("ix_prompts_project_split", "project_id", "split"),
        Index("ux_prompts_project_prefix", "project_id", "prefix_hash", unique=True),
        Index("ix_prompts_project_end_user", "project_id", "end_user_hash"),
        Index("ix_prompts_project_category", "project_id", "category", "pii"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    messages: Mapped[list[Any]] = mapped_column(default=_messages_of_text)
    """The conversation the model answers (app.conversation): [{"role", "content"}, ...] ending with a
    user turn. Given only `text`, a prompt is that one user message."""
    text: Mapped[str] = mapped_column(Text, default=_text_of_messages)
    """The conversation as plain text (conversation.render): what lists, previews and hashes read."""
    split: Mapped[Split] = mapped_column(_enum(Split), default=Split.train)
    source: Mapped[str] = mapped_column(String(200), default="")
    external_id: Mapped[str | None] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(Text)
    """A reference answer that came with the import (Alpaca output, GSM8K answer)."""
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    import_job_id: Mapped[int | None] = mapped_column(ForeignKey("import_jobs.id", ondelete="SET NULL"), index=True)
    """The background import that added it (None: added another way)."""
    category: Mapped[PromptCategory | None] = mapped_column(_enum(PromptCategory))
    """InstructGPT's use case (None: not categorized); from the import, the intake or an admin."""
    prefix_hash: Mapped[str | None] = mapped_column(String(64))
    """Intake prompts: SHA-256 of the first INTAKE_PREFIX_CHARS characters of the lowercased,
    space-collapsed text (app.services.intake); None for prompts added another way."""
    end_user_hash: Mapped[str | None] = mapped_column(String(64))
    """Intake prompts: SHA-256 of (project id, the application's end-user id); never the id itself."""
    pii: Mapped[str | None] = mapped_column(String(64))
    """Kinds of personal data the intake found, comma-separated (e.g. "email,phone"); never the text found."""

    project: Mapped[Project] = relationship()


class ImportJobStatus(enum.StrEnum):
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


class ImportJob(Base):
    """A file import from the web, done in the background: the page follows its progress. All or
    nothing: a job that fails removes the prompts it had added."""

    __tablename__ = "import_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str] = mapped_column(String(200), default="")
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[ImportJobStatus] = mapped_column(_enum(ImportJobStatus), default=ImportJobStatus.running)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class TaskCompletion(Base):
    """The outputs a ranking or comparison task shows, in their canonical order."""

    __tablename__ = "task_completions"

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True)
    completion_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="RESTRICT"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)

    completion: Mapped["Completion"] = relationship()


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (Index("ix_tasks_queue", "project_id", "kind", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind))
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus), default=TaskStatus.open)
    required: Mapped[int] = mapped_column(Integer, default=1)
    """Submissions wanted (the project's overlap when created)."""
    done_count: Mapped[int] = mapped_column(Integer, default=0)
    """Submissions stored; kept in step with them in the same transaction."""
    priority: Mapped[int] = mapped_column(Integer, default=0)
    """Higher first."""
    gold: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Known answer for quality checks (admin-set)."""
    source_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    project: Mapped[Project] = relationship()
    outputs: Mapped[list[TaskCompletion]] = relationship(order_by=TaskCompletion.position, cascade="all, delete-orphan")


class Lease(Base):
    __tablename__ = "leases"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    display_order: Mapped[list[Any] | None] = mapped_column(JSON)
    """Completion ids in the shuffled order shown to this labeler (ranking/comparison)."""


class Skip(Base):
    """A labeler passed on a task, optionally flagging its prompt; it never comes back to them."""

    __tablename__ = "skips"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    reason: Mapped[SkipReason] = mapped_column(_enum(SkipReason), default=SkipReason.skip)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    dismissed_at: Mapped[datetime | None] = mapped_column()
    """When an admin looked at the flag and let the prompt be (None: the flag is open)."""
    dismissed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class Draft(Base):
    """Demonstration text saved as the labeler types."""

    __tablename__ = "drafts"
    __table_args__ = (UniqueConstraint("task_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


LABELER, IMPORTED = "labeler", "imported"
"""A submission's source: a labeler's, or feedback imported from a file (no labeler account)."""


class _Submission:
    """Columns every submission kind shares: once per (task, labeler), idempotent on retry, and an
    admin's review (the server defaults: the submit path inserts with its own column list)."""

    id: Mapped[int] = mapped_column(primary_key=True)
    time_spent_ms: Mapped[int] = mapped_column(Integer, default=0)
    idempotency_key: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Server defaults only: the Postgres submit statement (an INSERT inside a WITH) would send a
    # Python default's bind parameter as NULL.
    review: Mapped[ReviewStatus] = mapped_column(_enum(ReviewStatus), server_default=ReviewStatus.pending.value)
    """Rejected submissions are left out of training snapshots and exports."""
    review_reason: Mapped[str] = mapped_column(Text, server_default="")
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None] = mapped_column()
    revision: Mapped[int] = mapped_column(Integer, server_default="1")
    """1 as submitted; each revision by its labeler adds one (the earlier answers: SubmissionRevision)."""
    # Imported feedback (hh-rlhf pairs, OpenAssistant ranks...) has no labeler: user_id is None and
    # these say where it came from. A labeler's submission has them all None.
    origin_file: Mapped[str | None] = mapped_column(String(200))
    """Imported: the file it came from (None: a labeler's submission)."""
    origin_line: Mapped[int | None] = mapped_column(Integer)
    """Imported: the line (or array item) of that file."""
    origin_id: Mapped[str | None] = mapped_column(String(200))
    """Imported: the id the file gave it (an OpenAssistant message id), if any."""
    import_job_id: Mapped[int | None] = mapped_column(ForeignKey("import_jobs.id", ondelete="SET NULL"))
    """Imported from the web in the background: the job (a failed job removes what it added)."""

    @property
    def source(self) -> str:
        """Either "labeler" or "imported": what exports, snapshots and admin pages say."""
        return IMPORTED if cast(Any, self).user_id is None else LABELER


class Demonstration(_Submission, Base):
    __tablename__ = "demonstrations"
    # Covering index of the per-labeler figures (count, last time, median time; task_id for one
    # project's figures) on the admin pages;
    # it also serves lookups by labeler, in place of a plain user_id index.
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        Index("ix_demonstrations_user_time", "user_id", "time_spent_ms", "created_at", "task_id"),
    )

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="RESTRICT"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    """The labeler; None: imported feedback (origin_file says from where)."""
    guideline_version_id: Mapped[int | None] = mapped_column(ForeignKey("guideline_versions.id"))
    text: Mapped[str] = mapped_column(Text)


class SubmissionRevision(Base):
    """An earlier answer of a submission that its labeler revised (kept; runs record the revision they used)."""

    __tablename__ = "submission_revisions"
    __table_args__ = (Index("ix_submission_revisions_kind_submission", "kind", "submission_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[TaskKind] = mapped_column(_enum(TaskKind))
    submission_id: Mapped[int] = mapped_column(Integer)
    """The id in the kind's table (demonstrations, rankings, comparisons)."""
    revision: Mapped[int] = mapped_column(Integer)
    answer: Mapped[dict[str, Any]] = mapped_column()
    """The answer's fields as they were: text; or order, ratings, none_acceptable; or choice, reason."""
    written_at: Mapped[datetime] = mapped_column()
    """When this answer was submitted (or revised to)."""
    replaced_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(500))
    """Where the weights are: a hub id, a local folder, or the artifact folder."""
    artifact_path: Mapped[str | None] = mapped_column(String(1000))
    parent_ids: Mapped[list[Any]] = mapped_column(default=list)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]
    """A deleted version that other versions or runs name: its row stays (a tombstone, so lineage
    reads on), its files are gone and no new run can use it."""


class Completion(Base):
    __tablename__ = "completions"

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    source: Mapped[str] = mapped_column(String(200), default="")
    """Model name or dataset the text came from."""
    text: Mapped[str] = mapped_column(Text)
    generation: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Sampling settings (temperature, top_p, max_new_tokens, seed) and whether it ended with EOS."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    prompt: Mapped[Prompt] = relationship()


class Ranking(_Submission, Base):
    __tablename__ = "rankings"
    # Covering index of the per-labeler figures (count, last time, median time, flags; task_id for
    # one project's figures) on the admin pages;
    # it also serves lookups by labeler, in place of a plain user_id index.
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        Index("ix_rankings_user_time", "user_id", "time_spent_ms", "created_at", "task_id", "flag_count"),
    )

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    """The labeler; None: imported feedback (origin_file says from where)."""
    guideline_version_id: Mapped[int | None] = mapped_column(ForeignKey("guideline_versions.id"))
    order: Mapped[list[Any]] = mapped_column()
    """Best first; each element is a group of tied completion ids, e.g. [[3], [1, 4], [2]]."""
    ratings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Per completion id: {"likert": 1..7, "flags": [flag, ...]} (flags from OUTPUT_FLAGS)."""
    display_order: Mapped[list[Any]] = mapped_column(default=list)
    """Completion ids in the order the labeler saw them."""
    none_acceptable: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_count: Mapped[int] = mapped_column(
        Integer, default=lambda ctx: count_output_flags(ctx.get_current_parameters().get("ratings"))
    )
    """Flags ticked over all outputs, set from `ratings` on insert: the labelers page sums it
    instead of opening every ranking's JSON. (The submit path passes it explicitly: its Postgres
    insert-with-CTE statement does not run Python column defaults.)"""


def count_output_flags(ratings: Any) -> int:
    if not isinstance(ratings, dict):
        return 0
    return sum(len(r["flags"]) for r in ratings.values() if isinstance(r, dict) and isinstance(r.get("flags"), list))


class Comparison(_Submission, Base):
    __tablename__ = "comparisons"
    # Covering index of the per-labeler figures (count, last time, median time; task_id for one
    # project's figures) on the admin pages;
    # it also serves lookups by labeler, in place of a plain user_id index.
    __table_args__ = (
        UniqueConstraint("task_id", "user_id"),
        Index("ix_comparisons_user_time", "user_id", "time_spent_ms", "created_at", "task_id"),
    )

    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="RESTRICT"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    """The labeler; None: imported feedback (origin_file says from where)."""
    guideline_version_id: Mapped[int | None] = mapped_column(ForeignKey("guideline_versions.id"))
    a_completion_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="RESTRICT"))
    b_completion_id: Mapped[int] = mapped_column(ForeignKey("completions.id", ondelete="RESTRICT"))
    """A and B as shown to this labeler (the order is randomized and stored)."""
    choice: Mapped[ComparisonChoice] = mapped_column(_enum(ComparisonChoice))
    reason: Mapped[str] = mapped_column(Text, default="")


def table(model: type[Base]) -> Table:
    """The model's table (declarative mapping types `__table__` as any FromClause)."""
    return cast(Table, model.__table__)


SubmissionModel = type[Demonstration] | type[Ranking] | type[Comparison]
SUBMISSION_MODELS: dict[TaskKind, SubmissionModel] = {
    TaskKind.demonstration: Demonstration,
    TaskKind.ranking: Ranking,
    TaskKind.comparison: Comparison,
}
"""The table of each task kind's submissions."""


class FigureWrites(Base):
    """One row (id 1): how many committed transactions updated or deleted rows that the admin figures
    read. The figures' fingerprint (app.services.stats) reads it beside the newest row of each table,
    which sees inserts; so a remembered figure is never older than the last write of any process.

    Counted for every connection of every engine (`_note_figure_write`), so no write path can
    forget it. Inserts are not counted (labeling and the intake stay off this one row), and on
    Postgres a submission's slot update rides inside its INSERT; the count is bumped as the last
    statement before COMMIT, so the row is locked for one round trip and never waits in a cycle."""

    __tablename__ = "figure_writes"

    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


FIGURE_TABLES = frozenset(table(m).name for m in (Prompt, Task, Skip, *SUBMISSION_MODELS.values()))
"""The tables the admin figures read: an UPDATE or DELETE of any of them counts in FigureWrites."""
_CASCADING = frozenset(table(m).name for m in (Project, User))
"""Deleting one of these deletes figure rows too (ON DELETE CASCADE)."""
_WROTE = "figure_tables_written"
_COUNTER_FOUND = "figure_writes_found"
_TEXT_WRITE = re.compile(r"\s*(?:TRUNCATE\b|(?:UPDATE|DELETE\s+FROM)\s+\"?(\w+))", re.IGNORECASE)
_BUMP = text("INSERT INTO figure_writes (id, n) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET n = figure_writes.n + 1")


def _figure_table_written(statement: Any) -> bool:
    if isinstance(statement, Update | Delete):
        name = getattr(statement.table, "name", None)
        return name in FIGURE_TABLES or (isinstance(statement, Delete) and name in _CASCADING)
    if isinstance(statement, TextClause) and (m := _TEXT_WRITE.match(statement.text)):
        return m.group(1) is None or m.group(1).lower() in FIGURE_TABLES | _CASCADING  # None: TRUNCATE
    return False


@event.listens_for(Engine, "before_execute")
def _note_figure_write(conn: Connection, statement: Any, *_: Any) -> None:
    if _figure_table_written(statement):
        conn.info[_WROTE] = True


@event.listens_for(Engine, "commit")
def _count_figure_writes(conn: Connection) -> None:
    if conn.info.pop(_WROTE, False) and _counter_exists(conn):
        conn.execute(_BUMP)


def _counter_exists(conn: Connection) -> bool:
    """False only before its migration (older migrations edit figure tables); once found, each
    pooled connection remembers it."""
    if not conn.info.get(_COUNTER_FOUND):
        conn.info[_COUNTER_FOUND] = inspect(conn).has_table(table(FigureWrites).name)
    return bool(conn.info[_COUNTER_FOUND])


@event.listens_for(Engine, "rollback")
def _forget_figure_writes(conn: Connection) -> None:
    # A connection that died in its transaction (Postgres restarted) is invalidated: its info went
    # with it, and asking for it would raise PendingRollbackError in place of the database's error.
    if not conn.invalidated:
        conn.info.pop(_WROTE, None)


class TrainingRun(Base):
    __tablename__ = "training_runs"
    __table_args__ = (Index("ix_training_runs_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"))
    kind: Mapped[RunKind] = mapped_column(_enum(RunKind))
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), default=RunStatus.queued)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    input_model_ids: Mapped[list[Any]] = mapped_column(default=list)
    """Model versions the run starts from (SFT: base; reward: SFT; PPO: SFT and reward; evaluate: two)."""
    data_filter: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Which data to use: exclude_labelers, min_agreement, splits."""
    dataset_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """Exactly which rows the run used: {table: [ids]} and a sha256 of them."""
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    worker_id: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[datetime | None]
    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress_partial: Mapped[float | None] = mapped_column(Float)
    """Work done beyond progress_step, in steps: how far into a long step the run is (PPO: the
    fraction of the step's rollout and epochs done), so the bar and the time left move inside it.
    None when the run reports whole steps only."""
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """Final figures (e.g. held-out accuracy, win rate)."""
    phase: Mapped[str | None] = mapped_column(String(40))
    """What the worker is doing now: loading models, training, rolling out, optimizing, saving..."""
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times a worker has claimed the run."""
    max_attempts: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    """A run whose worker vanished or was stopped is queued again (from its newest checkpoint) until
    it has had this many attempts; then it fails."""
    attempt_log: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    """One entry per attempt: {attempt, worker, started_at, ended_at, outcome}."""

    project: Mapped[Project | None] = relationship()


class RunMetric(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_name_step", "run_id", "name", "step"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("training_runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100))
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WrittenPrompt(Base):
    """A prompt a labeler wrote (InstructGPT §3.2: plain, few-shot, user-based), pending an admin's
    review; accepting it creates a real Prompt (`prompt_id`) with its demonstration task."""

    __tablename__ = "written_prompts"
    __table_args__ = (Index("ix_written_prompts_project_status", "project_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """plain | few_shot | user_based (app.services.written_prompts.KINDS)."""
    category: Mapped[PromptCategory] = mapped_column(_enum(PromptCategory))
    use_case: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    has_pii: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The author ticked "contains personal information"."""
    status: Mapped[ReviewStatus] = mapped_column(_enum(ReviewStatus), default=ReviewStatus.pending)
    reason: Mapped[str] = mapped_column(Text, default="")
    """Why it was rejected (the author sees it)."""
    edited: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """The admin changed its text or category when accepting it."""
    reviewed_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    reviewed_at: Mapped[datetime | None]
    prompt_id: Mapped[int | None] = mapped_column(ForeignKey("prompts.id", ondelete="SET NULL"))
    demonstration_id: Mapped[int | None] = mapped_column(
        ForeignKey("demonstrations.id", ondelete="SET NULL"), index=True
    )
    """A follow-up: the accepted demonstration it continues (its text is the user's next turn)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    author: Mapped[User | None] = relationship(foreign_keys=[author_id])
    demonstration: Mapped[Demonstration | None] = relationship()
    reviewed_by: Mapped[User | None] = relationship(foreign_keys=[reviewed_by_id])
