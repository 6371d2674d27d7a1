"""The last check before the database: NUL, lone surrogates, over-long text and NaN become a 422 that
names the field, on both databases, and nothing is written."""

import json

import pytest
from sqlalchemy import func, select

from app.models import Demonstration, Project, TrainingRun
from app.services import accounts
from app.validation import InvalidValue, json_problem, text_problem
from tests.labeling import demo_setup, make_labelers, make_project


def test_text_and_json_problems():
    assert text_problem("fine text\n") is None
    assert "NUL" in text_problem("a\x00b")
    assert "surrogate" in text_problem("a\ud800b")
    assert "longer than 5" in text_problem("x" * 6, 5)
    assert json_problem({"a": [1, 2.5, {"b": "ok"}]}) is None
    assert "NaN" in json_problem({"a": [1, {"b": float("nan")}]})
    assert "NaN" in json_problem({"lr": float("inf")})
    assert "NUL" in json_problem({"k\x00": 1})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("name", "x" * 201, "name is longer than 200 characters"),
        ("name", "bad\x00name", "name contains a NUL character"),
        ("description", "lone \udc80 surrogate", "description contains a lone surrogate"),
        ("targets", {"ranking": float("nan")}, "targets contains NaN"),
    ],
)
def test_orm_writes_are_checked_at_flush(session, field, value, message):
    values = {"name": "P", field: value}
    session.add(Project(**values))
    with pytest.raises(InvalidValue, match=message):
        session.flush()
    session.rollback()
    assert session.scalar(select(func.count(Project.id))) == 0


def test_updates_are_checked_too(session):
    project = make_project(session)
    session.commit()
    project.description = "bad\x00"
    with pytest.raises(InvalidValue, match="description contains a NUL"):
        session.commit()


def test_api_answers_422_naming_the_field_and_stores_nothing(client, session):
    (labeler,) = make_labelers(session, 1)
    heads = {"Authorization": f"Bearer {accounts.create_api_token(session, labeler)}"}
    project, _ = demo_setup(session, n_prompts=1)
    session.commit()
    task = client.get(f"/api/v1/projects/{project.id}/next", headers=heads).json()
    url = f"/api/v1/tasks/{task['task_id']}/submission"
    for text, fragment in (("nul \x00 here", "NUL"), ("lone \ud800", "surrogate")):
        body = json.dumps({"kind": "demonstration", "text": text})  # \u escapes reach the server as JSON
        r = client.post(url, content=body, headers={**heads, "content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert "demonstration" in r.json()["detail"] and fragment in r.json()["detail"]
    session.commit()
    assert session.scalar(select(func.count(Demonstration.id))) == 0
    ok = client.post(url, json={"kind": "demonstration", "text": "A fine answer."}, headers=heads)
    assert ok.status_code == 201, ok.text


def test_nan_in_a_run_config_never_reaches_the_database(session):
    project = make_project(session)
    session.add(TrainingRun(project_id=project.id, kind="sft", config={"learning_rate": float("inf")}))
    with pytest.raises(InvalidValue, match="config contains NaN or Infinity"):
        session.flush()


def test_import_preview_refuses_what_the_commit_would(session):
    from app.services import imports

    project = make_project(session)
    lines = [
        json.dumps({"prompt": "fine prompt"}),
        json.dumps({"prompt": "nul \x00 prompt"}),
        json.dumps({"prompt": "long id", "id": "x" * 201}),
        json.dumps({"prompt": "bad ref", "reference": "lone \udc00"}),
        json.dumps({"prompt": "bad meta", "note": "nul \x00"}),
    ]
    preview = imports.preview_import(session, project, "\n".join(lines).encode())
    assert [(e.line, e.message) for e in preview.errors] == [
        (2, "message 1 (user) contains a NUL character (\\u0000)"),
        (3, "external_id is longer than 200 characters"),
        (4, "reference contains a lone surrogate (not valid Unicode)"),
        (5, "meta contains a NUL character (\\u0000)"),
    ]
    ok = imports.preview_import(session, project, lines[0].encode())
    assert imports.commit(session, project, ok, source="t").preview.records[0].text == "fine prompt"


def _api(session, role):
    from app.models import Role

    user = accounts.create_user(session, f"{role}@example.com", None, role=Role(role))
    heads = {"Authorization": f"Bearer {accounts.create_api_token(session, user)}"}
    session.commit()
    return heads


@pytest.mark.parametrize(
    "path, name",
    [
        ("/api/v1/projects/2147483648", "project_id"),
        ("/api/v1/projects/0/prompts", "project_id"),
        ("/api/v1/runs/99999999999999999999", "run_id"),
        ("/api/v1/runs?project_id=-3", "project_id"),
        ("/api/v1/model-versions?project_id=2147483648", "project_id"),
        ("/api/v1/runs/1/metrics?since_step=-99999999999999999999", "since_step"),
        ("/api/v1/projects/1/prompts?after=2147483648", "after"),
        ("/api/v1/model-versions/4294967296", "version_id"),
    ],
)
def test_numbers_out_of_the_databases_range_are_422_naming_the_parameter(client, session, path, name):
    r = client.get(path, headers=_api(session, "admin"))
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["loc"][-1] == name


def test_pages_refuse_out_of_range_ids_too(admin_client):
    for path in ("/admin/projects/99999999999", "/admin/runs/9223372036854775808", "/admin/models/-1"):
        r = admin_client.get(path)
        assert r.status_code == 422 and "text/html" in r.headers["content-type"], path  # the error page
        assert "Not a valid address" in r.text


def test_patch_with_null_fields(client, session):
    heads = _api(session, "admin")
    project = make_project(session, lease_seconds=600)
    session.commit()
    url = f"/api/v1/projects/{project.id}"
    r = client.patch(url, json={"name": None, "k": None}, headers=heads)
    assert r.status_code == 422 and "k, name can't be null" in r.text
    r = client.patch(url, json={"lease_seconds": None}, headers=heads)  # null: the server default
    assert r.status_code == 200 and r.json()["lease_seconds"] is None


def test_run_settings_have_bounds_and_must_be_finite(client, session):
    heads = _api(session, "admin")
    project = make_project(session)
    session.commit()
    for config, message in (
        ({"epochs": 10**18}, "epochs must be an integer within"),
        ({"epochs": 5000}, "epochs must be at most 1,000"),
        ({"learning_rate": 1e400}, "learning_rate must be a finite number"),
    ):
        body = json.dumps({"project_id": project.id, "kind": "sft", "config": config})
        r = client.post("/api/v1/runs", content=body, headers={**heads, "content-type": "application/json"})
        assert r.status_code == 422 and message in r.json()["detail"], r.text
    nan = f'{{"project_id": {project.id}, "kind": "sft", "config": {{"learning_rate": NaN}}}}'
    r = client.post("/api/v1/runs", content=nan, headers={**heads, "content-type": "application/json"})
    assert r.status_code in (400, 422) and "finite" in r.text
    session.commit()
    assert session.scalar(select(func.count(TrainingRun.id))) == 0


def test_text_parameters_of_reads_are_checked_too(client, session):
    heads = _api(session, "admin")
    for body in ({"name": "nul\x00name"}, {"name": "lone \ud800"}):
        r = client.post(
            "/api/v1/projects", content=json.dumps(body), headers={**heads, "content-type": "application/json"}
        )
        assert r.status_code == 422 and "name" in r.json()["detail"], r.text
    r = client.post(
        "/api/v1/model-versions",
        content=json.dumps({"source": "a\x00b"}),
        headers={**heads, "content-type": "application/json"},
    )
    assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text
