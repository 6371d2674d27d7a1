"""Admin pages: projects, their guidelines (versions and preview) and prompt imports."""

import re
import secrets
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse

from app.deps import AdminUser, SessionDep, SessionRoute, SettingsDep, verify_csrf
from app.markdown import render_markdown
from app.models import ImportJobStatus
from app.services import ServiceError, accounts, imports, intake, projects, stats
from app.web.params import BackForm, Id, IdPath
from app.web.render import flash, redirect, refused, render

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)
UPLOAD_TTL_S = 24 * 3600


class ProjectForm(BackForm):
    """The settings of a new or edited project (templates/admin/_project_fields.html)."""

    name: str = ""
    description: str = ""
    guidelines: str = ""
    k: int | None = None
    overlap: int | None = None
    lease_minutes: int | None = None
    target_demonstration: int | None = None
    target_ranking: int | None = None
    target_comparison: int | None = None

    def settings(self) -> projects.ProjectSettings:
        """What the service checks (every problem named at once there)."""
        if self.k is None or self.overlap is None:
            raise ServiceError("K (outputs per prompt) and Overlap are needed.")
        targets = {kind: getattr(self, f"target_{kind}") or 0 for kind in projects.TARGET_KINDS}
        return projects.ProjectSettings(
            name=self.name,
            description=self.description,
            k=self.k,
            overlap=self.overlap,
            lease_seconds=self.lease_minutes * 60 if self.lease_minutes is not None else None,
            targets=targets,
        )


@router.get("/projects")
def projects_page(request: Request, session: SessionDep, user: AdminUser):
    return render(request, "admin/projects.html", {"rows": projects.list_projects(session)})


@router.get("/projects/new")
def new_project_page(request: Request, session: SessionDep, user: AdminUser):
    return render(
        request,
        "admin/project_new.html",
        {"form": {"k": 4, "overlap": 1}, "labelers": projects.active_labeler_count(session)},
    )


@router.post("/projects")
def create_project(request: Request, session: SessionDep, user: AdminUser, form: Annotated[ProjectForm, Form()]):
    try:
        project = projects.create_project(session, form.settings(), guidelines_md=form.guidelines, created_by=user)
    except ServiceError as exc:
        return render(
            request,
            "admin/project_new.html",
            {"form": form.model_dump(), "error": exc.message, "labelers": projects.active_labeler_count(session)},
            status_code=exc.status_code,
        )
    flash(request, f"Project “{project.name}” created. Next: import prompts.", "success")
    return redirect(f"/admin/projects/{project.id}")


def _project_page(request: Request, session, project, *, status_code=200, **extra):
    ctx = {
        "project": project,
        "guidelines": projects.current_guidelines(session, project.id),
        "history": projects.guideline_history(session, project.id),
        "labelers": projects.active_labeler_count(session),
        "summary": stats.project_summary(session, project.id),
        "imports": imports.recent_jobs(session, project.id),
        "overlap_warning": projects.overlap_warning(session, project),
        "contents": projects.project_contents(session, project.id),
        "members": set(projects.member_ids(session, project.id)),
        "all_labelers": [u for u in accounts.list_users(session) if u.role.value == "labeler"],
        "app_tokens": intake.app_tokens(session, project.id),
        **extra,
    }
    return render(request, "admin/project.html", ctx, status_code=status_code)


@router.get("/projects/{project_id}")
def project_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    return _project_page(request, session, projects.get_project(session, project_id))


@router.post("/projects/{project_id}")
def update_project(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, form: Annotated[ProjectForm, Form()]
):
    project = projects.get_project(session, project_id)
    try:
        projects.update_project(session, project, form.settings())
    except ServiceError as exc:
        return _project_page(
            request, session, project, settings_error=exc.message, form=form.model_dump(), status_code=exc.status_code
        )
    flash(request, "Project settings saved.", "success")
    return redirect(f"/admin/projects/{project.id}")


class AppTokenForm(BackForm):
    name: str = ""
    create_tasks: bool = False


@router.post("/projects/{project_id}/app-tokens")
def create_app_token(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, form: Annotated[AppTokenForm, Form()]
):
    _, raw = intake.create_app_token(
        session, project_id, name=form.name, create_tasks=form.create_tasks, created_by=user
    )
    return _project_page(request, session, projects.get_project(session, project_id), new_app_token=raw)


