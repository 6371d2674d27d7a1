"""Data lifecycle (issue 17), on SQLite and Postgres: archiving a project hides it from labelers and
makes it read-only (exports still work) until it is unarchived, on the pages and in the API."""

from app.models import Role
from app.services import accounts, tasks
from tests.conftest import PASSWORD, csrf_of, login
from tests.labeling import make_project, make_prompts


def test_an_archived_project_is_hidden_from_labelers_read_only_and_exportable(session, client, make_user):
    admin = make_user("admin@example.com", Role.admin)
    labeler = make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Old work")
    tasks.create_demonstration_tasks(session, project, make_prompts(session, project, ["Say hi"]))
    session.commit()

    assert login(client, labeler.email, PASSWORD).status_code == 303
    assert "Old work" in client.get("/label").text
    client.cookies.clear()
    assert login(client, admin.email, PASSWORD).status_code == 303
    token = csrf_of(client, f"/admin/projects/{project.id}")
    r = client.post(f"/admin/projects/{project.id}/archive", data={"csrf_token": token, "archived": "1"})
    assert r.status_code == 303
    page = client.get(f"/admin/projects/{project.id}").text
    assert "archived" in page and "Unarchive" in page

    # Read-only: settings, guidelines, imports and runs are refused with the reason; exports work.
    refused = client.post(
        f"/admin/projects/{project.id}", data={"csrf_token": token, "name": "Renamed", "k": "4", "overlap": "1"}
    )
    assert refused.status_code == 409 and "is archived" in refused.text
    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    session.commit()
    api = client.post(f"/api/v1/projects/{project.id}/prompts", json={"prompts": [{"text": "new"}]}, headers=headers)
    assert api.status_code == 409 and "is archived" in api.json()["detail"]
    run = client.post("/api/v1/runs", json={"project_id": project.id, "kind": "sft"}, headers=headers)
    assert run.status_code == 409, run.text
    assert client.get(f"/api/v1/projects/{project.id}/exports/sft", headers=headers).status_code in (200, 400)
    assert client.get(f"/api/v1/projects/{project.id}", headers=headers).json()["archived_at"] is not None

    client.cookies.clear()
    assert login(client, labeler.email, PASSWORD).status_code == 303
    assert "Old work" not in client.get("/label").text

    back = client.post(f"/api/v1/projects/{project.id}/unarchive", headers=headers)
    assert back.status_code == 200 and back.json()["archived_at"] is None
    assert "Old work" in client.get("/label").text
    assert client.post("/api/v1/projects/999999/archive", headers=headers).status_code == 404
    labeler_token = {"Authorization": f"Bearer {accounts.create_api_token(session, labeler)}"}
    session.commit()
    assert client.post(f"/api/v1/projects/{project.id}/archive", headers=labeler_token).status_code == 403


def _invite_link(page: str) -> str:
    import re

    return re.search(r'id="invite-link">[^<]*(/invite/[^<\s]+)</code>', page).group(1)


