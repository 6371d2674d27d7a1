"""JSON API for labeler-written prompts (rules in app.services.written_prompts).

POST /api/v1/projects/{id}/written-prompts            a labeler writes one: {kind, text, category, use_case, has_pii}
GET  /api/v1/projects/{id}/written-prompts/mine       the caller's written prompts and their review status
GET  /api/v1/projects/{id}/written-prompts?status     admins: the project's written prompts (default pending)
POST /api/v1/projects/{id}/written-prompts/{wid}/accept   admins: {text?, category?} (edited when given)
POST /api/v1/projects/{id}/written-prompts/{wid}/reject   admins: {reason}
PUT  /api/v1/projects/{id}/written-prompt-settings    admins: {targets: {kind: {...}, category: {...}}, use_cases: [...]}"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app import conversation
from app.deps import ApiAdmin, ApiUser, SessionDep, SessionRoute
from app.models import WrittenPrompt
from app.services import written_prompts
from app.web.api_conversation import MESSAGES, ChatMessage, messages_out
from app.web.params import IdPath

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["written prompts"])


class WriteIn(BaseModel):
    kind: str = Field(description="plain | few_shot | user_based")
    text: str
    category: str = Field(description="A PromptCategory value, e.g. generation, open_qa, brainstorming.")
    use_case: str | None = Field(None, description="User-based prompts: one of the project's use cases.")
    has_pii: bool = False


class WrittenOut(BaseModel):
    id: int
    project_id: int
    kind: str = Field(description="plain | few_shot | user_based | follow_up (the user's next turn of a conversation)")
    category: str
    use_case: str | None
    text: str = Field(description="What the labeler wrote: the prompt's last user turn.")
    messages: list[ChatMessage] = Field(
        description=MESSAGES + " A follow-up: the thread it continues (the accepted demonstration as the assistant's "
        "turn), then `text`; any other kind (or a follow-up whose demonstration was deleted): `text` alone."
    )
    demonstration_id: int | None = Field(None, description="A follow-up: the accepted demonstration it continues.")
    has_pii: bool
    author: str | None
    status: str
    reason: str
    edited: bool
    reviewed_by: str | None
    reviewed_at: datetime | None
    prompt_id: int | None
    near_duplicate_of: int | None = Field(None, description="Pending ones: an existing prompt starting the same way.")
    created_at: datetime


class AcceptIn(BaseModel):
    text: str | None = None
    category: str | None = None


class RejectIn(BaseModel):
    reason: str


class SettingsIn(BaseModel):
    targets: dict[str, dict[str, int]] = Field(default_factory=dict)
    use_cases: list[str] = Field(default_factory=list)


class SettingsOut(BaseModel):
    targets: dict[str, dict[str, int]]
    use_cases: list[str]


def _out(row: WrittenPrompt, thread: list[conversation.Message] | None, near: int | None = None) -> WrittenOut:
    """`thread`: what a follow-up continues (written_prompts.follow_up_threads); None for the others."""
    return WrittenOut(
        id=row.id,
        project_id=row.project_id,
        kind=row.kind,
        category=row.category.value,
        use_case=row.use_case,
        text=row.text,
        messages=messages_out([*(thread or []), *conversation.single(row.text)]),
        demonstration_id=row.demonstration_id,
        has_pii=row.has_pii,
        author=row.author.email if row.author else None,
        status=row.status.value,
        reason=row.reason,
        edited=row.edited,
        reviewed_by=row.reviewed_by.email if row.reviewed_by else None,
        reviewed_at=row.reviewed_at,
        prompt_id=row.prompt_id,
        near_duplicate_of=near,
        created_at=row.created_at,
    )


def _one(session, row: WrittenPrompt) -> WrittenOut:
    return _out(row, written_prompts.follow_up_threads(session, [row]).get(row.id))


@router.post("/projects/{project_id}/written-prompts", response_model=WrittenOut, status_code=201)
def write(body: WriteIn, session: SessionDep, user: ApiUser, project_id: IdPath):
    row = written_prompts.write(
        session,
        user,
        project_id,
        kind=body.kind,
        text=body.text,
        category=body.category,
        use_case=body.use_case,
        has_pii=body.has_pii,
    )
    return _one(session, row)


@router.get("/projects/{project_id}/written-prompts/mine", response_model=list[WrittenOut])
def mine(session: SessionDep, user: ApiUser, project_id: IdPath):
    rows = written_prompts.own(session, user, project_id)
    threads = written_prompts.follow_up_threads(session, rows)
    return [_out(r, threads.get(r.id)) for r in rows]


@router.get("/projects/{project_id}/written-prompts", response_model=list[WrittenOut])
def listing(
    session: SessionDep,
    user: ApiAdmin,
    project_id: IdPath,
    status: Annotated[Literal["pending", "accepted", "rejected"], Query()] = "pending",
):
    rows = written_prompts.listing(session, project_id, status)
    near = written_prompts.near_duplicates(session, project_id, rows) if status == "pending" else {}
    threads = written_prompts.follow_up_threads(session, rows)
    return [_out(r, threads.get(r.id), near.get(r.id)) for r in rows]


@router.post("/projects/{project_id}/written-prompts/{written_id}/accept", response_model=WrittenOut)
def accept(body: AcceptIn, session: SessionDep, user: ApiAdmin, project_id: IdPath, written_id: IdPath):
    row = written_prompts.accept(session, user, project_id, written_id, text=body.text, category=body.category)
    return _one(session, row)


@router.post("/projects/{project_id}/written-prompts/{written_id}/reject", response_model=WrittenOut)
def reject(body: RejectIn, session: SessionDep, user: ApiAdmin, project_id: IdPath, written_id: IdPath):
    return _one(session, written_prompts.reject(session, user, project_id, written_id, body.reason))


@router.put("/projects/{project_id}/written-prompt-settings", response_model=SettingsOut)
def settings(body: SettingsIn, session: SessionDep, user: ApiAdmin, project_id: IdPath):
    project = written_prompts.set_settings(session, project_id, targets=body.targets, cases=body.use_cases)
    return SettingsOut(targets=project.written_prompt_targets or {}, use_cases=written_prompts.use_cases(project))
