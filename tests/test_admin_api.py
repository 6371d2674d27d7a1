"""The projects API: bearer auth, create/patch with bad input, bulk prompts all or nothing, exports."""

import json

import pytest
from sqlalchemy import func, select

from app.models import Prompt, Role, Task
from app.services import accounts
from tests.test_admin_stats import World


@pytest.fixture
def api(client, session):
    admin = accounts.create_user(session, "api-admin@example.com", None, role=Role.admin)
    labeler = accounts.create_user(session, "api-labeler@example.com", None)
    tokens = {
        "admin": accounts.create_api_token(session, admin),
        "labeler": accounts.create_api_token(session, labeler),
    }
    session.commit()

    def call(method, path, who="admin", **kw):
        headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
        return client.request(method, f"/api/v1{path}", headers=headers, **kw)

    return call


def _count(session, model):
    session.rollback()
    return session.scalar(select(func.count()).select_from(model))


def test_auth(api):
    assert api("GET", "/projects", who=None).status_code == 401
    assert api("GET", "/projects", who="labeler").status_code == 403  # labelers use /work
    r = api("POST", "/projects", who="labeler", json={"name": "X"})
    assert r.status_code == 403 and r.json()["detail"]


def test_create_read_patch_project(api):
    r = api("POST", "/projects", json={"name": "Api", "k": 5, "guidelines": "# Rules", "targets": {"ranking": 50}})
    assert r.status_code == 201, r.text
    project = r.json()
    assert project["guidelines_version"] == 1 and project["targets"] == {"ranking": 50}
    r = api("POST", "/projects", json={"name": "api"})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    r = api("POST", "/projects", json={"name": "Big", "overlap": 51})
    assert r.status_code == 400 and "at most 50" in r.json()["detail"]
    r = api("POST", "/projects", json={"name": "Wide", "overlap": 5})  # more than the labelers: allowed (tasks wait)
    assert r.status_code == 201, r.text
    r = api("POST", "/projects", json={"name": "K", "k": 12})
    assert r.status_code == 400 and "between 2 and 9" in r.json()["detail"]
    r = api("POST", "/projects", json={"k": 3})
    assert r.status_code == 422
    r = api("PATCH", f"/projects/{project['id']}", json={"k": 3})
    assert r.status_code == 200 and r.json()["k"] == 3 and r.json()["name"] == "Api"
    r = api("PUT", f"/projects/{project['id']}/guidelines", json={"body_md": "# Rules v2"})
    assert r.json()["guidelines_version"] == 2
    assert api("GET", "/projects/999").status_code == 404
    assert [p["name"] for p in api("GET", "/projects").json()] == ["Api", "Wide"]


def test_bulk_prompts_all_or_nothing(api, session):
    pid = api("POST", "/projects", json={"name": "Bulk"}).json()["id"]
    bad = {"prompts": [{"text": "ok"}, {"text": "   "}, {"text": "x" * 60_000}]}
    r = api("POST", f"/projects/{pid}/prompts", json=bad)
    assert r.status_code == 422
    assert [e["item"] for e in r.json()["errors"]] == [2, 3]
    assert _count(session, Prompt) == 0
    good = {
        "prompts": [
            {"text": "one", "split": "test"},
            {"text": "two", "reference": "2", "external_id": "e2"},
            {"text": "one"},
        ],
        "create_tasks": True,
        "valid_fraction": 0,
        "test_fraction": 0,
    }
    r = api("POST", f"/projects/{pid}/prompts", json=good)
    assert r.status_code == 201, r.text
    body = r.json()
    assert (
        body["imported"] == 2
        and body["duplicates"] == [[3, 1]]
        and body["splits"] == {"train": 1, "valid": 0, "test": 1}
    )
    assert body["tasks_created"] == 1 and _count(session, Task) == 1
    r = api("POST", f"/projects/{pid}/prompts", json={"prompts": [{"text": "two"}]})
    assert r.status_code == 400 and "already in this project" in r.json()["detail"]
    listed = api("GET", f"/projects/{pid}/prompts?split=train").json()
    assert [(p["text"], p["reference"], p["external_id"]) for p in listed] == [("two", "2", "e2")]
    r = api(
        "POST",
        f"/projects/{pid}/prompts",
        json={"prompts": [{"text": "a"}], "valid_fraction": 0.7, "test_fraction": 0.5},
    )
    assert r.status_code == 400 and "leave some prompts" in r.json()["detail"]
    assert api("POST", f"/projects/{pid}/prompts", json={"prompts": "nope"}).status_code == 422


def test_api_exports(api, session):
    world = World(session)
    r = api("GET", f"/projects/{world.project.id}/exports/preferences")
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert len(rows) == 18 and set(rows[0]) == {"prompt", "chosen", "rejected", "split", "category"}
    chat = api("GET", f"/projects/{world.project.id}/exports/sft?format=conversational").text.splitlines()
    assert [json.loads(line)["split"] for line in chat] == ["train"] and "messages" in chat[0]
    r = api("GET", f"/projects/{world.project.id}/exports/rankings?exclude_labelers={world.l1.id}&split=train")
    assert len(r.text.splitlines()) == 2
    r = api("GET", f"/projects/{world.project.id}/exports/sft?split=valid")
    assert r.status_code == 400 and "Nothing to export" in r.json()["detail"]
    assert api("GET", f"/projects/{world.project.id}/exports/sft", who="labeler").status_code == 403
