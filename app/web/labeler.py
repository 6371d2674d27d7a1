"""Labeler pages: home (available work, today's counts), the three task screens, history.

    GET  /label                                 home
    POST /label/p/{project_id}/{kind}           lease the next task of this queue, then show it
                                                (a POST: prefetching or reloading a link leases nothing)
    GET  /label/task/{task_id}                  the task held by this labeler
    POST /label/task/{task_id}/submit           plain form post (htmx-free fallback; JS only enhances)
    POST /label/task/{task_id}/skip             skip, optionally flagging the prompt
    POST /label/task/{task_id}/draft            htmx autosave of a demonstration draft (fragment)
    GET  /label/history                         what I submitted

Pages only parse forms and render; the rules live in app.services.queue and .submissions.
"""

import dataclasses
import secrets
from datetime import UTC, datetime
from typing import Annotated, Self

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from markupsafe import escape
from pydantic import ConfigDict, model_validator

from app.deps import LabelerUser, OptionalUser, SessionDep, SessionRoute, SettingsDep, refuse, verify_csrf
from app.models import OUTPUT_FLAGS, SkipReason, TaskKind, User
from app.services import NotFound, ServiceError, projects, queue, submissions, tasks, written_prompts
from app.web.params import BackForm, IdPath, Page
from app.web.render import flash, redirect, render

router = APIRouter(route_class=SessionRoute, dependencies=[Depends(verify_csrf)], include_in_schema=False)

KIND_TITLES = {
    TaskKind.demonstration: "Write demonstrations",
    TaskKind.ranking: "Rank outputs",
    TaskKind.comparison: "Compare two outputs",
}
SKIP_LABELS = {
    SkipReason.skip: "Just skip",
    SkipReason.pii: "Contains personal data (PII)",
    SkipReason.nonsense: "Nonsense / not a real request",
    SkipReason.harmful: "Harmful request",
}


@router.get("/")
def root(user: OptionalUser):
    if user is None:
        return redirect("/login")
    return redirect("/admin" if user.is_admin else "/label")


@router.get("/label")
def labeler_home(request: Request, session: SessionDep, user: LabelerUser):
    work = [{**dataclasses.asdict(w), "title": KIND_TITLES[w.kind]} for w in queue.work_list(session, user.id)]
    today = submissions.counts_since(session, user, submissions.start_of_today())
    writing = written_prompts.open_projects(session, user)
    follow_ups = written_prompts.follow_up_work(session, user)
    context = {
        "work": work,
        "today": today,
        "kind_titles": KIND_TITLES,
        "writing": writing,
        "follow_ups": follow_ups,
        "rejected": submissions.rejected_count(session, user),
        "paused": queue.paused_projects(session, user.id),
    }
    return render(request, "labeler/home.html", context)


@router.get("/label/p/{project_id}/{kind}")
def work_queue_link(user: LabelerUser):
    """Old links and bookmarks: the work list, where Start leases (GET never does)."""
    return redirect("/label")


@router.post("/label/p/{project_id}/{kind}")
def work_queue(
    request: Request, session: SessionDep, settings: SettingsDep, project_id: IdPath, kind: TaskKind, user: LabelerUser
):
    return _next_task(request, session, settings.lease_seconds, user, project_id, kind, done="")


def _next_task(
    request: Request, session: SessionDep, lease_seconds: int, user: User, project_id: int, kind: TaskKind, *, done: str
):
    """Leases the next task of this queue and shows it, or goes back to the work list when there is
    none. `done` is said first. What the caller stored is committed already (atomic services): it
    stays saved whatever happens here."""
    try:
        got = queue.next_task_in_project(session, user.id, project_id, kind, default_lease_seconds=lease_seconds)
    except ServiceError as exc:  # paused, archived or closed to this labeler since the last task
        flash(request, f"{done} {exc.message}".strip(), "info")
        return redirect("/label")
    if got is None:
        name = projects.get_project(session, project_id).name
        flash(request, f"{done} No more {kind.value} tasks for you in {name} right now. Thank you!".strip(), "success")
        return redirect("/label")
    if done:
        flash(request, f"{done} Here is the next one.", "success")
    return redirect(f"/label/task/{got.task_id}")


