"""An archived project is read-only (issue 27, finding 5), on SQLite and Postgres: every write route
of the app (pages and API: each POST, PUT, PATCH and DELETE the app serves) is called against an
archived project, with ids of its own prompts, tasks, submissions, flags, written prompts, imports
and app tokens, and must refuse it (409 with the archive's message, or a page's redirect that shows
it) and change nothing. A route that must stay open on an archived project is listed in OPEN, with
why; a new write route fails this test until it is guarded or listed.

Also here, the other end of a project's life (finding 12): a deleted project's previewed upload
leaves the disk once the deletion commits."""

import html
import re

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.deps import AdminUser
from app.models import (
    AppToken,
    Completion,
    Demonstration,
    GuidelineVersion,
    ImportJob,
    ImportJobStatus,
    Lease,
    Project,
    ProjectMember,
    Prompt,
    Ranking,
    Role,
    RunKind,
    RunStatus,
    Skip,
    SkipReason,
    Task,
    TrainingRun,
    WrittenPrompt,
)
from app.services import accounts, intake, projects, registry, tasks, written_prompts
from tests.conftest import PASSWORD, csrf_of, login
from tests.test_handler_policy import _api_routes
from tests.worker_helpers import add_demonstrations, add_ranking, make_prompts

REFUSAL = "is archived, so it is read-only"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

OPEN = {
    # The way back, and the ways out.
    ("POST", "/admin/projects/{project_id}/archive"): "archives and unarchives: the way back to writable",
    ("POST", "/api/v1/projects/{project_id}/archive"): "archiving an archived project changes nothing",
    ("POST", "/api/v1/projects/{project_id}/unarchive"): "the way back to writable",
    ("POST", "/admin/projects/{project_id}/delete"): "deleting is allowed (refused only over real submissions)",
    ("DELETE", "/api/v1/projects/{project_id}"): "deleting is allowed (refused only over real submissions)",
    # Revoking access is always possible.
    ("POST", "/admin/projects/{project_id}/app-tokens/{token_id}/revoke"): "revoking an app token takes access away",
    ("DELETE", "/api/v1/projects/{project_id}/app-tokens/{token_id}"): "revoking an app token takes access away",
    # A labeler's held task can still be answered (projects.set_archived): the answer was asked for.
    ("POST", "/label/task/{task_id}/submit"): "a held task can still be submitted (set_archived)",
    ("POST", "/api/v1/tasks/{task_id}/submission"): "a held task can still be submitted (set_archived)",
    ("POST", "/label/task/{task_id}/skip"): "a held task can still be handed back",
    ("POST", "/api/v1/tasks/{task_id}/skip"): "a held task can still be handed back",
    ("POST", "/label/task/{task_id}/draft"): "the draft of a held task, which can still be submitted",
    # Hidden from labelers: the queue hands out no task of an archived project (it says the project
    # is not open; no lease is taken, the fingerprint below checks it).
    ("POST", "/label/p/{project_id}/{kind}"): "asks for the next task: the queue refuses an archived project",
    # No project of their own: accounts, people, runs that exist already, models.
    ("POST", "/login"): "no project",
    ("POST", "/logout"): "no project",
    ("POST", "/invite/{token}"): "no project (an invite naming projects: accounts.py)",
    ("POST", "/reset/{token}"): "no project",
    ("POST", "/account/tokens"): "the signed-in person's own account",
    ("POST", "/account/password"): "the signed-in person's own account",
    ("POST", "/account/sessions/end-others"): "the signed-in person's own account",
    ("POST", "/account/tokens/{token_id}/revoke"): "the signed-in person's own account",
    ("POST", "/admin/users/invite"): "people, not a project (an invite naming projects: accounts.py)",
    ("POST", "/admin/invites/{invite_id}/revoke"): "people, not a project",
    ("POST", "/admin/invites/{invite_id}/resend"): "people, not a project",
    ("POST", "/admin/users/{user_id}/active"): "people, not a project",
    ("POST", "/admin/users/{user_id}/end-access"): "people, not a project",
    ("POST", "/admin/users/{user_id}/reset-link"): "people, not a project",
    ("POST", "/admin/users/{user_id}/unlock"): "people, not a project",
    ("POST", "/admin/labelers/{user_id}/training"): "a labeler's data in future runs, every project",
    ("POST", "/admin/projects"): "creates a new project",
    ("POST", "/api/v1/projects"): "creates a new project",
    ("POST", "/admin/guidelines/preview"): "renders Markdown; stores nothing",
    ("POST", "/admin/runs/estimate"): "estimates a run; stores nothing",
    ("POST", "/admin/runs/{run_id}/cancel"): "a run outlives its project's state (runs stay after a delete)",
    ("POST", "/api/v1/runs/{run_id}/cancel"): "a run outlives its project's state (runs stay after a delete)",
    ("POST", "/admin/runs/{run_id}/delete"): "a run outlives its project's state (runs stay after a delete)",
    ("DELETE", "/api/v1/runs/{run_id}"): "a run outlives its project's state (runs stay after a delete)",
    ("POST", "/admin/models"): "model versions are not project data",
    ("POST", "/api/v1/model-versions"): "model versions are not project data",
    ("POST", "/admin/models/{version_id}/delete"): "model versions are not project data",
    ("DELETE", "/api/v1/model-versions/{version_id}"): "model versions are not project data",
}

