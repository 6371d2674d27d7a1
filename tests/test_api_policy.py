"""Least privilege on the API, route by route: every operation of the OpenAPI schema is listed
here with the roles that may call it, and a labeler gets 403 on all the others (anonymous 401).
A new route fails this test until someone decides who may call it."""

import re

import pytest

from app.models import Role
from app.services import accounts
from tests.labeling import demo_setup

LABELER_ALLOWED = {
    ("GET", "/api/v1/me"),
    ("GET", "/api/v1/work"),
    ("GET", "/api/v1/projects/{project_id}/next"),
    ("POST", "/api/v1/tasks/{task_id}/submission"),
    ("POST", "/api/v1/tasks/{task_id}/skip"),
    ("POST", "/api/v1/projects/{project_id}/written-prompts"),
    ("GET", "/api/v1/projects/{project_id}/written-prompts/mine"),
}
ADMIN_ONLY = {
    ("GET", "/api/v1/projects/{project_id}/written-prompts"),
    ("POST", "/api/v1/projects/{project_id}/written-prompts/{written_id}/accept"),
    ("POST", "/api/v1/projects/{project_id}/written-prompts/{written_id}/reject"),
    ("PUT", "/api/v1/projects/{project_id}/written-prompt-settings"),
    ("GET", "/api/v1/projects"),
    ("POST", "/api/v1/projects"),
    ("GET", "/api/v1/projects/{project_id}"),
    ("PATCH", "/api/v1/projects/{project_id}"),
    ("PUT", "/api/v1/projects/{project_id}/guidelines"),
    ("GET", "/api/v1/projects/{project_id}/prompts"),
    ("POST", "/api/v1/projects/{project_id}/prompts"),
    ("GET", "/api/v1/projects/{project_id}/exports/{kind}"),
    ("POST", "/api/v1/runs"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/{run_id}"),
    ("POST", "/api/v1/runs/{run_id}/cancel"),
    ("POST", "/api/v1/runs/{run_id}/withdraw-tasks"),
    ("POST", "/api/v1/model-versions/{version_id}/withdraw-tasks"),
    ("POST", "/api/v1/projects/{project_id}/review/accept"),
    ("GET", "/api/v1/runs/{run_id}/metrics"),
    ("GET", "/api/v1/runs/{run_id}/evaluation"),
    ("GET", "/api/v1/run-configs"),
    ("GET", "/api/v1/model-versions"),
    ("GET", "/api/v1/model-versions/{version_id}"),
    ("POST", "/api/v1/model-versions"),
    ("POST", "/api/v1/projects/{project_id}/archive"),
    ("POST", "/api/v1/projects/{project_id}/unarchive"),
    ("DELETE", "/api/v1/projects/{project_id}/imports/{job_id}"),
    ("DELETE", "/api/v1/model-versions/{version_id}"),
    ("PUT", "/api/v1/projects/{project_id}/members"),
    ("DELETE", "/api/v1/projects/{project_id}"),
    ("DELETE", "/api/v1/runs/{run_id}"),
    ("DELETE", "/api/v1/projects/{project_id}/prompts/{prompt_id}"),
    ("DELETE", "/api/v1/tasks/{task_id}"),
    ("POST", "/api/v1/projects/{project_id}/pause"),
    ("POST", "/api/v1/projects/{project_id}/resume"),
    ("GET", "/api/v1/projects/{project_id}/review"),
    ("POST", "/api/v1/reviews"),
    ("POST", "/api/v1/reviews/gold"),
    ("GET", "/api/v1/projects/{project_id}/flags"),
    ("POST", "/api/v1/projects/{project_id}/flags/{skip_id}/retire"),
    ("POST", "/api/v1/projects/{project_id}/flags/{skip_id}/dismiss"),
    ("GET", "/api/v1/projects/{project_id}/disagreements"),
    ("POST", "/api/v1/tasks/{task_id}/more-labels"),
    ("PATCH", "/api/v1/projects/{project_id}/prompts/{prompt_id}"),
    ("GET", "/api/v1/projects/{project_id}/app-tokens"),
    ("POST", "/api/v1/projects/{project_id}/app-tokens"),
    ("DELETE", "/api/v1/projects/{project_id}/app-tokens/{token_id}"),
}
APP_TOKEN_ONLY = {
    # An application's app token (one project), never a user's token: tests/test_intake.py.
    ("POST", "/api/v1/projects/{project_id}/intake"),
}


def _operations(client) -> set[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def test_every_api_operation_has_a_policy(client):
    assert _operations(client) == LABELER_ALLOWED | ADMIN_ONLY | APP_TOKEN_ONLY


@pytest.mark.parametrize("method, path", sorted(APP_TOKEN_ONLY))
def test_user_tokens_get_403_on_the_app_token_operations(client, session, method, path):
    project, _ = demo_setup(session, n_prompts=1)
    users = [accounts.create_user(session, f"{r.value}@example.com", None, role=r) for r in Role]
    tokens = [accounts.create_api_token(session, u) for u in users]
    session.commit()
    url = _url(path, project.id)
    assert client.request(method, url, json={"text": "Hi", "end_user": "a"}).status_code == 401
    for token in tokens:
        r = client.request(
            method, url, json={"text": "Hi", "end_user": "a"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 403, (method, url, r.status_code, r.text[:200])


def test_the_schema_declares_the_bearer_scheme_on_every_operation(client):
    """Swagger's "Authorize" and generated clients read the scheme from /openapi.json."""
    schema = client.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    (name,) = schemes
    missing = [
        (method, path)
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
        if {name: []} not in op.get("security", [])
    ]
    assert missing == []


def _url(path: str, project_id: int) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: {"kind": "sft"}.get(m.group(1), str(project_id)), path)


@pytest.mark.parametrize("method, path", sorted(ADMIN_ONLY))
def test_a_labeler_gets_403_on_every_admin_operation(client, session, method, path):
    project, _ = demo_setup(session, n_prompts=1)
    labeler = accounts.create_user(session, "lab@example.com", None, role=Role.labeler)
    heads = {"Authorization": f"Bearer {accounts.create_api_token(session, labeler)}"}
    session.commit()
    url = _url(path, project.id)
    body = {} if method in ("POST", "PUT", "PATCH") else None
    assert client.request(method, url, json=body).status_code == 401
    r = client.request(method, url, json=body, headers=heads)
    assert r.status_code == 403, (method, url, r.status_code, r.text[:200])


def test_a_labeler_sees_their_work_list_like_the_home_page(client, session):
    project, _ = demo_setup(session, n_prompts=3)
    labeler = accounts.create_user(session, "lab@example.com", None, role=Role.labeler)
    heads = {"Authorization": f"Bearer {accounts.create_api_token(session, labeler)}"}
    session.commit()
    assert client.get("/api/v1/work", headers=heads).json() == [
        {"project_id": project.id, "project": project.name, "kind": "demonstration", "available": 3}
    ]


def test_someone_elses_task_reveals_nothing_about_itself(client, session):
    project, (task,) = demo_setup(session, n_prompts=1)
    a, b = (accounts.create_user(session, f"{n}@example.com", None, role=Role.labeler) for n in "ab")
    ha, hb = ({"Authorization": f"Bearer {accounts.create_api_token(session, u)}"} for u in (a, b))
    session.commit()
    assert client.get(f"/api/v1/projects/{project.id}/next", headers=ha).status_code == 200
    wrong_kind = {"kind": "comparison", "choice": "a"}
    r = client.post(f"/api/v1/tasks/{task.id}/submission", json=wrong_kind, headers=hb)
    assert r.status_code == 403 and "not assigned to you" in r.json()["detail"] and "demonstration" not in r.text
    r = client.post(f"/api/v1/tasks/{task.id}/submission", json=wrong_kind, headers=ha)  # the holder is told
    assert r.status_code == 400 and "is a demonstration task" in r.json()["detail"]
