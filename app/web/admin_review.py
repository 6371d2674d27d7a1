"""Admin pages: review of submissions and the labelers' flags (rules in app.services.review).

    GET  /admin/projects/{id}/review?kind&status&labeler&flagged&days&q&after   the review queue (q: text search)
    POST /admin/review/{kind}/{id}                 decision (accepted / rejected / pending) + reason, on
                                                   the revision read (a newer one: 409, the card as it is now)
    POST /admin/projects/{id}/review/accept-shown  accept the pending items the page showed, each at the
                                                   revision shown (those revised since are skipped and counted)
    GET  /admin/projects/{id}/flags                flagged prompts and ranking output flags
    POST /admin/projects/{id}/flags/{skip}/retire  retire the prompt (and its open tasks)
    POST /admin/projects/{id}/flags/{skip}/dismiss let the prompt be
    GET  /admin/projects/{id}/disagreements?kind&below   tasks whose labelers disagree, side by side
    POST /admin/tasks/{id}/more-labels             one more labeler on the task
    POST /admin/review/{kind}/{id}/gold            the submission's answer becomes the task's gold

A decision from the review page comes by htmx and answers with the card in its new state; without
JavaScript the form posts and the page comes back."""

import re
from html import escape
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BeforeValidator, Field

from app.deps import AdminUser, SessionDep, SessionRoute, refuse, verify_csrf
from app.services import ServiceError, accounts, projects, review
from app.web.params import BackForm, Id, IdPath
from app.web.render import flash, is_htmx, redirect, refused, render

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)


@router.get("/projects/{project_id}/review")
def review_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    kind: str = "demonstration",
    status: str = "pending",
    labeler: str = "",
    flagged: str = "",
    days: str = "",
    after: str = "",
    agreement_below: str = "",
    source: str = "",
    q: str = "",
):
    project = projects.get_project(session, project_id)
    f = review.parse_filters(kind, status, labeler, flagged, days, after, agreement_below, source, q)
    found = review.queue(session, project_id, f, limit=review.PAGE + 1)
    return render(
        request,
        "admin/review.html",
        {
            "project": project,
            "f": f,
            "items": found[: review.PAGE],
            "next_after": found[review.PAGE - 1].submission.id if len(found) > review.PAGE else None,
            "counts": review.status_counts(session, project_id, f),
            "labelers": accounts.list_users(session),
        },
    )


class DecisionForm(BackForm):
    decision: str = ""
    reason: str = ""
    revision: Id | None = None
    """The revision the admin read (the card's hidden field): required here, so that a decision
    never lands on an answer its labeler revised since the page was loaded."""


@router.post("/review/{kind}/{submission_id}")
def decide(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    kind: str,
    submission_id: IdPath,
    form: Annotated[DecisionForm, Form()],
):
    error, status = None, 200
    try:
        if form.revision is None:
            raise ServiceError("This page is out of date (it names no revision of the answer): reload it, then decide.")
        sub = review.decide(session, user, kind, submission_id, form.decision, form.reason, revision=form.revision)
    except review.RevisionChanged as exc:
        if not is_htmx(request):  # the queue shows the answer as it is now, with the message
            return refused(request, exc, form.back_or("/admin"))
        refuse(request)
        error, status = exc.message, exc.status_code  # the card comes back with the new revision
    except ServiceError as exc:
        if exc.status_code == 404 and is_htmx(request):  # (the card swaps errors in: data-swap-errors)
            refuse(request)
            return HTMLResponse(f'<div class="flash flash-error" role="alert">{escape(exc.message)}</div>', 404)
        if exc.status_code == 404 or not is_htmx(request):
            raise
        refuse(request)
        error = exc.message  # the card comes back as it was, with the message
    if not is_htmx(request):
        flash(request, f"{kind.capitalize()} #{submission_id}: {sub.review.value}.")
        return redirect(form.back_or("/admin"))
    context = {"item": review.item(session, kind, submission_id), "error": error, "back": form.back}
    return render(request, "admin/_review_item.html", context, status_code=status)