def _task_context(session: SessionDep, user: User, task_id: int) -> dict:
    got = queue.held_task(session, task_id, user.id)
    return {
        "task": got,
        "project": projects.get_project(session, got.project_id),
        "guidelines": projects.current_guidelines(session, got.project_id),
        "kind_title": KIND_TITLES[got.kind],
        "skip_labels": SKIP_LABELS,
        "flags": OUTPUT_FLAGS,
        "idempotency_key": secrets.token_urlsafe(12),
        "expired": got.expires_at <= datetime.now(UTC),
        "error": None,
        "form": {},
    }


def _render_task(request: Request, ctx: dict, status_code: int = 200) -> HTMLResponse:
    return render(request, f"labeler/{ctx['task'].kind.value}.html", ctx, status_code=status_code)


@router.get("/label/task/{task_id}")
def task_page(request: Request, session: SessionDep, task_id: IdPath, user: LabelerUser):
    ctx = _task_context(session, user, task_id)
    if ctx["task"].kind == TaskKind.demonstration:
        ctx["form"] = {"text": submissions.get_draft(session, user, task_id)}
    return _render_task(request, ctx)


class AnswerForm(BackForm):
    """A task's answer from its screen, new or revised: the demonstration's `text`; the comparison's
    `choice` and `reason`; for a ranking, per output, `place_{id}` (1 = best; equal places are ties)
    and `likert_{id}` (whole numbers, empty: not given) and the repeated `flags_{id}`."""

    model_config = ConfigDict(extra="allow")

    idempotency_key: str = ""
    time_spent_ms: int | None = None
    text: str = ""
    choice: str = ""
    reason: str = ""
    none_acceptable: bool = False

    @model_validator(mode="after")
    def _numbers_per_output(self) -> Self:
        """Every place_{id} / likert_{id} becomes a number or None (empty), else the form is a 422."""
        extra = self.model_extra or {}
        for name, value in extra.items():
            if name.startswith(("place_", "likert_")):
                if not isinstance(value, str):
                    raise ValueError(f"{name} is given more than once")
                try:
                    extra[name] = int(value) if value.strip() else None
                except ValueError:
                    raise ValueError(f"{name} must be a whole number") from None
        return self

    def place(self, output_id: int) -> int | None:
        return (self.model_extra or {}).get(f"place_{output_id}")

    def likert(self, output_id: int) -> int | None:
        return (self.model_extra or {}).get(f"likert_{output_id}")

    def flags(self, output_id: int) -> list[str]:
        value = (self.model_extra or {}).get(f"flags_{output_id}", [])
        return value if isinstance(value, list) else [value]


def _ranking_from_form(form: AnswerForm, output_ids: list[int]) -> tuple[list[list[int]], dict, dict]:
    """Places (1 = best; equal places are ties), Likert and flags per output from the form fields."""
    places: dict[int, int] = {}
    ratings: dict[str, dict] = {}
    for cid in output_ids:
        place = form.place(cid)
        if place is not None:
            places[cid] = place
        ratings[str(cid)] = {"likert": form.likert(cid), "flags": form.flags(cid)}
    order = [[cid for cid in output_ids if places.get(cid) == p] for p in sorted(set(places.values()))]
    # An unplaced output is left out of the order, so the service names it in its message.
    return order, ratings, places


@router.post("/label/task/{task_id}/submit")
def submit_form(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    task_id: IdPath,
    user: LabelerUser,
    form: Annotated[AnswerForm, Form()],
) -> HTMLResponse:
    response = _submit_in(session, request, task_id, user, form)
    if isinstance(response, tuple):  # stored: on to the next task of the same queue
        return _next_task(request, session, settings.lease_seconds, user, *response, done="Saved.")
    return response