# Bodies that pass each route's validation, so the request reaches the service and its guard.
FORMS = {
    "/admin/projects/{project_id}": {"name": "Renamed", "k": "2", "overlap": "1"},
    "/admin/projects/{project_id}/app-tokens": {"name": "app"},
    "/admin/projects/{project_id}/members": {"who": "members"},
    "/admin/projects/{project_id}/pause": {"paused": "true"},
    "/admin/projects/{project_id}/guidelines": {"body": "New rules."},
    "/admin/projects/{project_id}/import": {"token": "0" * 32, "filename": "p.jsonl"},
    "/admin/projects/{project_id}/prompts/{prompt_id}/category": {"category": "chat"},
    "/admin/projects/{project_id}/written/settings": {"use_cases": "Email"},
    "/admin/projects/{project_id}/written/{written_id}/reject": {"reason": "No."},
    "/admin/review/{kind}/{submission_id}": {"decision": "accepted", "revision": "1"},
    "/admin/projects/{project_id}/review/accept-shown": {"kind": "ranking", "shown": "{shown}"},
    "/admin/tasks/{task_id}/gold": {"clear": "true"},
    "/admin/runs": {"kind": "sft", "project_id": "{project_id}"},
    "/label/write/{project_id}": {"kind": "plain", "text": "A new prompt.", "category": "generation"},
    "/label/follow-up/{project_id}": {"demonstration_id": "{demonstration_id}", "text": "And then?"},
    "/label/{kind}/{submission_id}/revise": {"text": "Changed my mind."},
}
JSON = {
    "/api/v1/projects/{project_id}": {"name": "Renamed"},
    "/api/v1/projects/{project_id}/guidelines": {"body_md": "New rules."},
    "/api/v1/projects/{project_id}/members": {"members_only": True},
    "/api/v1/projects/{project_id}/prompts": {"prompts": [{"text": "A new prompt."}]},
    "/api/v1/projects/{project_id}/prompts/{prompt_id}": {"category": "chat"},
    "/api/v1/projects/{project_id}/app-tokens": {"name": "app"},
    "/api/v1/projects/{project_id}/intake": {"text": "A new prompt.", "end_user": "u1"},
    "/api/v1/projects/{project_id}/written-prompts": {"kind": "plain", "text": "New.", "category": "generation"},
    "/api/v1/projects/{project_id}/written-prompts/{written_id}/reject": {"reason": "No."},
    "/api/v1/projects/{project_id}/written-prompt-settings": {"targets": {}, "use_cases": ["Email"]},
    "/api/v1/reviews": {"kind": "ranking", "submission_id": "{submission_id}", "decision": "accepted"},
    "/api/v1/reviews/gold": {"kind": "ranking", "submission_id": "{submission_id}"},
    "/api/v1/projects/{project_id}/review/accept": {
        "kind": "ranking",
        "items": [{"submission_id": "{submission_id}", "revision": 1}],
    },
    "/api/v1/runs": {"project_id": "{project_id}", "kind": "sft"},
}
UPLOADS = {"/admin/projects/{project_id}/import/preview": {"file": ("p.jsonl", b'{"prompt": "A new prompt."}\n')}}


