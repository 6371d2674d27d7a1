"""JSON API for projects, prompts (bulk) and exports (bearer tokens), for admins: labelers see
what their pages show them through the labeling API (/work, next, submission, skip).

    GET  /api/v1/projects                          projects
    POST /api/v1/projects                          admin: create               201 | 409 name taken
    GET  /api/v1/projects/{id}                     a project with its counts and current guidelines
    PATCH /api/v1/projects/{id}                    admin: change settings
    POST /api/v1/projects/{id}/archive | unarchive admin: hide from labelers, read-only (or back)
    DELETE /api/v1/projects/{id}/imports/{job}      admin: delete a file import (409 once labeled)
    PUT  /api/v1/projects/{id}/members             admin: every labeler, or only these members
    POST /api/v1/projects/{id}/pause | resume      admin: hand out no task (or again)
    PUT  /api/v1/projects/{id}/guidelines          admin: save a new guidelines version
    GET  /api/v1/projects/{id}/prompts?split&category&pii&after&limit
    POST /api/v1/projects/{id}/prompts             admin: bulk (texts or conversations), all or nothing
                                                   201 | 422 with line numbers
    PATCH /api/v1/projects/{id}/prompts/{prompt}   admin: set a prompt's category
    GET  /api/v1/projects/{id}/exports/{kind}      admin: JSON Lines (sft, preferences, rankings)

Thin handlers: the rules live in app.services.projects, imports and exports."""

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, model_validator

from app import conversation
from app.deps import ApiAdmin, SessionDep, SessionRoute, SettingsDep
from app.models import Project, PromptCategory, Split
from app.services import exports, imports, projects, stats, tasks
from app.web.api_conversation import LAST_USER_TURN, MESSAGES, ChatMessage, messages_out
from app.web.params import DB_INT_MAX, Id, IdPath

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["projects"])
MAX_BULK = 10_000


class ProjectIn(BaseModel):
    name: str
    description: str = ""
    k: int = Field(4, description="Outputs per prompt in ranking tasks (2..9).")
    overlap: int = Field(1, description="Labelers per task (1..50; more than there are labelers makes tasks wait).")
    lease_seconds: int | None = Field(None, description="How long a labeler holds a task; null: the server default.")
    targets: dict[str, int] = Field(
        default_factory=dict, description='Submissions wanted per kind, e.g. {"ranking": 500}.'
    )
    guidelines: str = Field("", description="Markdown; saved as guidelines version 1.")


class ProjectPatch(BaseModel):
    """Only the fields sent change. `lease_seconds: null` means the server default; the other
    fields can't be null (leave one out to keep its value)."""

    name: str | None = None
    description: str | None = None
    k: int | None = None
    overlap: int | None = None
    lease_seconds: int | None = None
    targets: dict[str, int] | None = None

    @model_validator(mode="after")
    def _no_null_but_lease(self) -> "ProjectPatch":
        nulls = [name for name in sorted(self.model_fields_set - {"lease_seconds"}) if getattr(self, name) is None]
        if nulls:
            raise ValueError(f"{', '.join(nulls)} can't be null; leave a field out to keep its current value")
        return self


class ProjectOut(BaseModel):
    id: int
    name: str
    description: str
    k: int
    overlap: int
    lease_seconds: int | None
    targets: dict[str, Any]
    created_at: datetime
    archived_at: datetime | None = Field(None, description="Archived: hidden from labelers, read-only, exportable.")
    paused_at: datetime | None = Field(None, description="Paused: no task is handed out until resumed.")
    members_only: bool = Field(False, description="Only its members label it (PUT .../members).")
    guidelines_version: int | None = None
    guidelines: str | None = None
    counts: dict[str, Any] | None = None


class GuidelinesIn(BaseModel):
    body_md: str