def _shown_item(value: object) -> object:
    """ "<submission id>:<revision>" (the review page's hidden field) as a pair; anything else fails validation."""
    if isinstance(value, str) and re.fullmatch(r"\d{1,10}:\d{1,10}", value):
        return tuple(value.split(":"))
    return value


ShownItem = Annotated[tuple[Id, Id], BeforeValidator(_shown_item)]


class AcceptShownForm(BackForm):
    kind: str = ""
    shown: Annotated[list[ShownItem], Field(max_length=review.MAX_SHOWN)] = []


@router.post("/projects/{project_id}/review/accept-shown")
def accept_shown(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, form: Annotated[AcceptShownForm, Form()]
):
    back = form.back_or(f"/admin/projects/{project_id}/review?kind={form.kind}")
    try:
        done = review.accept_shown(session, user, project_id, form.kind, list(form.shown))
    except ServiceError as exc:  # nothing shown, an unknown kind, an archived project
        return refused(request, exc, back)
    words = [f"Accepted {done.accepted} {form.kind}(s)."]
    if done.revised:
        words.append(
            f"Skipped {done.revised} that {'its labeler' if done.revised == 1 else 'their labelers'} revised after "
            f"the page was shown: read {'it as it is' if done.revised == 1 else 'them as they are'} now, below."
        )
    if done.decided:
        words.append(f"Skipped {done.decided} decided meanwhile by someone else (or deleted).")
    flash(request, " ".join(words), "warn" if done.revised or done.decided else "success")
    return redirect(back)


@router.get("/projects/{project_id}/flags")
def flags_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    project = projects.get_project(session, project_id)
    return render(
        request,
        "admin/flags.html",
        {
            "project": project,
            "flags": review.open_flags(session, project_id),
            "output_flags": review.output_flag_counts(session, project_id),
        },
    )


@router.post("/projects/{project_id}/flags/{skip_id}/retire")
def retire_prompt(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, skip_id: IdPath):
    try:
        retired = review.retire_flagged_prompt(session, user, project_id, skip_id)
    except ServiceError as exc:  # dealt with already (another admin), or the project is archived
        return refused(request, exc, f"/admin/projects/{project_id}/flags")
    flash(request, f"Prompt retired: {retired} open task(s) will not be handed out again.")
    return redirect(f"/admin/projects/{project_id}/flags")


@router.post("/projects/{project_id}/flags/{skip_id}/dismiss")
def dismiss_flag(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, skip_id: IdPath):
    try:
        review.dismiss_flag(session, user, project_id, skip_id)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}/flags")
    flash(request, "Flag dismissed: the prompt stays in the queue.")
    return redirect(f"/admin/projects/{project_id}/flags")


@router.get("/projects/{project_id}/disagreements")
def disagreements_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    kind: str = "ranking",
    below: Annotated[int, Query(ge=1, le=101)] = 60,
):
    project = projects.get_project(session, project_id)
    task_kind = review.TaskKind.comparison if kind == "comparison" else review.TaskKind.ranking
    percent = below
    found, looked_at = review.disagreements(session, project_id, task_kind, below=percent / 100)
    return render(
        request,
        "admin/disagreements.html",
        {"project": project, "found": found, "looked_at": looked_at, "kind": task_kind, "below": percent},
    )


@router.post("/tasks/{task_id}/more-labels")
def more_labels(
    request: Request, session: SessionDep, user: AdminUser, task_id: IdPath, form: Annotated[BackForm, Form()]
):
    task = review.ask_one_more_labeler(session, task_id)
    flash(request, f"Task #{task.id} now asks for {task.required} labelers; it is open again.", "success")
    return redirect(form.back_or(f"/admin/tasks/{task.id}"))


@router.post("/review/{kind}/{submission_id}/gold")
def gold_from(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    kind: str,
    submission_id: IdPath,
    form: Annotated[BackForm, Form()],
):
    task = review.gold_from_submission(session, kind, submission_id)
    flash(request, f"Task #{task.id}: gold answer set from {kind} #{submission_id}.", "success")
    return redirect(form.back_or(f"/admin/tasks/{task.id}"))