def _submit_in(
    session: SessionDep, request: Request, task_id: int, user: User, form: AnswerForm
) -> HTMLResponse | tuple[int, TaskKind]:
    """The form again with the error, or the stored task's (project id, kind)."""
    task = tasks.get_task(session, task_id)
    key = form.idempotency_key or None
    time_ms = form.time_spent_ms
    values: dict = {}
    try:
        # Each submit is one atomic step: a refused answer leaves nothing behind.
        if task.kind == TaskKind.demonstration:
            values = {"text": form.text}
            submissions.submit_demonstration(
                session, user, task_id, values["text"], time_spent_ms=time_ms, idempotency_key=key
            )
        elif task.kind == TaskKind.ranking:
            output_ids = [tc.completion_id for tc in task.outputs]
            order, ratings, places = _ranking_from_form(form, output_ids)
            none_ok = form.none_acceptable
            values = {"places": places, "ratings": ratings, "none_acceptable": none_ok}
            ratings = {cid: r for cid, r in ratings.items() if r["likert"] is not None or r["flags"]}
            submissions.submit_ranking(
                session,
                user,
                task_id,
                order,
                ratings,
                none_acceptable=none_ok,
                time_spent_ms=time_ms,
                idempotency_key=key,
            )
        else:
            values = {"choice": form.choice, "reason": form.reason}
            submissions.submit_comparison(
                session,
                user,
                task_id,
                values["choice"] or "(none)",
                values["reason"],
                time_spent_ms=time_ms,
                idempotency_key=key,
            )
    except ServiceError as exc:
        if exc.status_code in (403, 404) or queue.assignment(session, task_id, user.id) is None:
            raise  # not (or no longer) this labeler's task: the plain error page says why
        ctx = _task_context(session, user, task_id)
        ctx.update(error=exc.message, form=values)
        return _render_task(request, ctx, status_code=exc.status_code)
    # A double-clicked form (same idempotency key) lands here too, without storing anything twice.
    return task.project_id, task.kind


class SkipForm(BackForm):
    reason: str = "skip"
    note: str = ""


class DraftForm(BackForm):
    text: str = ""


@router.post("/label/task/{task_id}/skip")
def skip_form(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    task_id: IdPath,
    user: LabelerUser,
    form: Annotated[SkipForm, Form()],
):
    got = queue.held_task(session, task_id, user.id)
    submissions.skip(session, user, task_id, form.reason, form.note)
    done = "Skipped." if form.reason == "skip" else "Skipped and flagged for the admins."
    return _next_task(request, session, settings.lease_seconds, user, got.project_id, got.kind, done=done)


@router.post("/label/task/{task_id}/draft")
def save_draft(
    request: Request, session: SessionDep, task_id: IdPath, user: LabelerUser, form: Annotated[DraftForm, Form()]
):
    try:
        submissions.save_draft(session, user, task_id, form.text)
    except ServiceError as exc:  # its own status (the page swaps it in: data-swap-errors)
        refuse(request)
        return HTMLResponse(
            f'<span class="draft-status bad" role="status">Draft not saved: {escape(exc.message)}</span>',
            status_code=exc.status_code,
        )
    return HTMLResponse(f'<span class="draft-status" role="status">Draft saved {datetime.now(UTC):%H:%M:%S} UTC</span>')


REVISABLE = {"demonstrations": TaskKind.demonstration, "rankings": TaskKind.ranking, "comparisons": TaskKind.comparison}


