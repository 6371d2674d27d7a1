"""Pages for labeler-written prompts (rules in app.services.written_prompts).

GET  /label/write/{project_id}                 the "Write a prompt" page (guidelines beside it, my prompts below)
POST /label/write/{project_id}                 write one (the form again with a message when refused)
GET  /admin/projects/{id}/written?status       targets, use cases, and the written prompts to review
GET  /label/follow-up/{project_id}?after       a conversation to continue (the next after `after`)
POST /label/follow-up/{project_id}             write the user's next turn (pending review, like a written prompt)
POST /admin/projects/{id}/written/settings     targets per kind and category, use cases (one a line),
                                               how deep labelers grow conversations
POST /admin/projects/{id}/written/{wid}/accept   accept, with the text and category as edited in the form
POST /admin/projects/{id}/written/{wid}/reject   reject with a reason
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ConfigDict

from app import conversation
from app.deps import AdminUser, LabelerUser, SessionDep, SessionRoute, verify_csrf
from app.models import PromptCategory, User
from app.services import ServiceError, projects, written_prompts
from app.web.params import BackForm, IdFilter, IdPath
from app.web.render import flash, redirect, refused, render

router = APIRouter(route_class=SessionRoute, dependencies=[Depends(verify_csrf)], include_in_schema=False)
CATEGORIES = [c.value for c in PromptCategory]


def _write_page(request: Request, session, user: User, project_id: int, form: dict, error: str = "", status: int = 200):
    project = written_prompts.writable_project(session, user, project_id)
    context = {
        "project": project,
        "guidelines": projects.current_guidelines(session, project_id),
        "kinds": written_prompts.KINDS,
        "kind_titles": written_prompts.KIND_TITLES,
        "categories": CATEGORIES,
        "use_cases": written_prompts.use_cases(project),
        "mine": written_prompts.own(session, user, project_id),
        "form": form,
        "error": error or None,
        "template": written_prompts.FEW_SHOT_TEMPLATE,
    }
    return render(request, "labeler/write.html", context, status_code=status)


@router.get("/label/write/{project_id}")
def write_page(request: Request, session: SessionDep, user: LabelerUser, project_id: IdPath, kind: str = "plain"):
    form = {"kind": kind if kind in written_prompts.KINDS else "plain"}
    if form["kind"] == "few_shot":
        form["text"] = written_prompts.FEW_SHOT_TEMPLATE
    return _write_page(request, session, user, project_id, form)


class WriteForm(BackForm):
    kind: str = ""
    text: str = ""
    category: str = ""
    use_case: str = ""
    has_pii: bool = False


@router.post("/label/write/{project_id}")
def write(
    request: Request, session: SessionDep, user: LabelerUser, project_id: IdPath, form: Annotated[WriteForm, Form()]
):
    try:
        row = written_prompts.write(
            session,
            user,
            project_id,
            kind=form.kind,
            text=form.text,
            category=form.category,
            use_case=form.use_case or None,
            has_pii=form.has_pii,
        )
    except ServiceError as exc:
        if exc.status_code in (403, 404, 409):
            raise  # not a project this labeler may write for: the plain error page says why
        values = form.model_dump(exclude={"back"})  # the form again as it was sent
        return _write_page(request, session, user, project_id, values, exc.message, exc.status_code)
    flash(request, f"Prompt {row.id} sent for review. Thank you!", "success")
    return redirect(f"/label/write/{project_id}")


def _follow_up_page(
    request: Request,
    session,
    user: User,
    project_id: int,
    after: int = 0,
    form: dict | None = None,
    demonstration_id: int | None = None,
    error: str = "",
    status: int = 200,
):
    project = written_prompts.follow_up_project(session, user, project_id)
    demo, messages = written_prompts.follow_up_to_show(session, user, project, after, demonstration_id)
    context = {
        "project": project,
        "guidelines": projects.current_guidelines(session, project_id),
        "demo": demo,
        "messages": messages,
        "turns": conversation.turns(messages) + 1 if demo else 0,
        "form": form or {},
        "error": error or None,
    }
    return render(request, "labeler/follow_up.html", context, status_code=status)


@router.get("/label/follow-up/{project_id}")
def follow_up_page(
    request: Request, session: SessionDep, user: LabelerUser, project_id: IdPath, after: IdFilter = None
):
    return _follow_up_page(request, session, user, project_id, after or 0)


class FollowUpForm(BackForm):
    demonstration_id: int
    text: str = ""
    has_pii: bool = False


@router.post("/label/follow-up/{project_id}")
def follow_up(
    request: Request, session: SessionDep, user: LabelerUser, project_id: IdPath, form: Annotated[FollowUpForm, Form()]
):
    try:
        row = written_prompts.write_follow_up(
            session, user, project_id, form.demonstration_id, text=form.text, has_pii=form.has_pii
        )
    except ServiceError as exc:
        if exc.status_code != 422:
            raise  # not a conversation this labeler may continue: the plain error page says why
        values = form.model_dump(exclude={"back"})
        return _follow_up_page(
            request, session, user, project_id, 0, values, form.demonstration_id, exc.message, exc.status_code
        )
    flash(request, f"Follow-up {row.id} sent for review. Thank you!", "success")
    return redirect(f"/label/follow-up/{project_id}")


@router.get("/admin/projects/{project_id}/written")
def review_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, status: str = "pending"):
    project = projects.get_project(session, project_id)
    status = status if status in ("pending", "accepted", "rejected") else "pending"
    rows = written_prompts.listing(session, project_id, status)
    near = written_prompts.near_duplicates(session, project_id, rows) if status == "pending" else {}
    threads = written_prompts.follow_up_threads(session, rows)
    items = [(r, near.get(r.id), threads.get(r.id)) for r in rows]
    targets = project.written_prompt_targets or {}
    return render(
        request,
        "admin/written.html",
        {
            "project": project,
            "status": status,
            "items": items,
            "progress": written_prompts.progress(session, project),
            "kinds": written_prompts.KINDS,
            "kind_titles": written_prompts.KIND_TITLES,
            "categories": CATEGORIES,
            "targets": targets,
            "use_cases": "\n".join(written_prompts.use_cases(project)),
        },
    )


class SettingsForm(BackForm):
    """Targets per kind and per category (`kind_{name}`, `category_{name}`: whole numbers, empty for
    none) and the use cases, one a line."""

    model_config = ConfigDict(extra="allow")

    use_cases: str = ""
    follow_up_turns: int | None = None

    def targets(self) -> dict[str, dict[str, int]]:
        """The targets given, or ServiceError naming the first that is not a whole number."""
        extra = self.model_extra or {}
        targets: dict[str, dict[str, int]] = {"kind": {}, "category": {}}
        for group, names in (("kind", list(written_prompts.KINDS)), ("category", CATEGORIES)):
            for name in names:
                value = extra.get(f"{group}_{name}", "")
                value = (value[-1] if isinstance(value, list) else value).strip()  # repeated: the last
                if not value:
                    continue
                try:
                    number = int(value)
                except ValueError:
                    number = -1
                if number < 0:
                    raise ServiceError(f"The target for {name} must be a whole number.", status_code=422)
                targets[group][name] = number
        return targets


@router.post("/admin/projects/{project_id}/written/settings")
def settings(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, form: Annotated[SettingsForm, Form()]
):
    try:
        targets = form.targets()
        written_prompts.set_settings(
            session,
            project_id,
            targets=targets,
            cases=form.use_cases.splitlines(),
            follow_up_turns=form.follow_up_turns,
        )
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}/written")
    flash(request, "Settings saved.", "success")
    return redirect(f"/admin/projects/{project_id}/written")


class AcceptForm(BackForm):
    """The text and category as edited on the review page (empty: as written)."""

    text: str | None = None
    category: str | None = None


@router.post("/admin/projects/{project_id}/written/{written_id}/accept")
def accept(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    written_id: IdPath,
    form: Annotated[AcceptForm, Form()],
):
    try:
        row = written_prompts.accept(
            session, user, project_id, written_id, text=form.text or None, category=form.category or None
        )
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}/written")
    flash(request, f"Accepted: prompt {row.prompt_id} and its demonstration task were created.", "success")
    return redirect(f"/admin/projects/{project_id}/written")


class RejectForm(BackForm):
    reason: str = ""


@router.post("/admin/projects/{project_id}/written/{written_id}/reject")
def reject(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    written_id: IdPath,
    form: Annotated[RejectForm, Form()],
):
    try:
        written_prompts.reject(session, user, project_id, written_id, form.reason)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}/written")
    flash(request, "Rejected; the author sees the reason.", "success")
    return redirect(f"/admin/projects/{project_id}/written")
