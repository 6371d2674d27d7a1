"""JSON API for reviewing submissions and labelers' flags (admins; rules in app.services.review).

GET  /api/v1/projects/{id}/review?kind&status&labeler&flagged&days&after   submissions to review
POST /api/v1/reviews                          a decision: {kind, submission_id, decision, reason, revision}
                                              (revised since `revision`: 409 with the submission as it is now)
POST /api/v1/projects/{id}/review/accept      accept pending items as read: {kind, items: [{submission_id, revision}]}
                                              (revised or decided since: skipped and counted)
GET  /api/v1/projects/{id}/flags              flagged prompts (open) and ranking output flags
POST /api/v1/projects/{id}/flags/{skip_id}/retire | dismiss"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app import conversation
from app.deps import ApiAdmin, SessionDep, SessionRoute
from app.services import projects, review
from app.web.api_conversation import LAST_USER_TURN, MESSAGES, ChatMessage, messages_out
from app.web.params import DB_INT_MAX, Id, IdPath, IdQuery

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["review"])


class OutputOut(BaseModel):
    letter: str = Field(description="A, B, ...: the order the labeler saw the outputs in.")
    completion_id: int
    text: str
    rank: int | None = Field(None, description="1 = best; equal ranks are ties (rankings).")
    likert: int | None = None
    flags: list[str] = []


class ReviewItemOut(BaseModel):
    kind: str
    submission_id: int
    task_id: int
    prompt_id: int
    prompt: str = Field(description=LAST_USER_TURN)
    messages: list[ChatMessage] = Field(
        description=MESSAGES + " The submission answers, ranks or compares its next turn."
    )
    labeler_id: int | None = Field(description="None: imported feedback (no labeler; `source` says so).")
    labeler: str = Field(description="The labeler's email; for imported feedback, its file and line.")
    source: str = Field("labeler", description="labeler, or imported (feedback brought from a file).")
    created_at: datetime
    time_spent_ms: int
    text: str | None = Field(None, description="The demonstration (the conversation's next assistant turn).")
    outputs: list[OutputOut] = []
    none_acceptable: bool | None = None
    choice: str | None = Field(None, description="a, b or tie (comparisons; A and B as shown).")
    reason: str | None = Field(None, description="The labeler's reason (comparisons).")
    review: str
    review_reason: str
    reviewed_by: str | None
    reviewed_at: datetime | None
    revision: int = Field(
        description="1 as submitted; each revision by the labeler adds one. Send it with a decision on this item."
    )


class ReviewPage(BaseModel):
    counts: dict[str, int]
    items: list[ReviewItemOut]
    next_after: int | None = Field(None, description="Pass as `after` for the next page; null: no more.")


class DecisionIn(BaseModel):
    kind: Literal["demonstration", "ranking", "comparison"]
    submission_id: Id
    decision: Literal["accepted", "rejected", "pending"] = Field(description="pending undoes an earlier decision.")
    reason: str = Field("", description="Required to reject: the labeler sees it in their history.")
    revision: Id | None = Field(
        None,
        description=(
            "The item's `revision` as you read it. Given, the decision is recorded only while the submission is "
            "still that revision: if its labeler revised it since, the answer is 409 with the current revision and "
            "the submission as it is now, and nothing is recorded. Omitted, the decision applies to whatever the "
            "submission is when it arrives (kept optional for clients written before it existed; send it)."
        ),
    )


class RevisionConflictOut(BaseModel):
    detail: str
    revision: int = Field(description="The submission's revision now.")
    item: ReviewItemOut = Field(description="The submission as it is now (`text`: a demonstration's current text).")


class FlagOut(BaseModel):
    id: int
    reason: str
    note: str
    task_id: int
    prompt_id: int
    prompt: str = Field(description=LAST_USER_TURN)
    messages: list[ChatMessage] = Field(description=MESSAGES)
    labeler: str
    created_at: datetime


class FlagsOut(BaseModel):
    flags: list[FlagOut]
    output_flags: dict[str, int] = Field(description="How often each output flag was ticked in the project's rankings.")


def _item_out(item: review.Item) -> ReviewItemOut:
    s = item.submission
    return ReviewItemOut(
        kind=item.kind.value,
        submission_id=s.id,
        task_id=item.task.id,
        prompt_id=item.prompt.id,
        prompt=conversation.last_user_turn(item.prompt.messages),
        messages=messages_out(item.prompt.messages),
        labeler_id=item.labeler.id if item.labeler else None,
        labeler=item.labeler.email if item.labeler else f"{s.origin_file}, line {s.origin_line}",
        source=s.source,
        created_at=s.created_at,
        time_spent_ms=s.time_spent_ms,
        text=getattr(s, "text", None),
        outputs=[OutputOut(**vars(o)) for o in item.outputs],
        none_acceptable=getattr(s, "none_acceptable", None),
        choice=s.choice.value if hasattr(s, "choice") else None,
        reason=getattr(s, "reason", None),
        review=s.review.value,
        review_reason=s.review_reason,
        reviewed_by=item.reviewer.email if item.reviewer else None,
        reviewed_at=s.reviewed_at,
        revision=s.revision,
    )


@router.get("/projects/{project_id}/review", response_model=ReviewPage)
def review_queue(
    session: SessionDep,
    user: ApiAdmin,
    project_id: IdPath,
    kind: Literal["demonstration", "ranking", "comparison"] = "demonstration",
    status: Literal["pending", "accepted", "rejected", "all"] = "pending",
    labeler: IdQuery = None,
    flagged: bool = False,
    days: Annotated[int | None, Query(ge=1, le=3650)] = None,
    after: Annotated[int, Query(ge=0, le=DB_INT_MAX)] = 0,
    agreement_below: Annotated[
        int | None, Query(ge=1, le=100, description="Only labelers whose ranking agreement is below this percent.")
    ] = None,
):
    projects.get_project(session, project_id)
    f = review.parse_filters(
        kind,
        status,
        str(labeler or ""),
        "1" if flagged else "",
        str(days or ""),
        str(after),
        str(agreement_below or ""),
    )
    found = review.queue(session, project_id, f, limit=review.PAGE + 1)
    return ReviewPage(
        counts=review.status_counts(session, project_id, f),
        items=[_item_out(i) for i in found[: review.PAGE]],
        next_after=found[review.PAGE - 1].submission.id if len(found) > review.PAGE else None,
    )


class DecisionOut(BaseModel):
    kind: str
    submission_id: int
    review: str
    review_reason: str
    reviewed_by: str | None
    reviewed_at: datetime | None


@router.post(
    "/reviews",
    response_model=DecisionOut,
    responses={409: {"model": RevisionConflictOut, "description": "Revised since the `revision` sent."}},
)
def decide(body: DecisionIn, session: SessionDep, user: ApiAdmin):
    """Records a decision on a submission (the last decision wins; `pending` undoes one). Send the
    `revision` you read: a submission revised since is not decided, and comes back as it is now (409)."""
    try:
        d = review.decide(
            session, user, body.kind, body.submission_id, body.decision, body.reason, revision=body.revision
        )
    except review.RevisionChanged as exc:
        now = _item_out(review.item(session, body.kind, body.submission_id))
        conflict = RevisionConflictOut(detail=exc.message, revision=now.revision, item=now)
        return JSONResponse(status_code=409, content=conflict.model_dump(mode="json"))
    return DecisionOut(
        kind=d.kind.value,
        submission_id=d.submission_id,
        review=d.review.value,
        review_reason=d.review_reason,
        reviewed_by=user.email if d.reviewed_by_id else None,
        reviewed_at=d.reviewed_at,
    )


class ShownItemIn(BaseModel):
    submission_id: Id
    revision: Id = Field(description="The item's `revision` as you read it.")


class AcceptShownIn(BaseModel):
    kind: Literal["demonstration", "ranking", "comparison"]
    items: list[ShownItemIn] = Field(max_length=review.MAX_SHOWN, description="The pending items you read.")


class AcceptedShownOut(BaseModel):
    accepted: int
    revised: int = Field(description="Skipped: revised by their labeler since the revision sent (still pending).")
    decided: int = Field(description="Skipped: no longer pending (decided meanwhile), gone, or of another project.")


@router.post("/projects/{project_id}/review/accept", response_model=AcceptedShownOut)
def accept_shown(body: AcceptShownIn, session: SessionDep, user: ApiAdmin, project_id: IdPath):
    """Accepts the pending items of the project as read, each only while it is still the revision
    sent and still pending (the review page's "Accept the shown items"); the rest are skipped and
    counted. 400 for an empty list, 409 on an archived project."""
    shown = [(i.submission_id, i.revision) for i in body.items]
    done = review.accept_shown(session, user, project_id, body.kind, shown)
    return AcceptedShownOut(accepted=done.accepted, revised=done.revised, decided=done.decided)


@router.get("/projects/{project_id}/flags", response_model=FlagsOut)
def flags(session: SessionDep, user: ApiAdmin, project_id: IdPath):
    projects.get_project(session, project_id)
    return FlagsOut(
        flags=[
            FlagOut(
                id=f.skip.id,
                reason=f.skip.reason.value,
                note=f.skip.note,
                task_id=f.task.id,
                prompt_id=f.prompt.id,
                prompt=conversation.last_user_turn(f.prompt.messages),
                messages=messages_out(f.prompt.messages),
                labeler=f.labeler.email,
                created_at=f.skip.created_at,
            )
            for f in review.open_flags(session, project_id)
        ],
        output_flags=review.output_flag_counts(session, project_id),
    )


@router.post("/projects/{project_id}/flags/{skip_id}/retire")
def retire(session: SessionDep, user: ApiAdmin, project_id: IdPath, skip_id: IdPath) -> dict[str, int]:
    return {"retired_tasks": review.retire_flagged_prompt(session, user, project_id, skip_id)}


@router.post("/projects/{project_id}/flags/{skip_id}/dismiss")
def dismiss(session: SessionDep, user: ApiAdmin, project_id: IdPath, skip_id: IdPath) -> dict[str, int]:
    return {"dismissed": review.dismiss_flag(session, user, project_id, skip_id).id}


class DisagreementOut(BaseModel):
    task_id: int
    agreement: float
    required: int
    done: int
    items: list[ReviewItemOut]


class SubmissionRef(BaseModel):
    kind: Literal["ranking", "comparison"]
    submission_id: Id


class TaskOut(BaseModel):
    id: int
    status: str
    required: int
    done: int
    gold: dict | None


def _task_out(task) -> TaskOut:
    gold = task.gold if isinstance(task.gold, dict) else None
    return TaskOut(id=task.id, status=task.status.value, required=task.required, done=task.done_count, gold=gold)


@router.get("/projects/{project_id}/disagreements", response_model=list[DisagreementOut])
def disagreements(
    session: SessionDep,
    user: ApiAdmin,
    project_id: IdPath,
    kind: Literal["ranking", "comparison"] = "ranking",
    below: Annotated[float, Query(gt=0, le=1.01, description="Agreement below this share (0..1).")] = 0.6,
):
    projects.get_project(session, project_id)
    found, _ = review.disagreements(session, project_id, review.TaskKind(kind), below=below)
    return [
        DisagreementOut(
            task_id=d.task.id,
            agreement=d.agreement,
            required=d.task.required,
            done=d.task.done_count,
            items=[_item_out(i) for i in d.items],
        )
        for d in found
    ]


@router.post("/tasks/{task_id}/more-labels", response_model=TaskOut)
def more_labels(session: SessionDep, user: ApiAdmin, task_id: IdPath):
    return _task_out(review.ask_one_more_labeler(session, task_id))


@router.post("/reviews/gold", response_model=TaskOut)
def gold_from(body: SubmissionRef, session: SessionDep, user: ApiAdmin):
    return _task_out(review.gold_from_submission(session, body.kind, body.submission_id))
