"""Admin pages: projects, their guidelines (versions and preview) and prompt imports."""

import re
import secrets
import threading
import time
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile

from app.deps import AdminUser, SessionDep, SettingsDep, verify_csrf
from app.markdown import render_markdown
from app.models import ImportJobStatus
from app.services import ServiceError, accounts, imports, intake, projects, stats
from app.web.params import IdPath, form_text, form_texts
from app.web.render import flash, redirect, refused, render

router = APIRouter(prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False)
UPLOAD_TTL_S = 24 * 3600


def _int(form: FormData, name: str, label: str) -> int | None:
    """The form's whole number, None when left empty."""
    value = form_text(form, name).strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ServiceError(f"{label} must be a whole number; got {value!r}.") from None


def _settings_from_form(form: FormData) -> projects.ProjectSettings:
    lease_min = _int(form, "lease_minutes", "The lease length")
    targets = {k: _int(form, f"target_{k}", f"The {k} target") or 0 for k in projects.TARGET_KINDS}
    k, overlap = _int(form, "k", "K (outputs per prompt)"), _int(form, "overlap", "Overlap")
    if k is None or overlap is None:
        raise ServiceError("K (outputs per prompt) and Overlap are needed.")
    return projects.ProjectSettings(
        name=form_text(form, "name"),
        description=form_text(form, "description"),
        k=k,
        overlap=overlap,
        lease_seconds=lease_min * 60 if lease_min is not None else None,
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
async def create_project(request: Request, session: SessionDep, user: AdminUser):
    form = await request.form()
    try:
        project = projects.create_project(
            session, _settings_from_form(form), guidelines_md=form_text(form, "guidelines"), created_by=user
        )
    except ServiceError as exc:
        session.rollback()
        return render(
            request,
            "admin/project_new.html",
            {"form": form, "error": exc.message, "labelers": projects.active_labeler_count(session)},
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
async def update_project(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    project = projects.get_project(session, project_id)
    form = await request.form()
    try:
        projects.update_project(session, project, _settings_from_form(form))
    except ServiceError as exc:
        session.rollback()
        project = projects.get_project(session, project_id)
        return _project_page(
            request, session, project, settings_error=exc.message, form=form, status_code=exc.status_code
        )
    flash(request, "Project settings saved.", "success")
    return redirect(f"/admin/projects/{project.id}")


@router.post("/projects/{project_id}/app-tokens")
async def create_app_token(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    form = await request.form()
    _, raw = intake.create_app_token(
        session,
        project_id,
        name=form_text(form, "name"),
        create_tasks=form_text(form, "create_tasks") == "true",
        created_by=user,
    )
    return _project_page(request, session, projects.get_project(session, project_id), new_app_token=raw)


@router.post("/projects/{project_id}/app-tokens/{token_id}/revoke")
def revoke_app_token(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, token_id: IdPath):
    row = intake.revoke_app_token(session, project_id, token_id)
    flash(request, f"App token {row.prefix}… revoked: the intake refuses it from now on.", "success")
    return redirect(f"/admin/projects/{project_id}#intake")


@router.post("/projects/{project_id}/members")
async def set_members(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    form = await request.form()
    members_only = form_text(form, "who") == "members"
    ids = [int(v) for v in form_texts(form, "members") if v.isdigit()]
    project = projects.set_members(session, project_id, members_only, ids)
    who = f"its {len(ids)} member(s) only" if members_only else "every labeler"
    flash(request, f"“{project.name}” is now labeled by {who}.", "success")
    return redirect(f"/admin/projects/{project.id}#members")


@router.post("/projects/{project_id}/pause")
async def pause_project(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    paused = form_text(await request.form(), "paused") == "1"
    project = projects.set_paused(session, project_id, paused)
    flash(request, f"“{project.name}” is {'paused: no task is handed out' if paused else 'running again'}.", "success")
    return redirect(f"/admin/projects/{project.id}")


@router.post("/projects/{project_id}/delete")
def delete_project(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    name = projects.get_project(session, project_id).name
    try:
        gone = projects.delete_project(session, project_id)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/projects/{project_id}")
    flash(request, f"Project “{name}” deleted with {gone.prompts} prompt(s) and {gone.tasks} task(s).", "success")
    return redirect("/admin/projects")


@router.post("/projects/{project_id}/archive")
async def archive_project(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    archived = form_text(await request.form(), "archived") == "1"
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
async def preview_guidelines(request: Request, user: AdminUser):
    """htmx: the Markdown rendered exactly as labelers will see it (the editor's form is sent)."""
    form = await request.form()
    body = form_text(form, "body") or form_text(form, "guidelines")
    html = render_markdown(body) if body.strip() else '<p class="muted">Nothing to preview yet.</p>'
    return HTMLResponse(str(html))


@router.get("/projects/{project_id}/guidelines/{version}")
def guideline_version_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath, version: IdPath):
    project = projects.get_project(session, project_id)
    row = projects.guideline_version(session, project.id, version)
    return render(request, "admin/guideline_version.html", {"project": project, "row": row})


# ---------------------------------------------------------------- imports


def _uploads(settings) -> Path:
    folder = settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _keep_upload(settings, data: bytes) -> str:
    """The previewed bytes wait on disk for the confirm step, so the import is exactly what was shown."""
    folder = _uploads(settings)
    now = time.time()
    for old in folder.glob("*.upload"):
        if now - old.stat().st_mtime > UPLOAD_TTL_S:
            old.unlink(missing_ok=True)
    token = secrets.token_hex(16)
    (folder / f"{token}.upload").write_bytes(data)
    return token


def _upload_path(settings, token: str) -> Path:
    if not re.fullmatch(r"[0-9a-f]{32}", token or ""):
        raise ServiceError("This import has expired; choose the file again.")
    path = _uploads(settings) / f"{token}.upload"
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


def _fractions(valid_pct: str, test_pct: str) -> tuple[float, float]:
    try:
        return float(valid_pct or 0) / 100, float(test_pct or 0) / 100
    except ValueError:
        raise ServiceError("The valid and test shares are percentages, e.g. 10.") from None


@router.get("/projects/{project_id}/import")
def import_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    return _import_page(request, projects.get_project(session, project_id), form={"valid_pct": 10, "test_pct": 10})


@router.post("/projects/{project_id}/import/preview")
async def import_preview(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, project_id: IdPath
):
    project = projects.get_project(session, project_id)
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        return _import_page(request, project, form=form, error="Choose a file to import.", status_code=400)
    data = await upload.read(imports.MAX_IMPORT_BYTES + 1)
    try:
        valid, test = _fractions(form_text(form, "valid_pct", "10"), form_text(form, "test_pct", "10"))
        preview = imports.preview_import(
            session,
            project,
            data,
            filename=upload.filename,
            fmt=form_text(form, "format", "auto"),
            valid_fraction=valid,
            test_fraction=test,
        )
    except ServiceError as exc:
        return _import_page(request, project, form=form, error=exc.message, status_code=exc.status_code)
    token = _keep_upload(settings, data) if preview.ok else None
    return _import_page(
        request,
        project,
        form=form,
        preview=preview,
        token=token,
        status_code=200 if preview.ok or not preview.errors else 422,
    )


@router.post("/projects/{project_id}/import")
async def import_commit(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, project_id: IdPath
):
    project = projects.get_project(session, project_id)
    form = await request.form()
    try:
        path = _upload_path(settings, form_text(form, "token"))
        valid, test = _fractions(form_text(form, "valid_pct", "10"), form_text(form, "test_pct", "10"))
        options = {
            "fmt": form_text(form, "format", "auto"),
            "valid_fraction": valid,
            "test_fraction": test,
            "create_tasks": form_text(form, "create_tasks") == "on",
        }
        job = imports.start_job(
            session, project, filename=form_text(form, "filename"), options=options, created_by=user
        )
    except ServiceError as exc:
        session.rollback()
        return _import_page(request, project, form=form, error=exc.message, status_code=exc.status_code)
    session.commit()
    data = path.read_bytes()
    path.unlink(missing_ok=True)
    engine = request.app.state.engine
    if len(data) > imports.BACKGROUND_MIN_BYTES:
        threading.Thread(
            target=imports.run_job, args=(engine, job.id, data), daemon=True, name=f"import-job-{job.id}"
        ).start()
        return redirect(f"/admin/projects/{project.id}/imports/{job.id}")
    job = await run_in_threadpool(imports.run_job, engine, job.id, data)
    if job.status != ImportJobStatus.succeeded:
        return _import_page(request, project, form=form, error=job.message, status_code=409)
    flash(request, job.message, "success")
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
