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
