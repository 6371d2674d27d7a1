"""JSON API for labeling: next task (with its lease), submit (idempotent), skip.

    GET  /api/v1/work                                      what this labeler can work on now
    GET  /api/v1/projects/{project_id}/next?kind=ranking   200 the leased task | 204 nothing to do
    POST /api/v1/tasks/{task_id}/submission                201 stored | 200 idempotent retry
    POST /api/v1/tasks/{task_id}/skip                      200

Thin handlers: the rules live in app.services.queue and app.services.submissions.
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, Field

from app import conversation
from app.deps import ApiUser, SessionDep, SessionRoute, SettingsDep
from app.models import SkipReason, TaskKind
from app.services import queue, submissions
from app.web.api_conversation import LAST_USER_TURN, MESSAGES, ChatMessage, messages_out
from app.web.params import IdPath

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["labeling"])


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=100, description="Retrying with the same key and answer is safe."),
]


# -- schemas ----------------------------------------------------------------------------------


class OutputOut(BaseModel):
    id: int
    label: str = Field(description="How the page names it: A, B, C... in this labeler's order.")
    text: str
    cut_off: bool = Field(
        default=False, description="Sampling stopped at the token limit before the model ended this answer."
    )


class LeasedTaskOut(BaseModel):
    task_id: int
    project_id: int
    kind: TaskKind
    prompt_id: int
    prompt: str = Field(description=LAST_USER_TURN)
    messages: list[ChatMessage] = Field(description=MESSAGES + " You write, rank or compare its next assistant turn.")
    lease_id: int
    leased_at: datetime
    expires_at: datetime
    outputs: list[OutputOut] = Field(description="In the order shown to this labeler (stored with the lease).")


class DemonstrationIn(BaseModel):
    kind: Literal["demonstration"]
    text: str = Field(description="The next assistant turn of the task's conversation.")
    time_spent_ms: int | None = None


class RatingIn(BaseModel):
    likert: int = Field(description="1 (worst) to 7 (best).")
    flags: list[str] = Field(default_factory=list, description="Keys of OUTPUT_FLAGS.")


class RankingIn(BaseModel):
    kind: Literal["ranking"]
    order: list[list[int]] = Field(description="Best first; tied output ids share a group: [[3], [1, 4], [2]].")
    ratings: dict[int, RatingIn]
    none_acceptable: bool = False
    time_spent_ms: int | None = None


class ComparisonIn(BaseModel):
    kind: Literal["comparison"]
    choice: Literal["a", "b", "tie"] = Field(description="a / b as in the task's outputs list (first / second).")
    reason: str = ""
    time_spent_ms: int | None = None


SubmissionIn = Annotated[DemonstrationIn | RankingIn | ComparisonIn, Field(discriminator="kind")]


class SubmissionOut(BaseModel):
    id: int
    task_id: int
    kind: TaskKind
    created_at: datetime
    time_spent_ms: int
    guideline_version_id: int | None
    replayed: bool = Field(description="True when this was a retry and the stored submission is returned.")


class SkipIn(BaseModel):
    reason: SkipReason = SkipReason.skip
    note: str = ""


class WorkOut(BaseModel):
    project_id: int
    project: str
    kind: TaskKind
    available: int


class SkipOut(BaseModel):
    task_id: int
    reason: SkipReason


def leased_task_out(a: queue.Assignment) -> LeasedTaskOut:
    return LeasedTaskOut(
        task_id=a.task_id,
        project_id=a.project_id,
        kind=a.kind,
        prompt_id=a.prompt_id,
        prompt=conversation.last_user_turn(a.messages),
        messages=messages_out(a.messages),
        lease_id=a.lease_id,
        leased_at=a.leased_at,
        expires_at=a.expires_at,
        outputs=[
            OutputOut(id=o.id, label=chr(65 + i), text=o.text, cut_off=o.cut_off) for i, o in enumerate(a.outputs)
        ],
    )


# -- routes -----------------------------------------------------------------------------------


@router.get("/work", response_model=list[WorkOut])
def work(session: SessionDep, user: ApiUser):
    """What you can work on now, as your work list shows it: tasks available per project and kind."""
    return [
        WorkOut(project_id=w.project_id, project=w.project, kind=w.kind, available=w.available)
        for w in queue.work_list(session, user.id)
    ]


@router.get(
    "/projects/{project_id}/next",
    response_model=LeasedTaskOut,
    responses={
        204: {"description": "No task of this kind is available to you now."},
        401: {"description": "Missing or invalid bearer token."},
    },
)
def next_task(
    session: SessionDep,
    user: ApiUser,
    settings: SettingsDep,
    project_id: IdPath,
    kind: TaskKind = TaskKind.demonstration,
):
    """Your next task of this kind in the project, leased to you (your live lease again if you hold one)."""
    got = queue.next_task_in_project(session, user.id, project_id, kind, default_lease_seconds=settings.lease_seconds)
    return Response(status_code=204) if got is None else leased_task_out(got)


@router.post(
    "/tasks/{task_id}/submission",
    response_model=SubmissionOut,
    status_code=201,
    responses={200: {"description": "Idempotent retry: the stored submission."}},
)
def submit(
    session: SessionDep,
    user: ApiUser,
    task_id: IdPath,
    body: SubmissionIn,
    response: Response,
    idempotency_key: IdempotencyKey = None,
):
    """Stores your answer for a task leased to you. Safe to retry with the same Idempotency-Key."""
    done: submissions.Receipt
    if isinstance(body, DemonstrationIn):
        done = submissions.submit_demonstration(
            session, user, task_id, body.text, time_spent_ms=body.time_spent_ms, idempotency_key=idempotency_key
        )
    elif isinstance(body, RankingIn):
        ratings = {cid: r.model_dump() for cid, r in body.ratings.items()}
        done = submissions.submit_ranking(
            session,
            user,
            task_id,
            body.order,
            ratings,
            none_acceptable=body.none_acceptable,
            time_spent_ms=body.time_spent_ms,
            idempotency_key=idempotency_key,
        )
    else:
        done = submissions.submit_comparison(
            session,
            user,
            task_id,
            body.choice,
            body.reason,
            time_spent_ms=body.time_spent_ms,
            idempotency_key=idempotency_key,
        )
    if done.replayed:
        response.status_code = 200
    return SubmissionOut(
        id=done.id,
        task_id=done.task_id,
        kind=done.kind,
        created_at=done.created_at,
        time_spent_ms=done.time_spent_ms,
        guideline_version_id=done.guideline_version_id,
        replayed=done.replayed,
    )


@router.post("/tasks/{task_id}/skip", response_model=SkipOut)
def skip(session: SessionDep, user: ApiUser, task_id: IdPath, body: SkipIn):
    """Passes on a task leased to you; with reason pii / nonsense / harmful it also flags the prompt for admins."""
    row = submissions.skip(session, user, task_id, body.reason, body.note)
    return SkipOut(task_id=row.task_id, reason=row.reason)