@router.post("/projects/{project_id}/app-tokens/{token_id}/revoke")
def revoke_app_token(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, token_id: IdPath):
    row = intake.revoke_app_token(session, project_id, token_id)
    flash(request, f"App token {row.prefix}… revoked: the intake refuses it from now on.", "success")
    return redirect(f"/admin/projects/{project_id}#intake")


class MembersForm(BackForm):
    who: str = "everyone"
    """"members": only the ticked labelers see the project; anything else: every labeler."""
    members: list[Id] = []


@router.post("/projects/{project_id}/members")
def set_members(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, form: Annotated[MembersForm, Form()]
):
    members_only = form.who == "members"
    project = projects.set_members(session, project_id, members_only, form.members)
    who = f"its {len(form.members)} member(s) only" if members_only else "every labeler"
    flash(request, f"“{project.name}” is now labeled by {who}.", "success")
    return redirect(f"/admin/projects/{project.id}#members")


@router.post("/projects/{project_id}/pause")
def pause_project(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, paused: Annotated[bool, Form()] = False
):
    project = projects.set_paused(session, project_id, paused)
    flash(request, f"“{project.name}” is {'paused: no task is handed out' if paused else 'running again'}.", "success")
    return redirect(f"/admin/projects/{project.id}")


@router.post("/projects/{project_id}/delete")
def delete_project(request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, project_id: IdPath):
    name = projects.get_project(session, project_id).name
    try:
        gone = projects.delete_project(session, project_id, data_dir=settings.data_dir)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}")
    flash(request, f"Project “{name}” deleted with {gone.prompts} prompt(s) and {gone.tasks} task(s).", "success")
    return redirect("/admin/projects")


@router.post("/projects/{project_id}/archive")
def archive_project(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    archived: Annotated[bool, Form()] = False,
):
    project = projects.set_archived(session, project_id, archived)
    if archived:
        flash(request, f"“{project.name}” is archived: labelers no longer see it, and it is read-only.", "success")
    else:
        flash(request, f"“{project.name}” is active again.", "success")
    return redirect(f"/admin/projects/{project.id}")


@router.post("/projects/{project_id}/guidelines")
def save_guidelines(
    request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, body: Annotated[str, Form()] = ""
):
    project = projects.get_project(session, project_id)
    before = projects.current_guidelines(session, project.id)
    version = projects.save_guidelines(session, project, body, created_by=user)
    if before is not None and version.id == before.id:
        flash(request, "The guidelines are unchanged; no new version was made.")
    else:
        flash(request, f"Guidelines saved as version {version.version}.", "success")
    return redirect(f"/admin/projects/{project.id}#guidelines")


@router.post("/guidelines/preview", response_class=HTMLResponse)
def preview_guidelines(
    user: AdminUser, body: Annotated[str, Form()] = "", guidelines: Annotated[str, Form()] = ""
) -> HTMLResponse:
    """htmx: the Markdown rendered exactly as labelers will see it (the editor's form is sent: the
    project's guidelines editor names its field `body`, the new-project form `guidelines`)."""
    body = body or guidelines
    html = render_markdown(body) if body.strip() else '<p class="muted">Nothing to preview yet.</p>'
    return HTMLResponse(str(html))


@router.get("/projects/{project_id}/guidelines/{version}")
def guideline_version_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, version: IdPath):
    project = projects.get_project(session, project_id)
    row = projects.guideline_version(session, project.id, version)
    return render(request, "admin/guideline_version.html", {"project": project, "row": row})


# ---------------------------------------------------------------- imports


def _keep_upload(settings, project_id: int, data: bytes) -> str:
    """The previewed bytes wait on disk for the confirm step, so the import is exactly what was shown;
    in the project's folder, which goes when the project is deleted (projects.delete_project)."""
    uploads = settings.data_dir / "uploads"
    now = time.time()
    for old in uploads.glob("**/*.upload"):  # (and those of the flat folder of older versions)
        if now - old.stat().st_mtime > UPLOAD_TTL_S:
            old.unlink(missing_ok=True)
    folder = projects.upload_folder(settings.data_dir, project_id)
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    (folder / f"{token}.upload").write_bytes(data)
    return token