def test_invites_one_per_email_revocable_and_refused_before_typing_when_the_email_has_an_account(
    session, client, make_user
):
    admin = make_user("admin@example.com", Role.admin)
    assert login(client, admin.email, PASSWORD).status_code == 303
    token = csrf_of(client, "/admin/users")
    first = _invite_link(
        client.post("/admin/users/invite", data={"csrf_token": token, "email": "new@example.com"}).text
    )
    second_page = client.post("/admin/users/invite", data={"csrf_token": token, "email": "NEW@example.com"}).text
    second = _invite_link(second_page)
    assert "Copy link" in second_page
    # The second invite replaced the first: one open invite listed, the old link refused at once.
    users_page = client.get("/admin/users").text
    assert users_page.count("new@example.com ·") == 1
    client.cookies.clear()
    old = client.get(first)
    assert old.status_code == 410 and "revoked" in old.text
    assert client.get(second).status_code == 200

    # Revoked by the admin: refused. A new link for the same email works.
    assert login(client, admin.email, PASSWORD).status_code == 303
    from sqlalchemy import select

    from app.models import Invite

    invite_id = session.scalar(select(Invite.id).where(Invite.revoked_at.is_(None)))
    token = csrf_of(client, "/admin/users")
    assert client.post(f"/admin/invites/{invite_id}/revoke", data={"csrf_token": token}).status_code == 303
    assert "new@example.com ·" not in client.get("/admin/users").text
    third = _invite_link(client.post(f"/admin/invites/{invite_id}/resend", data={"csrf_token": token}).text)
    client.cookies.clear()
    assert client.get(second).status_code == 410
    page = client.get(third)
    assert page.status_code == 200
    form_token = csrf_of(client, third)
    password = "a long enough password"
    done = client.post(
        third, data={"csrf_token": form_token, "password": password, "password2": password, "name": "New"}
    )
    assert done.status_code == 303

    # An invite to an email that has an account since is refused when opened, not after typing.
    client.cookies.clear()
    assert login(client, admin.email, PASSWORD).status_code == 303
    make_user("taken@example.com", Role.labeler)
    token = csrf_of(client, "/admin/users")
    late = _invite_link(
        client.post("/admin/users/invite", data={"csrf_token": token, "email": "other@example.com"}).text
    )
    session.execute(
        Invite.__table__.update().where(Invite.email == "other@example.com").values(email="taken@example.com")
    )
    session.commit()
    client.cookies.clear()
    refused = client.get(late)
    assert refused.status_code == 409 and "already has an account" in refused.text


def test_a_wrong_import_is_deleted_with_its_tasks_but_not_once_labeled(session, client, make_user):
    import re

    from sqlalchemy import func, select

    from app.models import Demonstration, ImportJob, Prompt, Task

    admin = make_user("admin@example.com", Role.admin)
    labeler = make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Imports")
    session.commit()
    assert login(client, admin.email, PASSWORD).status_code == 303

    def upload(lines: list[str]) -> int:
        token = csrf_of(client, f"/admin/projects/{project.id}/import")
        data = "".join(f'{{"prompt": "{t}"}}\n' for t in lines).encode()
        fields = {"csrf_token": token, "format": "auto", "valid_pct": "0", "test_pct": "0"}
        r = client.post(f"/admin/projects/{project.id}/import/preview", data=fields, files={"file": ("w.jsonl", data)})
        upload_token = re.search(r'name="token" value="([0-9a-f]+)"', r.text).group(1)
        commit = {**fields, "token": upload_token, "filename": "wrong.jsonl", "create_tasks": "on"}
        assert client.post(f"/admin/projects/{project.id}/import", data=commit).status_code == 303
        return session.scalar(select(func.max(ImportJob.id)))

    wrong = upload(["oops 1", "oops 2", "oops 3"])
    kept = upload(["good one"])
    page = client.get(f"/admin/projects/{project.id}").text
    assert f"/imports/{wrong}" in page
    job_page = client.get(f"/admin/projects/{project.id}/imports/{wrong}").text
    assert "Delete this import" in job_page and "3 prompt(s), 3 task(s)" in job_page
    token = csrf_of(client, f"/admin/projects/{project.id}")
    r = client.post(f"/admin/projects/{project.id}/imports/{wrong}/delete", data={"csrf_token": token})
    assert r.status_code == 303
    session.expire_all()
    assert session.scalars(select(Prompt.text)).all() == ["good one"]
    assert session.scalar(select(func.count()).select_from(Task)) == 1
    assert client.get(f"/admin/projects/{project.id}/imports/{wrong}").status_code == 404

    # Once a labeler answered one of its prompts, the import stays: 409 in the API, a message on the page.
    task = session.scalar(select(Task))
    session.add(Demonstration(task_id=task.id, prompt_id=task.prompt_id, user_id=labeler.id, text="Hello"))
    session.commit()
    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    session.commit()
    refused = client.delete(f"/api/v1/projects/{project.id}/imports/{kept}", headers=headers)
    assert refused.status_code == 409 and "never deleted silently" in refused.json()["detail"]
    r = client.post(f"/admin/projects/{project.id}/imports/{kept}/delete", data={"csrf_token": token})
    assert r.status_code == 303 and "never deleted silently" in client.get(r.headers["location"]).text
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Prompt)) == 1