class PromptIn(BaseModel):
    """A prompt as a text (one user turn) or as a conversation (`messages`): exactly one of the two."""

    text: str | None = Field(None, description="The prompt as one user turn.")
    messages: list[ChatMessage] | None = Field(
        None,
        description=MESSAGES + " Checked like an import's: a malformed conversation is a bad item (422).",
        examples=[
            [
                {"role": "user", "content": "Plan a day in Lisbon."},
                {"role": "assistant", "content": "Morning: Belém. Afternoon: Alfama."},
                {"role": "user", "content": "Make it rain-proof."},
            ]
        ],
    )
    reference: str | None = Field(None, description="A reference answer (the next assistant turn), if known.")
    split: Split | None = Field(None, description="Omit to assign one from the prompt's hash (reproducible).")
    external_id: str | None = None
    category: PromptCategory | None = Field(None, description="InstructGPT's use-case category, if known.")
    chosen: str | None = Field(None, description="With `rejected`: a preference pair, imported as a comparison.")
    rejected: str | None = Field(None, description="The answer `chosen` was preferred to.")

    @model_validator(mode="after")
    def _text_or_messages(self) -> "PromptIn":
        if (self.text is None) == (self.messages is None):
            raise ValueError("send exactly one of text and messages")
        if (self.chosen is None) != (self.rejected is None):
            raise ValueError("send both chosen and rejected, or neither")
        return self

    def as_object(self) -> dict[str, Any]:
        """The item as the importer reads an object (imports.preview_objects)."""
        obj = self.model_dump(exclude_none=True, mode="json")
        if "text" in obj:
            obj["prompt"] = obj.pop("text")
        if "external_id" in obj:
            obj["id"] = obj.pop("external_id")
        if "chosen" in obj and "messages" in obj:  # TRL's preference format: the prompt is the conversation
            obj["prompt"] = obj.pop("messages")
        return obj


class PromptsIn(BaseModel):
    prompts: list[PromptIn] = Field(max_length=MAX_BULK)
    valid_fraction: float = 0.1
    test_fraction: float = 0.1
    create_tasks: bool = Field(False, description="Create a demonstration task for each new train prompt.")
    feedback: bool = Field(True, description="Import the items' feedback (chosen/rejected pairs); false: prompts only.")
    answers_as_demonstrations: bool = Field(
        False, description="Each item's reference becomes an imported demonstration (no labeler)."
    )


class PromptOut(BaseModel):
    id: int
    text: str = Field(description=LAST_USER_TURN)
    messages: list[ChatMessage] = Field(description=MESSAGES)
    split: Split
    reference: str | None
    external_id: str | None
    source: str
    category: PromptCategory | None = None
    pii: list[str] = Field(default_factory=list, description="Kinds of personal data the intake found.")


class PromptPatch(BaseModel):
    category: PromptCategory | None = Field(description="The prompt's use-case category; null: uncategorized.")


def _prompt_out(p) -> PromptOut:
    return PromptOut(
        id=p.id,
        text=conversation.last_user_turn(p.messages),
        messages=messages_out(p.messages),
        split=p.split,
        reference=p.reference,
        external_id=p.external_id,
        source=p.source,
        category=p.category,
        pii=p.pii.split(",") if p.pii else [],
    )


class ImportOut(BaseModel):
    imported: int
    prompt_ids: list[int]
    splits: dict[str, int]
    duplicates: list[list[int]] = Field(
        description="[item, first item with the same prompt] (1-based), skipped: same text, or same conversation."
    )
    existing: list[int] = Field(description="Items whose prompt the project already has (1-based), skipped.")
    tasks_created: int
    feedback: dict[str, int] = Field(
        default_factory=dict,
        description="Imported submissions (no labeler) written, per kind: comparison, demonstration.",
    )


def _out(session, project: Project, detail: bool = False) -> ProjectOut:
    out = ProjectOut(
        id=project.id,
        name=project.name,
        description=project.description,
        k=project.k,
        overlap=project.overlap,
        lease_seconds=project.lease_seconds,
        targets=project.targets or {},
        created_at=project.created_at,
        archived_at=project.archived_at,
        paused_at=project.paused_at,
        members_only=project.members_only,
    )
    if detail:
        g = projects.current_guidelines(session, project.id)
        out.guidelines_version, out.guidelines = (g.version, g.body_md) if g else (None, None)
        out.counts = stats.project_summary(session, project.id)
    return out