def _archived_world(session, make_user):
    """An archived project with one of each thing a write route names, and who calls them."""
    admin, labeler = make_user("admin@example.com", Role.admin), make_user("labeler@example.com", Role.labeler)
    project = Project(name="Archived", k=2, overlap=1, written_prompt_targets={"kind": {"plain": 5}}, follow_up_turns=3)
    session.add(project)
    session.flush()
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi")], labeler)
    ranked, spare = make_prompts(session, project, ["Rank these", "Spare prompt"])
    ranking = add_ranking(session, project, ranked, ["one", "two"], [[0], [1]], labeler)
    (spare_task,) = tasks.create_demonstration_tasks(session, project, [spare])
    flag = Skip(task_id=spare_task.id, user_id=labeler.id, reason=SkipReason.pii, note="")
    # An ended generate run whose open ranking task shows an output of a model version (withdrawals).
    version = registry.register_base(session, "/models/sampled")
    run = TrainingRun(project_id=project.id, kind=RunKind.generate, status=RunStatus.cancelled, config={})
    session.add(run)
    session.flush()
    sampled = [Completion(prompt_id=ranked.id, text=t, model_version_id=version.id) for t in ("x", "y")]
    session.add_all(sampled)
    session.flush()
    tasks.create_ranking_task(session, project, ranked, [c.id for c in sampled], source_run_id=run.id)
    job = ImportJob(project_id=project.id, filename="old.jsonl", status=ImportJobStatus.succeeded)
    session.add_all([flag, job])
    written = written_prompts.write(session, labeler, project.id, kind="plain", text="Write me", category="chat")
    app_token, app_raw = intake.create_app_token(session, project.id, name="app")
    projects.save_guidelines(session, project, "Be kind.")
    ids = {
        "project_id": project.id,
        "task_id": ranking.task_id,
        "kind": "ranking",
        "submission_id": ranking.id,
        "skip_id": flag.id,
        "written_id": written.id,
        "prompt_id": spare.id,
        "job_id": job.id,
        "token_id": app_token.id,
        "demonstration_id": demo.id,
        "run_id": run.id,
        "version_id": version.id,
        "shown": f"{ranking.id}:1",
    }
    per_route = {"/label/{kind}/{submission_id}/revise": {"kind": "demonstrations", "submission_id": demo.id}}
    heads = {
        "admin": {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"},
        "labeler": {"Authorization": f"Bearer {accounts.create_api_token(session, labeler)}"},
        "app": {"Authorization": f"Bearer {app_raw}"},
    }
    projects.set_archived(session, project.id, True)
    session.commit()
    return admin, labeler, ids, per_route, heads


def _fingerprint(session, project_id: int) -> tuple:
    """What a write to the project would change."""
    session.expire_all()
    p = session.get_one(Project, project_id)
    count = lambda model, *where: session.scalar(select(func.count()).select_from(model).where(*where))  # noqa: E731
    rows = lambda *cols: sorted(tuple(r) for r in session.execute(select(*cols)))  # noqa: E731
    return (
        (p.name, p.paused_at, p.members_only, p.archived_at, p.written_prompt_targets, p.written_use_cases),
        count(Prompt, Prompt.project_id == project_id),
        rows(Prompt.id, Prompt.category),
        rows(Task.id, Task.status, Task.required, Task.gold),
        rows(Skip.id, Skip.dismissed_at),
        rows(Demonstration.id, Demonstration.review, Demonstration.revision, Demonstration.text),
        rows(Ranking.id, Ranking.review, Ranking.revision),
        rows(WrittenPrompt.id, WrittenPrompt.status),
        count(GuidelineVersion),
        rows(ImportJob.id),
        rows(AppToken.id, AppToken.revoked_at),
        count(ProjectMember),
        count(Lease),
        count(TrainingRun),
    )


def _fill(value, ids):
    if isinstance(value, str) and re.fullmatch(r"\{(\w+)\}", value):
        return ids[value[1:-1]]
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _refusal_problem(response, client: TestClient) -> str | None:
    """None when the response refuses for the archive: 409 with its message, or a page's redirect
    to a page that shows it (a form's refused action)."""
    if response.status_code == 303:
        shown = client.get(response.headers["location"]).text
        return None if REFUSAL in html.unescape(shown) else f"303 to {response.headers['location']} without the refusal"
    if response.status_code != 409:
        return f"{response.status_code}: {html.unescape(response.text)[-300:]!r}"
    return (
        None if REFUSAL in html.unescape(response.text) else f"409 without the archive's message: {response.text[:200]}"
    )


def walk_write_routes(app, session, make_user) -> list[str]:
    """Every write route against an archived project: what did not refuse it, or changed something."""
    admin, labeler, ids, per_route, heads = _archived_world(session, make_user)
    admin_page, labeler_page = TestClient(app, follow_redirects=False), TestClient(app, follow_redirects=False)
    assert login(admin_page, admin.email, PASSWORD).status_code == 303
    assert login(labeler_page, labeler.email, PASSWORD).status_code == 303
    csrf = {admin_page: csrf_of(admin_page, "/admin"), labeler_page: csrf_of(labeler_page, "/account")}
    before = _fingerprint(session, ids["project_id"])
    routes = sorted(
        {(m, r.path) for r in _api_routes(app.routes) for m in r.methods & WRITE_METHODS},
    )
    assert len(routes) > 60  # the walk reaches the routers' endpoints
    problems = [f"OPEN lists a route the app does not have: {key}" for key in OPEN if key not in routes]
    for method, path in routes:
        if (method, path) in OPEN:
            continue
        values = ids | per_route.get(path, {})
        url = re.sub(r"\{(\w+)\}", lambda m, v=values: str(v[m.group(1)]), path)
        if path.startswith("/api/"):
            who = "app" if path.endswith("/intake") else "labeler" if path.endswith("/written-prompts") else "admin"
            client = admin_page
            r = client.request(method, url, json=_fill(JSON.get(path, {}), values), headers=heads[who])
        else:
            client = labeler_page if path.startswith("/label/") else admin_page
            data = {"csrf_token": csrf[client], **_fill(FORMS.get(path, {}), values)}
            r = client.request(method, url, data=data, files=UPLOADS.get(path))
        if problem := _refusal_problem(r, client):
            problems.append(f"{method} {path}: {problem}")
        if _fingerprint(session, ids["project_id"]) != before:
            problems.append(f"{method} {path}: changed the archived project")
            before = _fingerprint(session, ids["project_id"])
    return problems


def test_every_write_route_refuses_an_archived_project(app, session, make_user):
    assert walk_write_routes(app, session, make_user) == []


def test_the_walk_finds_a_write_route_that_forgets_the_guard(app, session, make_user):
    from app.deps import SessionDep

    @app.post("/admin/projects/{project_id}/forgetful")
    def forgetful(project_id: int, session: SessionDep, user: AdminUser):  # writes without the guard
        return {"ok": project_id}

    problems = walk_write_routes(app, session, make_user)
    assert [p.split(":")[0] for p in problems] == ["POST /admin/projects/{project_id}/forgetful"]


def _preview(client: TestClient, project_id: int, text: str) -> None:
    r = client.post(
        f"/admin/projects/{project_id}/import/preview",
        data={"csrf_token": csrf_of(client, "/admin")},
        files={"file": ("p.jsonl", f'{{"prompt": "{text}"}}\n'.encode())},
    )
    assert r.status_code == 200 and 'name="token"' in r.text, r.text[-1000:]


def test_a_deleted_projects_previewed_upload_leaves_the_disk(session, client, admin_client, make_user, settings):
    doomed, kept, by_api = (Project(name=n, k=2, overlap=1) for n in ("Doomed", "Kept", "By API"))
    session.add_all([doomed, kept, by_api])
    session.commit()
    for project in (doomed, kept, by_api):
        _preview(admin_client, project.id, f"A prompt for {project.name}")
    uploads = settings.data_dir / "uploads"
    waiting = lambda: sorted(p.name for p in uploads.rglob("*.upload"))  # noqa: E731
    assert len(waiting()) == 3, "each preview waits on disk for its confirm step"

    # A refused deletion (a real labeler's submission) rolls back: the upload stays with its project.
    labeler = make_user("writer@example.com", Role.labeler)
    add_demonstrations(session, kept, [("Say hi", "Hi")], labeler)
    session.commit()
    token = csrf_of(admin_client, "/admin")
    refused = admin_client.post(f"/admin/projects/{kept.id}/delete", data={"csrf_token": token})
    assert refused.status_code == 303 and session.get(Project, kept.id) is not None
    assert len(waiting()) == 3

    before = set(waiting())
    assert admin_client.post(f"/admin/projects/{doomed.id}/delete", data={"csrf_token": token}).status_code == 303
    gone = before - set(waiting())
    assert len(gone) == 1 and not projects.upload_folder(settings.data_dir, doomed.id).exists()

    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin_client.user)}"}
    session.commit()
    assert client.delete(f"/api/v1/projects/{by_api.id}", headers=headers).status_code == 200
    assert len(waiting()) == 1, "only the kept project's upload is left"