def test_deleting_model_versions_removes_files_keeps_a_tombstone_for_lineage_and_refuses_when_in_use(
    session, client, make_user, settings
):
    from app.models import ModelKind, ModelVersion
    from app.services import registry, runs

    admin = make_user("admin@example.com", Role.admin)
    project = make_project(session, name="Models")
    make_prompts(session, project, ["A prompt to sample for"])
    base = registry.register_base(session, "tiny-base")

    def trained(name: str, kind: ModelKind, parent: int) -> ModelVersion:
        folder = settings.artifacts_dir / "db" / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights")
        version = ModelVersion(
            name=name,
            kind=kind,
            project_id=project.id,
            source=str(folder),
            artifact_path=str(folder),
            parent_ids=[parent],
        )
        session.add(version)
        session.flush()
        return version

    sft = trained("sft", ModelKind.sft, base.id)
    reward = trained("reward", ModelKind.reward, sft.id)
    queued = runs.create_run(session, project_id=project.id, kind="generate", input_model_ids=[base.id], config={})
    session.commit()
    sft_folder, reward_folder = sft.artifact_path, reward.artifact_path
    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    session.commit()

    # In use by a queued run: refused, nothing removed.
    busy = client.delete(f"/api/v1/model-versions/{base.id}", headers=headers)
    assert busy.status_code == 409 and f"Run #{queued.id}" in busy.json()["detail"]

    # Named by a child: a tombstone; the files go; the child's lineage still reads.
    assert login(client, admin.email, PASSWORD).status_code == 303
    token = csrf_of(client, f"/admin/models/{sft.id}")
    r = client.post(f"/admin/models/{sft.id}/delete", data={"csrf_token": token})
    assert r.status_code == 303 and "stays listed as deleted" in client.get(r.headers["location"]).text
    from pathlib import Path

    assert not Path(sft_folder).exists()
    lineage = client.get(f"/api/v1/model-versions/{reward.id}", headers=headers).json()
    assert sft.id in lineage["lineage"], lineage
    assert "deleted" in client.get(f"/admin/models/{sft.id}").text
    assert f"#{sft.id} sft" not in client.get(f"/admin/runs/new?kind=reward&project={project.id}").text
    refused = client.post(
        "/api/v1/runs", json={"project_id": project.id, "kind": "reward", "input_model_ids": [sft.id]}, headers=headers
    )
    assert refused.status_code == 400 and "was deleted" in refused.json()["detail"]

    # Named by nothing: the row goes with its files.
    gone = client.delete(f"/api/v1/model-versions/{reward.id}", headers=headers)
    assert gone.status_code == 200 and gone.json() == {
        "id": reward.id,
        "tombstone": False,
        "named_by": [],
        "files_removed": True,
    }
    assert not Path(reward_folder).exists()
    assert client.get(f"/api/v1/model-versions/{reward.id}", headers=headers).status_code == 404
    assert client.delete(f"/api/v1/model-versions/{sft.id}", headers=headers).status_code == 409  # already deleted


def test_the_demos_simulated_labelers_are_marked_and_never_offered_as_real_ones(session, client, make_user):
    from worker.simulate import ensure_labelers

    admin = make_user("admin@example.com", Role.admin)
    make_user("real@example.com", Role.labeler)
    make_project(session, name="Demo")
    sims = ensure_labelers(session, 3)
    session.commit()
    assert all(u.simulated for u in sims)
    assert login(client, admin.email, PASSWORD).status_code == 303
    people = client.get("/admin/users").text
    listed, simulated_part = people.split("simulated labelers", 1)
    assert "sim-1@simulated.invalid" not in listed and "sim-1@simulated.invalid" in simulated_part
    form = client.get("/admin/runs/new?kind=sft").text
    assert f'name="exclude" value="{sims[0].id}"' not in form and "> real<" in form.replace("\n", "").replace("  ", "")
    assert '1</div><div class="stat-label">active labelers' in client.get("/admin").text.replace("\n", "")