def _revise_page(
    request: Request, session, user: User, kind: TaskKind, submission_id: int, error: str = "", form: dict | None = None
):
    """A submitted answer in its task screen, filled in, to change and save again (or, once
    reviewed, shown with why it can no longer change)."""
    item = submissions.own_submission(session, user, kind.value, submission_id)
    sub, status_code = item.submission, 400 if error else 200
    if kind == TaskKind.demonstration or sub.review.value == "accepted" or item.task.status.value == "retired":
        return render(request, "labeler/revise.html", {"item": item, "error": error}, status_code=status_code)
    if form is None and kind == TaskKind.ranking:
        places = {cid: place for place, group in enumerate(sub.order, 1) for cid in group}
        form = {"places": places, "ratings": sub.ratings or {}, "none_acceptable": sub.none_acceptable}
    elif form is None:
        form = {"choice": sub.choice.value, "reason": sub.reason}
    outputs = [queue.Output(o.completion_id, o.text) for o in item.outputs]
    task = queue.Assignment(
        sub.task_id,
        item.task.project_id,
        kind,
        item.prompt.id,
        item.prompt.text,
        item.prompt.messages,
        0,
        sub.created_at,
        sub.created_at,
        outputs,
    )
    context = {
        "task": task,
        "project": item.task.project,
        "guidelines": projects.current_guidelines(session, item.task.project_id),
        "kind_title": f"Revise your {kind.value}",
        "skip_labels": SKIP_LABELS,
        "flags": OUTPUT_FLAGS,
        "idempotency_key": "",
        "expired": False,
        "revising": f"/label/{kind.value}s/{submission_id}/revise",
        "error": error or None,
        "form": form,
    }
    return render(request, f"labeler/{kind.value}.html", context, status_code=status_code)


@router.get("/label/{kind}/{submission_id}/revise")
def revise_page(request: Request, session: SessionDep, user: LabelerUser, kind: str, submission_id: IdPath):
    if kind not in REVISABLE:
        raise NotFound(f"Nothing to revise at /label/{kind}.")
    return _revise_page(request, session, user, REVISABLE[kind], submission_id)


@router.post("/label/{kind}/{submission_id}/revise")
def revise(
    request: Request,
    session: SessionDep,
    user: LabelerUser,
    kind: str,
    submission_id: IdPath,
    form: Annotated[AnswerForm, Form()],
):
    if kind not in REVISABLE:
        raise NotFound(f"Nothing to revise at /label/{kind}.")
    task_kind = REVISABLE[kind]
    values: dict = {}
    try:
        if task_kind == TaskKind.demonstration:
            sub = submissions.revise_demonstration(session, user, submission_id, form.text)
        elif task_kind == TaskKind.ranking:
            item = submissions.own_submission(session, user, "ranking", submission_id)
            order, ratings, places = _ranking_from_form(form, [o.completion_id for o in item.outputs])
            none_ok = form.none_acceptable
            values = {"places": places, "ratings": ratings, "none_acceptable": none_ok}
            ratings = {cid: r for cid, r in ratings.items() if r["likert"] is not None or r["flags"]}
            sub = submissions.revise_ranking(session, user, submission_id, order, ratings, none_acceptable=none_ok)
        else:
            values = {"choice": form.choice, "reason": form.reason}
            sub = submissions.revise_comparison(session, user, submission_id, values["choice"], values["reason"])
    except ServiceError as exc:
        if exc.status_code == 404:
            raise
        response = _revise_page(request, session, user, task_kind, submission_id, exc.message, values or None)
        response.status_code = exc.status_code
        return response
    flash(
        request,
        f"{task_kind.value.capitalize()} revised (revision {sub.revision}); the earlier answer is kept.",
        "success",
    )
    return redirect("/label/history")


@router.get("/label/history")
def history_page(request: Request, session: SessionDep, user: LabelerUser, page: Page = 1):
    page = max(1, page)
    per_page = 50
    rows = submissions.history(session, user, limit=per_page + 1, offset=(page - 1) * per_page)
    today = submissions.counts_since(session, user, submissions.start_of_today())
    return render(
        request,
        "labeler/history.html",
        {
            "rows": rows[:per_page],
            "page": page,
            "has_more": len(rows) > per_page,
            "today": today,
            "kind_titles": KIND_TITLES,
        },
    )
