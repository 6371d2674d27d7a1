"""The labeling JSON API: next task, submit (idempotent), skip, with every bad input, on both databases."""

import pytest
from sqlalchemy import func, select

from app import conversation
from app.models import Demonstration, Prompt, Ranking, Role, Task
from app.services import accounts, tasks
from tests.labeling import comparison_setup, demo_setup, make_labelers, make_project, ranking_setup


def _auth(session, user) -> dict:
    return {"Authorization": f"Bearer {accounts.create_api_token(session, user)}"}


@pytest.fixture
def two(session):
    a, b = make_labelers(session, 2)
    heads = _auth(session, a), _auth(session, b)
    session.commit()
    return heads


def _count(session, model) -> int:
    session.commit()  # a fresh snapshot: the app wrote in its own transactions
    return session.scalar(select(func.count()).select_from(model))


def test_demonstration_flow_and_bad_input(client, session, two):
    project, tasks = demo_setup(session, n_prompts=1, max_demonstration_chars=50)
    session.commit()
    ha, hb = two
    assert client.get(f"/api/v1/projects/{project.id}/next").status_code == 401
    assert (
        client.get(f"/api/v1/projects/{project.id}/next", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert client.get("/api/v1/projects/999/next", headers=ha).status_code == 404
    r = client.get(f"/api/v1/projects/{project.id}/next", headers=ha)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["task_id"] == tasks[0].id and task["kind"] == "demonstration" and task["outputs"] == []
    assert client.get(f"/api/v1/projects/{project.id}/next", headers=hb).status_code == 204  # overlap 1: taken
    url = f"/api/v1/tasks/{task['task_id']}/submission"
    bad = [
        ({"kind": "demonstration", "text": "  "}, 400, "empty"),
        ({"kind": "demonstration", "text": "x" * 51}, 400, "limit is 50"),
        ({"kind": "demonstration"}, 422, "Invalid request"),
        ({"kind": "ranking", "order": [], "ratings": {}}, 400, "not a ranking task"),
        ({"kind": "poem", "text": "hi"}, 422, "Invalid request"),
    ]
    for body, status, message in bad:
        r = client.post(url, json=body, headers=ha)
        assert r.status_code == status and message in r.json()["detail"], (body, r.text)
    r = client.post(url, json={"kind": "demonstration", "text": "<script>alert(1)</script> fine"}, headers=hb)
    assert r.status_code == 403 and "not assigned to you" in r.json()["detail"]
    assert (
        client.post(
            "/api/v1/tasks/4242/submission", json={"kind": "demonstration", "text": "x"}, headers=ha
        ).status_code
        == 404
    )
    assert _count(session, Demonstration) == 0
    key = {**ha, "Idempotency-Key": "abc-1"}
    first = client.post(url, json={"kind": "demonstration", "text": "Hello", "time_spent_ms": 900}, headers=key)
    assert first.status_code == 201, first.text
    assert first.json()["time_spent_ms"] == 900 and first.json()["guideline_version_id"] is not None
    again = client.post(url, json={"kind": "demonstration", "text": "Hello", "time_spent_ms": 900}, headers=key)
    assert again.status_code == 200 and again.json()["replayed"] and again.json()["id"] == first.json()["id"]
    changed = client.post(url, json={"kind": "demonstration", "text": "Bye"}, headers=key)
    assert changed.status_code == 409 and "different answer" in changed.json()["detail"]
    double = client.post(url, json={"kind": "demonstration", "text": "Hello"}, headers=ha)
    assert double.status_code == 409 and "already submitted" in double.json()["detail"]
    assert _count(session, Demonstration) == 1
    assert session.scalar(select(Demonstration.text)) == "Hello"
    session.expire_all()
    assert session.get(Task, task["task_id"]).done_count == 1


def test_ranking_and_skip(client, session, two):
    project, task, outs = ranking_setup(session, n_outputs=4)
    session.commit()
    ha, hb = two
    got = client.get(f"/api/v1/projects/{project.id}/next?kind=ranking", headers=ha).json()
    assert [o["label"] for o in got["outputs"]] == ["A", "B", "C", "D"]
    ids = [o["id"] for o in got["outputs"]]
    url = f"/api/v1/tasks/{task.id}/submission"
    ratings = {str(i): {"likert": 4, "flags": []} for i in ids}
    for order, rts, message in [
        ([[ids[0]], [ids[1]]], ratings, "not in the order"),
        ([[ids[0]], [ids[0]], [ids[1]], [ids[2], ids[3]]], ratings, "more than once"),
        ([[ids[0]], [ids[1]], [ids[2], ids[3], 777]], ratings, "not one of this task"),
        ([ids], {**ratings, str(ids[0]): {"likert": 9}}, "from 1 to 7"),
        ([ids], {**ratings, str(ids[0]): {"likert": 3, "flags": ["weird"]}}, "Unknown flag"),
    ]:
        r = client.post(url, json={"kind": "ranking", "order": order, "ratings": rts}, headers=ha)
        assert r.status_code == 400 and message in r.json()["detail"], r.text
    r = client.post(
        url,
        json={
            "kind": "ranking",
            "order": [[ids[1]], [ids[0], ids[2]], [ids[3]]],
            "ratings": ratings,
            "none_acceptable": True,
        },
        headers=ha,
    )
    assert r.status_code == 201, r.text
    session.commit()
    stored = session.scalar(select(Ranking))
    assert stored.display_order == ids and stored.none_acceptable and stored.order[0] == [ids[1]]

    project2, ctask, _ = comparison_setup(session, name="Compare")
    session.commit()
    client.get(f"/api/v1/projects/{project2.id}/next?kind=comparison", headers=hb)
    r = client.post(f"/api/v1/tasks/{ctask.id}/skip", json={"reason": "spam"}, headers=hb)
    assert r.status_code == 422
    r = client.post(
        f"/api/v1/tasks/{ctask.id}/skip", json={"reason": "harmful", "note": "asks for a weapon"}, headers=hb
    )
    assert r.status_code == 200 and r.json()["reason"] == "harmful"
    assert client.get(f"/api/v1/projects/{project2.id}/next?kind=comparison", headers=hb).status_code == 204
    got = client.get(f"/api/v1/projects/{project2.id}/next?kind=comparison", headers=ha).json()
    r = client.post(f"/api/v1/tasks/{ctask.id}/submission", json={"kind": "comparison", "choice": "tie"}, headers=ha)
    assert r.status_code == 201 and got["task_id"] == ctask.id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_huge_body_refused(client, session, two, settings):
    project, tasks = demo_setup(session, n_prompts=1)
    session.commit()
    ha, _ = two
    client.get(f"/api/v1/projects/{project.id}/next", headers=ha)
    huge = "x" * (settings.max_body_bytes + 10)
    r = client.post(f"/api/v1/tasks/{tasks[0].id}/submission", json={"kind": "demonstration", "text": huge}, headers=ha)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert _count(session, Demonstration) == 0


FIVE = [
    {"role": "user", "content": "Can you recommend a short novel?"},
    {"role": "assistant", "content": "The Old Man and the Sea is short."},
    {"role": "user", "content": "What is it about?"},
    {"role": "assistant", "content": "An old fisherman and a big fish."},
    {"role": "user", "content": "Does it end well?"},
]


def test_a_conversation_through_the_api(client, session, two):
    """The labeler's task, the review queue and the flags carry every turn as `messages`; `prompt`
    stays the last user turn, as readers of the shape before conversations expect."""
    project = make_project(session, name="Chat")
    prompt = Prompt(project_id=project.id, messages=FIVE, content_hash=conversation.content_hash(FIVE))
    single = Prompt(
        project_id=project.id, text="Say hi.", content_hash=conversation.content_hash(conversation.single("Say hi."))
    )
    session.add_all([prompt, single])
    session.flush()
    demo, other = tasks.create_demonstration_tasks(session, project, [prompt, single])
    admin = accounts.create_user(session, "chat-admin@example.com", None, role=Role.admin)
    hadmin = _auth(session, admin)
    session.commit()
    ha, hb = two

    got = client.get(f"/api/v1/projects/{project.id}/next", headers=ha).json()
    assert got["task_id"] == demo.id and got["messages"] == FIVE and got["prompt"] == "Does it end well?"
    got_b = client.get(f"/api/v1/projects/{project.id}/next", headers=hb).json()
    assert got_b["task_id"] == other.id
    assert got_b["messages"] == [{"role": "user", "content": "Say hi."}] and got_b["prompt"] == "Say hi."
    r = client.post(
        f"/api/v1/tasks/{demo.id}/submission", json={"kind": "demonstration", "text": "Not for the fish."}, headers=ha
    )
    assert r.status_code == 201, r.text
    r = client.post(f"/api/v1/tasks/{other.id}/skip", json={"reason": "nonsense"}, headers=hb)
    assert r.status_code == 200, r.text

    (item,) = client.get(f"/api/v1/projects/{project.id}/review", headers=hadmin).json()["items"]
    assert item["task_id"] == demo.id and item["text"] == "Not for the fish."
    assert item["messages"] == FIVE and item["prompt"] == "Does it end well?"
    (flag,) = client.get(f"/api/v1/projects/{project.id}/flags", headers=hadmin).json()["flags"]
    assert flag["task_id"] == other.id and flag["messages"] == [{"role": "user", "content": "Say hi."}]

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model, field in [("LeasedTaskOut", "prompt"), ("ReviewItemOut", "prompt"), ("FlagOut", "prompt")]:
        props = schemas[model]["properties"]
        assert "last user turn" in props[field]["description"], model
        assert "conversation" in props["messages"]["description"] and props["messages"]["type"] == "array", model
    assert schemas["ChatMessage"]["properties"]["role"]["enum"] == ["system", "user", "assistant"]