def test_a_finished_runs_page_leads_on_to_the_next_runs_and_clones_its_settings(session, client, make_user, settings):
    import re

    from app.models import ModelKind, ModelVersion, RunStatus, TrainingRun
    from app.services import registry

    admin = make_user("admin@example.com", Role.admin)
    project = make_project(session, name="Loop")
    make_prompts(session, project, ["A prompt"])
    base = registry.register_base(session, "tiny-base")
    run = TrainingRun(
        project_id=project.id,
        kind="sft",
        config={"epochs": 2, "learning_rate": 0.001},
        input_model_ids=[base.id],
        data_filter={"splits": ["train"]},
        status=RunStatus.succeeded,
        summary={"train_loss": 1.0},
    )
    session.add(run)
    session.flush()
    sft = ModelVersion(
        name="sft", kind=ModelKind.sft, project_id=project.id, source="x", parent_ids=[base.id], run_id=run.id
    )
    session.add(sft)
    session.flush()
    reward = ModelVersion(name="rm", kind=ModelKind.reward, project_id=project.id, source="y", parent_ids=[sft.id])
    session.add(reward)
    session.commit()
    assert login(client, admin.email, PASSWORD).status_code == 303

    live = client.get(f"/admin/runs/{run.id}/live").text  # the polled part shows the model when the run ends
    assert f"/admin/models/{sft.id}" in live and "Train a reward model from this" in live
    reward_form = client.get(re.search(r'href="(/admin/runs/new\?kind=reward&models=\d+)"', live).group(1))
    assert re.search(rf'<option value="{sft.id}" selected>', reward_form.text)
    ppo_form = client.get(f"/admin/runs/new?kind=ppo&models={sft.id},{reward.id}").text
    assert re.search(rf'<option value="{sft.id}" selected>', ppo_form) and re.search(
        rf'<option value="{reward.id}" selected>', ppo_form
    )
    model_page = client.get(f"/admin/models/{reward.id}").text
    assert f"/admin/runs/new?kind=ppo&models={sft.id},{reward.id}" in model_page
    evaluate = client.get(f"/admin/models/{sft.id}").text
    assert f'name="models" value="{sft.id},{base.id}"' in evaluate, "the baseline defaults to the parent"

    clone = client.get(f"/admin/runs/new?clone={run.id}").text
    assert 'name="cfg_epochs" value="2"' in clone and 'name="cfg_learning_rate" value="0.001"' in clone
    assert re.search(rf'<option value="{base.id}" selected>', clone)