def _upload_path(settings, project_id: int, token: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{32}", token or ""):
        raise ServiceError("This import has expired; choose the file again.")
    path = projects.upload_folder(settings.data_dir, project_id) / f"{token}.upload"
    if not path.exists():
        raise ServiceError("This import has expired or was already done; choose the file again.")
    return path


def _import_page(request, project, *, status_code=200, **extra):
    return render(
        request,
        "admin/import.html",
        {"project": project, "formats": imports.FORMATS, "max_mb": imports.MAX_IMPORT_BYTES // (1024 * 1024), **extra},
        status_code=status_code,
    )


class ImportForm(BackForm):
    """The import page's options; the confirm step also carries the previewed upload's token."""

    format: str = "auto"
    valid_pct: float = 10
    test_pct: float = 10
    create_tasks: bool = False
    prompts_only: bool = False
    """Leave the file's feedback (pairs, ranks, answers) out: the prompts only."""
    answers_as_demonstrations: bool = False
    """Reference answers (Alpaca, GSM8K...) become imported demonstrations too."""
    token: str = ""
    filename: str = ""


@router.get("/projects/{project_id}/import")
def import_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    return _import_page(request, projects.get_project(session, project_id), form={"valid_pct": 10, "test_pct": 10})


@router.post("/projects/{project_id}/import/preview")
def import_preview(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: AdminUser,
    project_id: IdPath,
    form: Annotated[ImportForm, Form()],
    file: Annotated[UploadFile | None, File()] = None,
):
    project = projects.get_project(session, project_id)
    shown = form.model_dump()
    if file is None or not file.filename:
        return _import_page(request, project, form=shown, error="Choose a file to import.", status_code=400)
    data = file.file.read(imports.MAX_IMPORT_BYTES + 1)
    try:
        projects.check_writable(project)  # (before the upload is kept on disk for the confirm step)
        preview = imports.preview_import(
            session,
            project,
            data,
            filename=file.filename,
            fmt=form.format,
            valid_fraction=form.valid_pct / 100,
            test_fraction=form.test_pct / 100,
            feedback=not form.prompts_only,
            answers_as_demonstrations=form.answers_as_demonstrations,
        )
    except ServiceError as exc:
        return _import_page(request, project, form=shown, error=exc.message, status_code=exc.status_code)
    token = _keep_upload(settings, project.id, data) if preview.ok else None
    return _import_page(
        request,
        project,
        form=shown,
        preview=preview,
        token=token,
        status_code=200 if preview.ok or not preview.errors else 422,
    )


@router.post("/projects/{project_id}/import")
def import_commit(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: AdminUser,
    project_id: IdPath,
    form: Annotated[ImportForm, Form()],
):
    project = projects.get_project(session, project_id)
    options = {
        "fmt": form.format,
        "valid_fraction": form.valid_pct / 100,
        "test_fraction": form.test_pct / 100,
        "create_tasks": form.create_tasks,
        "feedback": not form.prompts_only,
        "answers_as_demonstrations": form.answers_as_demonstrations,
    }
    try:
        projects.check_writable(project)  # before "expired": an archived project takes no import at all
        path = _upload_path(settings, project.id, form.token)
        job = imports.start_job(session, project, filename=form.filename, options=options, created_by=user)
    except ServiceError as exc:
        return _import_page(request, project, form=form.model_dump(), error=exc.message, status_code=exc.status_code)
    finished = imports.run_upload(request.app.state.engine, job.id, path)
    if finished is None:  # a large file: its page follows the job
        return redirect(f"/admin/projects/{project.id}/imports/{job.id}")
    if finished.status != ImportJobStatus.succeeded:
        return _import_page(request, project, form=form.model_dump(), error=finished.message, status_code=409)
    flash(request, finished.message, "success")
    return redirect(f"/admin/projects/{project.id}")


@router.get("/projects/{project_id}/imports/{job_id}")
def import_job_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, job_id: IdPath):
    project = projects.get_project(session, project_id)
    job = imports.get_job(session, project.id, job_id)
    template = "admin/_import_job.html" if request.headers.get("HX-Request") else "admin/import_job.html"
    contents = imports.import_contents(session, job) if job.status.value == "succeeded" else None
    return render(request, template, {"project": project, "job": job, "contents": contents})


@router.post("/projects/{project_id}/imports/{job_id}/delete")
def delete_import(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, job_id: IdPath):
    try:
        gone = imports.delete_import(session, project_id, job_id)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}/imports/{job_id}")
    flash(
        request,
        f"Import deleted: {gone.prompts} prompt(s), {gone.tasks} task(s) and {gone.completions} model output(s).",
        "success",
    )
    return redirect(f"/admin/projects/{project_id}")
