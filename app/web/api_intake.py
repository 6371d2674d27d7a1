"""The intake API: an application sends its users' prompts with an app token, and admins make and
revoke those tokens.

    POST   /api/v1/projects/{id}/intake                 app token: one prompt, a text or a
                                                         conversation (201 created | 200
                                                         duplicate or dropped | 429 cap or rate)
                                                         or {"prompts": [...]} (up to 100; 200)
    GET    /api/v1/projects/{id}/app-tokens             admin: the project's app tokens
    POST   /api/v1/projects/{id}/app-tokens             admin: make one (the raw token, once)  201
    DELETE /api/v1/projects/{id}/app-tokens/{token_id}  admin: revoke

The rules live in app.services.intake."""

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from app import conversation
from app.deps import ApiAdmin, BearerCredentials, SessionDep, SessionRoute, app_token
from app.models import AppToken, PromptCategory, Split
from app.services import intake
from app.web.api_conversation import ChatMessage
from app.web.params import IdPath

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["intake"])


class IntakeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(
        None,
        description=f"The prompt as one user turn (1 to {intake.MAX_TEXT_CHARS:,} characters, no NUL). "
        "Send exactly one of text and messages.",
    )
    messages: list[ChatMessage] | None = Field(
        None,
        description="The prompt as a conversation for the model to answer with its next assistant turn: "
        "an optional system message, then user and assistant turns alternating, ending with the user's "
        f"turn; at most {conversation.MAX_MESSAGES} messages and {intake.MAX_TEXT_CHARS:,} characters in "
        "all. PII is looked for in every user turn; duplicates are conversations that agree up to their "
        f"last user turn and on its first {intake.PREFIX_CHARS} characters. A malformed conversation is "
        "refused (422) with the message at fault named. Send exactly one of text and messages.",
        examples=[
            [
                {"role": "user", "content": "Plan a day in Lisbon."},
                {"role": "assistant", "content": "Morning: Belém. Afternoon: Alfama."},
                {"role": "user", "content": "Make it rain-proof."},
            ]
        ],
    )
    end_user: str = Field(
        min_length=1,
        max_length=intake.MAX_END_USER_CHARS,
        description="The application's opaque id of the person who wrote it (stored only hashed): "
        f"caps them at {intake.MAX_PROMPTS_PER_END_USER} prompts and keeps all their prompts in one split.",
    )
    metadata: dict[str, Any] | None = Field(
        None, description=f"Small ({intake.MAX_METADATA_BYTES:,} bytes as JSON), stored in the prompt's meta."
    )
    category: PromptCategory | None = Field(None, description="InstructGPT's use-case category, if known.")
    pii: Literal["flag", "drop"] = Field(
        "flag", description="flag: store it and record the kinds of personal data found; drop: don't store it."
    )

    def item(self) -> intake.Item:
        messages = None if self.messages is None else [m.model_dump() for m in self.messages]
        return intake.Item(self.text, self.end_user, self.metadata, self.category, self.pii, messages)


class IntakeBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[IntakeIn] = Field(min_length=1, max_length=intake.MAX_BATCH)


def _form(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "prompts" in value else "one"


IntakeBody = Annotated[
    Annotated[IntakeIn, Tag("one")] | Annotated[IntakeBatchIn, Tag("batch")], Discriminator(_form), Body()
]


class IntakeOut(BaseModel):
    status: Literal["created", "duplicate", "dropped", "refused"]
    prompt_id: int | None = Field(None, description="The new prompt, or the one it duplicates.")
    split: Split | None = None
    pii: list[str] = Field(default_factory=list, description="Kinds of personal data found (email, phone, ...).")
    reason: str | None = None


class IntakeBatchOut(BaseModel):
    results: list[IntakeOut]


def _out(o: intake.Outcome) -> IntakeOut:
    return IntakeOut(status=o.status, prompt_id=o.prompt_id, split=o.split, pii=o.pii, reason=o.reason)


STATUS = {"created": 201, "duplicate": 200, "dropped": 200}


@router.post(
    "/projects/{project_id}/intake",
    response_model=IntakeOut | IntakeBatchOut,
    status_code=201,
    responses={200: {"description": "duplicate or dropped (one prompt), or a batch's results"}, 429: {}},
)
def receive(
    project_id: IdPath, body: IntakeBody, request: Request, session: SessionDep, credentials: BearerCredentials
):
    """Sends one prompt (or {"prompts": [...]}, up to 100) from an application's end users: a text, or
    a conversation as `messages` ending with the user's turn. One bad prompt refuses the request
    (422, naming the prompt and the problem) and nothing is stored."""
    token = app_token(session, credentials)
    items = [p.item() for p in body.prompts] if isinstance(body, IntakeBatchIn) else [body.item()]
    request.app.state.intake_limiter.take(token.id, len(items))
    outcomes = intake.receive(session, token, project_id, items)
    # Answered as made here, not validated again against response_model (it documents the shape):
    # that second validation cost the intake ~5% of its server CPU.
    if isinstance(body, IntakeBatchIn):
        return JSONResponse(IntakeBatchOut(results=[_out(o) for o in outcomes]).model_dump(mode="json"))
    (o,) = outcomes
    if o.status == "refused":
        return JSONResponse({"detail": o.reason, "status": o.status}, status_code=429)
    return JSONResponse(_out(o).model_dump(mode="json"), status_code=STATUS[o.status])


class AppTokenIn(BaseModel):
    name: str = Field("", max_length=120, description="Which application uses it.")
    create_tasks: bool = Field(True, description="Give its train-split prompts a demonstration task.")


class AppTokenOut(BaseModel):
    id: int
    project_id: int
    name: str
    prefix: str
    create_tasks: bool
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    token: str | None = Field(None, description="The token itself: shown only in the answer that makes it.")


def _token_out(row: AppToken, raw: str | None = None) -> AppTokenOut:
    return AppTokenOut(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        prefix=row.prefix,
        create_tasks=row.create_tasks,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
        token=raw,
    )


@router.get("/projects/{project_id}/app-tokens", response_model=list[AppTokenOut])
def list_app_tokens(project_id: IdPath, session: SessionDep, user: ApiAdmin):
    return [_token_out(t) for t in intake.app_tokens(session, project_id)]


@router.post("/projects/{project_id}/app-tokens", response_model=AppTokenOut, status_code=201)
def create_app_token(project_id: IdPath, body: AppTokenIn, session: SessionDep, user: ApiAdmin):
    row, raw = intake.create_app_token(
        session, project_id, name=body.name, create_tasks=body.create_tasks, created_by=user
    )
    return _token_out(row, raw)


@router.delete("/projects/{project_id}/app-tokens/{token_id}", response_model=AppTokenOut)
def revoke_app_token(project_id: IdPath, token_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _token_out(intake.revoke_app_token(session, project_id, token_id))