def test_members_only_projects_and_pausing_decide_what_a_labeler_is_handed(session, client, make_user):
    admin = make_user("admin@example.com", Role.admin)
    ann, bob = make_user("ann@example.com", Role.labeler), make_user("bob@example.com", Role.labeler)
    first, second = make_project(session, name="First"), make_project(session, name="Second")
    for project in (first, second):
        tasks.create_demonstration_tasks(session, project, make_prompts(session, project, [f"{project.name} prompt"]))
    session.commit()
    admin_headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    bob_headers = {"Authorization": f"Bearer {accounts.create_api_token(session, bob)}"}
    session.commit()

    # Second is for ann only (set on the project page); bob no longer sees it, nor can he lease from it.
    assert login(client, admin.email, PASSWORD).status_code == 303
    token = csrf_of(client, f"/admin/projects/{second.id}")
    r = client.post(
        f"/admin/projects/{second.id}/members", data={"csrf_token": token, "who": "members", "members": [str(ann.id)]}
    )
    assert r.status_code == 303
    work = {(w["project"], w["kind"]) for w in client.get("/api/v1/work", headers=bob_headers).json()}
    assert ("First", "demonstration") in work and ("Second", "demonstration") not in work
    refused = client.get(f"/api/v1/projects/{second.id}/next?kind=demonstration", headers=bob_headers)
    assert refused.status_code == 403 and "members only" in refused.json()["detail"]
    client.cookies.clear()
    assert login(client, ann.email, PASSWORD).status_code == 303
    home = client.get("/label").text
    assert "First" in home and "Second" in home

    # Paused: nobody is handed its tasks; resumed: back.
    # The labeler reads "paused", not "no tasks" (issue 28).
    assert client.post(f"/api/v1/projects/{first.id}/pause", headers=admin_headers).json()["paused_at"] is not None
    home = client.get("/label").text
    available, paused = home.split('data-testid="paused-projects"')
    assert "First" not in available and "First" in paused and "Paused by an admin" in paused
    assert "No tasks for you right now" not in home
    refused = client.get(f"/api/v1/projects/{first.id}/next?kind=demonstration", headers=bob_headers)
    assert refused.status_code == 403 and "is paused by an admin" in refused.json()["detail"]
    assert client.post(f"/api/v1/projects/{first.id}/resume", headers=admin_headers).json()["paused_at"] is None
    home = client.get("/label").text
    assert "First" in home and 'data-testid="paused-projects"' not in home

    # The API sets members too; an invite that names a project makes its invitee a member.
    members = client.put(
        f"/api/v1/projects/{second.id}/members",
        json={"members_only": True, "user_ids": [ann.id, bob.id]},
        headers=admin_headers,
    )
    assert members.json() == {"members_only": True, "user_ids": sorted([ann.id, bob.id])}
    assert (
        client.put(
            f"/api/v1/projects/{second.id}/members",
            json={"members_only": True, "user_ids": [999999]},
            headers=admin_headers,
        ).status_code
        == 404
    )
    raw = accounts.create_invite(
        session, "cat@example.com", role=Role.labeler, created_by=admin, ttl_s=3600, project_ids=[second.id]
    )
    session.commit()
    cat = accounts.accept_invite(session, raw, "a long enough password", name="Cat")
    session.commit()
    from app.services import projects as project_service

    assert cat.id in project_service.member_ids(session, second.id) and cat.last_login_at is not None


def test_projects_and_runs_are_deleted_unless_something_depends_on_them(session, client, make_user):
    from sqlalchemy import func, select

    from app.models import Demonstration, ModelKind, ModelVersion, Project, RunStatus, Task, TrainingRun

    admin = make_user("admin@example.com", Role.admin)
    labeler = make_user("lena@example.com", Role.labeler)
    empty, used = make_project(session, name="Scratch"), make_project(session, name="Used")
    for project in (empty, used):
        tasks.create_demonstration_tasks(session, project, make_prompts(session, project, [f"{project.name} prompt"]))
    task = session.scalar(select(Task).where(Task.project_id == used.id))
    session.add(Demonstration(task_id=task.id, prompt_id=task.prompt_id, user_id=labeler.id, text="Hi"))
    ended = TrainingRun(project_id=empty.id, kind="sft", status=RunStatus.failed, config={}, input_model_ids=[])
    made = TrainingRun(project_id=used.id, kind="sft", status=RunStatus.succeeded, config={}, input_model_ids=[])
    running = TrainingRun(project_id=used.id, kind="sft", status=RunStatus.running, config={}, input_model_ids=[])
    session.add_all([ended, made, running])
    session.flush()
    session.add(
        ModelVersion(name="m", kind=ModelKind.sft, project_id=used.id, source="x", parent_ids=[], run_id=made.id)
    )
    session.commit()
    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    session.commit()

    refused = client.delete(f"/api/v1/projects/{used.id}", headers=headers)
    assert refused.status_code == 409 and "archive the project instead" in refused.json()["detail"]
    assert client.delete(f"/api/v1/runs/{running.id}", headers=headers).status_code == 409
    kept = client.delete(f"/api/v1/runs/{made.id}", headers=headers)
    assert kept.status_code == 409 and "delete them first" in kept.json()["detail"]

    assert login(client, admin.email, PASSWORD).status_code == 303
    empty_page = client.get(f"/admin/projects/{empty.id}").text
    assert "Delete</button>" in empty_page and 'id="delete-why"' not in empty_page
    token = csrf_of(client, f"/admin/projects/{empty.id}")
    assert client.post(f"/admin/runs/{ended.id}/delete", data={"csrf_token": token}).status_code == 303
    r = client.post(f"/admin/projects/{empty.id}/delete", data={"csrf_token": token})
    assert r.status_code == 303 and "deleted with 1 prompt(s) and 1 task(s)" in client.get(r.headers["location"]).text
    empty_id, ended_id = empty.id, ended.id
    session.expire_all()
    assert session.get(Project, empty_id) is None and session.get(TrainingRun, ended_id) is None
    assert session.scalar(select(func.count()).select_from(Task)) == 1
    used_page = client.get(f"/admin/projects/{used.id}").text
    assert "Delete</button>" not in used_page
    assert "No Delete: labelers made 1 submission here" in used_page and "Archive the project instead" in used_page


