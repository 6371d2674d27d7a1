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


@pytest.mark.parametrize("field, value, message", [
    ("name", "x" * 201, "name is longer than 200 characters"),
    ("name", "bad\x00name", "name contains a NUL character"),
    ("description", "lone \udc80 surrogate", "description contains a lone surrogate"),
    ("targets", {"ranking": float("nan")}, "targets contains NaN"),
])
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
        assert "text" in r.json()["detail"] and fragment in r.json()["detail"]
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
    lines = [json.dumps({"prompt": "fine prompt"}),
             json.dumps({"prompt": "nul \x00 prompt"}),
             json.dumps({"prompt": "long id", "id": "x" * 201}),
             json.dumps({"prompt": "bad ref", "reference": "lone \udc00"}),
             json.dumps({"prompt": "bad meta", "note": "nul \x00"})]
    preview = imports.preview_import(session, project, "\n".join(lines).encode())
    assert [(e.line, e.message) for e in preview.errors] == [
        (2, "text contains a NUL character (\\u0000)"),
        (3, "external_id is longer than 200 characters"),
        (4, "reference contains a lone surrogate (not valid Unicode)"),
        (5, "meta contains a NUL character (\\u0000)"),
    ]
    ok = imports.preview_import(session, project, lines[0].encode())
    assert imports.commit(session, project, ok, source="t").preview.records[0].text == "fine prompt"
