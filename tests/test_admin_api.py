"""The projects API: bearer auth, create/patch with bad input, bulk prompts all or nothing, exports."""

import json

import pytest
from sqlalchemy import func, select

from app import conversation
from app.models import Prompt, Role, Task
from app.services import accounts, projects
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
    assert len(rows) == 18 and set(rows[0]) == {"prompt", "chosen", "rejected", "split", "category", "source"}
    chat = api("GET", f"/projects/{world.project.id}/exports/sft?format=conversational").text.splitlines()
    assert [json.loads(line)["split"] for line in chat] == ["train"]
    assert json.loads(chat[0])["prompt"] == [{"role": "user", "content": "prompt 1"}]
    r = api("GET", f"/projects/{world.project.id}/exports/rankings?exclude_labelers={world.l1.id}&split=train")
    assert len(r.text.splitlines()) == 2
    r = api("GET", f"/projects/{world.project.id}/exports/sft?split=valid")
    assert r.status_code == 400 and "Nothing to export" in r.json()["detail"]
    assert api("GET", f"/projects/{world.project.id}/exports/sft", who="labeler").status_code == 403


FIVE = [
    {"role": "user", "content": "Can you recommend a short novel?"},
    {"role": "assistant", "content": "The Old Man and the Sea is short."},
    {"role": "user", "content": "What is it about?"},
    {"role": "assistant", "content": "An old fisherman and a big fish."},
    {"role": "user", "content": "Does it end well?"},
]


def test_listed_prompts_carry_their_conversation(api, client, session):
    project = projects.create_project(session, projects.ProjectSettings(name="Chat"))
    session.add_all(
        [
            Prompt(project_id=project.id, messages=FIVE, content_hash=conversation.content_hash(FIVE)),
            Prompt(project_id=project.id, text="Say hi.", content_hash="h-hi"),
        ]
    )
    session.commit()
    listed = api("GET", f"/projects/{project.id}/prompts").json()
    assert [(p["text"], p["messages"]) for p in listed] == [
        ("Does it end well?", FIVE),  # text: the last user turn, as readers of the old shape expect
        ("Say hi.", [{"role": "user", "content": "Say hi."}]),
    ]
    props = client.get("/openapi.json").json()["components"]["schemas"]["PromptOut"]["properties"]
    assert "last user turn" in props["text"]["description"] and "conversation" in props["messages"]["description"]


def test_a_bulk_item_is_a_text_or_a_conversation_not_both(api, session):
    project = projects.create_project(session, projects.ProjectSettings(name="Either"))
    session.commit()
    for item in [{"text": "hi", "messages": FIVE}, {"reference": "no prompt"}]:
        r = api("POST", f"/projects/{project.id}/prompts", json={"prompts": [item]})
        assert r.status_code == 422 and "exactly one of text and messages" in r.text, r.text
    r = api(
        "POST", f"/projects/{project.id}/prompts", json={"prompts": [{"messages": [{"role": "bot", "content": "x"}]}]}
    )
    assert r.status_code == 422 and "role" in r.text
    assert _count(session, Prompt) == 0


def test_bulk_prompts_as_conversations(api, session):
    project = projects.create_project(session, projects.ProjectSettings(name="Bulk chat"))
    session.commit()
    items = [{"messages": FIVE, "reference": "Not for the fish."}, {"text": "Say hi."}, {"messages": FIVE}]
    r = api(
        "POST",
        f"/projects/{project.id}/prompts",
        json={"prompts": items, "create_tasks": True, "valid_fraction": 0, "test_fraction": 0},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["imported"] == 2 and body["duplicates"] == [[3, 1]] and body["tasks_created"] == 2
    listed = api("GET", f"/projects/{project.id}/prompts").json()
    assert [(p["messages"], p["text"], p["reference"]) for p in listed] == [
        (FIVE, "Does it end well?", "Not for the fish."),
        ([{"role": "user", "content": "Say hi."}], "Say hi.", None),
    ]
    session.rollback()
    stored = session.scalar(select(Prompt).where(Prompt.id == body["prompt_ids"][0]))
    assert stored.messages == FIVE and stored.text == conversation.render(FIVE)

    ends_with_answer = {"messages": FIVE[:4]}
    two_systems = {"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, *FIVE]}
    r = api(
        "POST", f"/projects/{project.id}/prompts", json={"prompts": [{"text": "fine"}, ends_with_answer, two_systems]}
    )
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["item"] for e in errors] == [2, 3]
    assert "assistant turn" in errors[0]["msg"] and "system" in errors[1]["msg"]
    assert _count(session, Prompt) == 2


def test_written_prompts_carry_their_conversation(api, session):
    """A follow-up (the user's next turn after an accepted demonstration) shows the thread it
    continues as `messages`; `text` is what the labeler wrote, the last user turn."""
    from app.models import User
    from app.services import review, written_prompts
    from tests.worker_helpers import add_demonstrations

    project = projects.create_project(session, projects.ProjectSettings(name="Grow"))
    written_prompts.set_settings(session, project.id, targets={"kind": {"plain": 5}}, cases=[], follow_up_turns=3)
    admin, labeler = (
        session.scalar(select(User).where(User.email == f"api-{r}@example.com")) for r in ("admin", "labeler")
    )
    (demo,) = add_demonstrations(
        session, project, [("What is a prime number?", "A number with two divisors.")], labeler
    )
    review.decide(session, admin, "demonstration", demo.id, "accepted")
    written_prompts.write_follow_up(session, labeler, project.id, demo.id, text="Is 1 one of them?")
    session.commit()
    thread = [
        {"role": "user", "content": "What is a prime number?"},
        {"role": "assistant", "content": "A number with two divisors."},
        {"role": "user", "content": "Is 1 one of them?"},
    ]
    plain = {"kind": "plain", "text": "Name a prime.", "category": "generation"}
    r = api("POST", f"/projects/{project.id}/written-prompts", who="labeler", json=plain)
    assert r.status_code == 201, r.text
    assert (
        r.json()["messages"] == [{"role": "user", "content": "Name a prime."}] and r.json()["demonstration_id"] is None
    )
    new, mine = api("GET", f"/projects/{project.id}/written-prompts/mine", who="labeler").json()
    assert new["kind"] == "plain" and mine["kind"] == "follow_up" and mine["demonstration_id"] == demo.id
    assert mine["messages"] == thread and mine["text"] == "Is 1 one of them?"
    pending = api("GET", f"/projects/{project.id}/written-prompts").json()
    assert [p["messages"] for p in pending] == [thread, [{"role": "user", "content": "Name a prime."}]]
    pending = pending[0]
    r = api("POST", f"/projects/{project.id}/written-prompts/{pending['id']}/accept", json={})
    assert r.status_code == 200 and r.json()["messages"] == thread and r.json()["prompt_id"] is not None
    listed = api("GET", f"/projects/{project.id}/prompts").json()
    assert [p["messages"] for p in listed][-1] == thread