def test_a_demo_project_goes_whole_with_its_simulated_submissions(session):
    from sqlalchemy import func, select

    from app.models import Demonstration, Task
    from app.services import projects as project_service
    from worker.simulate import ensure_labelers

    (sim,) = ensure_labelers(session, 1)
    demo = make_project(session, name="demo 2026-12-05")
    tasks.create_demonstration_tasks(session, demo, make_prompts(session, demo, ["Say hi"]))
    task = session.scalar(select(Task).where(Task.project_id == demo.id))
    session.add(Demonstration(task_id=task.id, prompt_id=task.prompt_id, user_id=sim.id, text="Hi"))
    session.commit()
    gone = project_service.delete_project(session, demo.id)
    session.commit()
    assert (gone.submissions, gone.simulated_submissions, gone.tasks) == (0, 1, 1)
    assert session.scalar(select(func.count()).select_from(Demonstration)) == 0


def test_prompts_and_tasks_are_deleted_until_someone_answered_them(session, client, make_user):
    from sqlalchemy import func, select

    from app.models import Demonstration, Prompt, Task

    admin = make_user("admin@example.com", Role.admin)
    labeler = make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Bits")
    prompts = make_prompts(session, project, ["keep me", "drop me", "answered"])
    made = tasks.create_demonstration_tasks(session, project, prompts)
    session.add(Demonstration(task_id=made[2].id, prompt_id=prompts[2].id, user_id=labeler.id, text="Hi"))
    session.commit()
    headers = {"Authorization": f"Bearer {accounts.create_api_token(session, admin)}"}
    session.commit()
    ids = [p.id for p in prompts] + [t.id for t in made]

    assert client.delete(f"/api/v1/projects/{project.id}/prompts/{ids[1]}", headers=headers).json() == {
        "tasks_deleted": 1
    }
    answered = client.delete(f"/api/v1/projects/{project.id}/prompts/{ids[2]}", headers=headers)
    assert answered.status_code == 409 and "never deleted silently" in answered.json()["detail"]
    assert client.delete(f"/api/v1/tasks/{ids[5]}", headers=headers).status_code == 409
    assert client.delete(f"/api/v1/projects/{project.id}/prompts/999999", headers=headers).status_code == 404
    assert login(client, admin.email, PASSWORD).status_code == 303
    token = csrf_of(client, f"/admin/tasks/{ids[3]}")
    assert client.post(f"/admin/tasks/{ids[3]}/delete", data={"csrf_token": token}).status_code == 303
    session.expire_all()
    assert sorted(session.scalars(select(Prompt.text))) == ["answered", "keep me"]
    assert session.scalar(select(func.count()).select_from(Task)) == 1