@router.get("/projects", response_model=list[ProjectOut])
def list_projects(session: SessionDep, user: ApiAdmin):
    return [_out(session, row.project) for row in projects.list_projects(session)]


@router.post("/projects", response_model=ProjectOut, status_code=201)
def create_project(body: ProjectIn, session: SessionDep, user: ApiAdmin):
    settings = projects.ProjectSettings(
        name=body.name,
        description=body.description,
        k=body.k,
        overlap=body.overlap,
        lease_seconds=body.lease_seconds,
        targets=body.targets,
    )
    project = projects.create_project(session, settings, guidelines_md=body.guidelines, created_by=user)
    return _out(session, project, detail=True)


@router.get("/projects/{project_id}", response_model=ProjectOut)
def read_project(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _out(session, projects.get_project(session, project_id), detail=True)


class ProjectDeletedOut(BaseModel):
    prompts: int
    tasks: int


@router.delete("/projects/{project_id}", response_model=ProjectDeletedOut)
def delete_project(project_id: IdPath, session: SessionDep, settings: SettingsDep, user: ApiAdmin):
    """Deletes a project with its prompts and tasks (its runs and models stay); 409 once labelers
    made submissions in it (archive it instead)."""
    gone = projects.delete_project(session, project_id, data_dir=settings.data_dir)
    return ProjectDeletedOut(prompts=gone.prompts, tasks=gone.tasks)


@router.delete("/projects/{project_id}/prompts/{prompt_id}")
def delete_prompt(project_id: IdPath, prompt_id: IdPath, session: SessionDep, user: ApiAdmin) -> dict[str, int]:
    """Deletes a prompt with its tasks and model outputs; 409 once a labeler answered one of them."""
    return {"tasks_deleted": tasks.delete_prompt(session, project_id, prompt_id)}


@router.delete("/tasks/{task_id}", status_code=204)
def delete_task(task_id: IdPath, session: SessionDep, user: ApiAdmin) -> None:
    """Deletes a task nobody has answered; 409 once answered (retire it instead)."""
    tasks.delete_task(session, task_id)


@router.post("/projects/{project_id}/archive", response_model=ProjectOut)
def archive_project(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _out(session, projects.set_archived(session, project_id, True))


class MembersIn(BaseModel):
    members_only: bool = Field(description="True: only these users label the project; False: every labeler.")
    user_ids: list[Id] = Field(default_factory=list, max_length=10_000)


class MembersOut(BaseModel):
    members_only: bool
    user_ids: list[int]


@router.put("/projects/{project_id}/members", response_model=MembersOut)
def set_members(project_id: IdPath, body: MembersIn, session: SessionDep, user: ApiAdmin):
    project = projects.set_members(session, project_id, body.members_only, body.user_ids)
    return MembersOut(members_only=project.members_only, user_ids=projects.member_ids(session, project_id))


@router.post("/projects/{project_id}/pause", response_model=ProjectOut)
def pause_project(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _out(session, projects.set_paused(session, project_id, True))


@router.post("/projects/{project_id}/resume", response_model=ProjectOut)
def resume_project(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _out(session, projects.set_paused(session, project_id, False))


@router.post("/projects/{project_id}/unarchive", response_model=ProjectOut)
def unarchive_project(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _out(session, projects.set_archived(session, project_id, False))


class ImportDeletedOut(BaseModel):
    prompts: int
    tasks: int
    completions: int


@router.delete("/projects/{project_id}/imports/{job_id}", response_model=ImportDeletedOut)
def delete_import(project_id: IdPath, job_id: IdPath, session: SessionDep, user: ApiAdmin):
    """Deletes a file import (its prompts, their tasks and model outputs); 409 when labelers made
    submissions on them (never deleted silently)."""
    gone = imports.delete_import(session, project_id, job_id)
    return ImportDeletedOut(prompts=gone.prompts, tasks=gone.tasks, completions=gone.completions)


@router.patch("/projects/{project_id}", response_model=ProjectOut)
def update_project(project_id: IdPath, body: ProjectPatch, session: SessionDep, user: ApiAdmin):
    p = projects.get_project(session, project_id)
    given = body.model_dump(exclude_unset=True)
    settings = projects.ProjectSettings(
        name=given.get("name", p.name),
        description=given.get("description", p.description),
        k=given.get("k", p.k),
        overlap=given.get("overlap", p.overlap),
        lease_seconds=given.get("lease_seconds", p.lease_seconds),
        targets=given.get("targets", p.targets),
    )
    return _out(session, projects.update_project(session, p, settings), detail=True)


@router.put("/projects/{project_id}/guidelines", response_model=ProjectOut)
def save_guidelines(project_id: IdPath, body: GuidelinesIn, session: SessionDep, user: ApiAdmin):
    p = projects.get_project(session, project_id)
    projects.save_guidelines(session, p, body.body_md, created_by=user)
    return _out(session, p, detail=True)


@router.get("/projects/{project_id}/prompts", response_model=list[PromptOut])
def list_prompts(
    project_id: IdPath,
    session: SessionDep,
    user: ApiAdmin,
    split: Split | None = None,
    category: PromptCategory | None = None,
    pii: bool = Query(False, description="Only prompts the intake flagged for personal data."),
    after: int = Query(0, ge=0, le=DB_INT_MAX, description="Return prompts with an id above this (keyset paging)."),
    limit: int = Query(100, ge=1, le=1000),
):
    found = projects.list_prompts(
        session, project_id, split=split, category=category, pii=pii, after=after, limit=limit
    )
    return [_prompt_out(p) for p in found]


@router.patch("/projects/{project_id}/prompts/{prompt_id}", response_model=PromptOut)
def update_prompt(project_id: IdPath, prompt_id: IdPath, body: PromptPatch, session: SessionDep, user: ApiAdmin):
    return _prompt_out(projects.set_category(session, project_id, prompt_id, body.category))


@router.post("/projects/{project_id}/prompts", response_model=ImportOut, status_code=201)
def add_prompts(project_id: IdPath, body: PromptsIn, session: SessionDep, user: ApiAdmin):
    """Each item is a text or a conversation (`messages`). All or nothing: one bad item refuses the
    request (422) with every bad item's number and its problem."""
    p = projects.get_project(session, project_id)
    objects = [item.as_object() for item in body.prompts]
    preview = imports.preview_objects(
        session,
        p,
        objects,
        valid_fraction=body.valid_fraction,
        test_fraction=body.test_fraction,
        feedback=body.feedback,
        answers_as_demonstrations=body.answers_as_demonstrations,
    )
    if preview.errors:
        return JSONResponse(
            status_code=422,
            content={
                "detail": f"Nothing was imported: {len(preview.errors)} item(s) are not valid prompts.",
                "errors": [{"item": e.line, "msg": e.message} for e in preview.errors[: imports.MAX_ERRORS_SHOWN]],
            },
        )
    result = imports.commit(session, p, preview, source="api", create_tasks=body.create_tasks)
    return ImportOut(
        imported=len(result.prompts),
        prompt_ids=[x.id for x in result.prompts],
        splits=preview.split_counts,
        duplicates=[list(d) for d in preview.duplicates],
        existing=preview.existing,
        tasks_created=result.tasks_created,
        feedback=result.feedback,
    )


@router.get("/projects/{project_id}/exports/{kind}")
def export(
    project_id: IdPath,
    kind: str,
    request: Request,
    session: SessionDep,
    user: ApiAdmin,
    split: list[str] = Query(default=[], description="Splits to export (repeat); default: train only."),
    exclude_labelers: list[Id] = Query(default=[]),
    format: str = Query("plain", description="plain (strings) or conversational (chat messages, as TRL reads them)."),
):
    p = projects.get_project(session, project_id)
    f = exports.ExportFilter(p.id, split, exclude_labelers, format)
    exports.check(session, kind, f)
    return StreamingResponse(
        exports.stream_lines(request.app.state.engine, kind, f),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{exports.filename(p, kind, f)}"'},
    )
