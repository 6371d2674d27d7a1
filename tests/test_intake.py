"""The intake API (an application's prompts through an app token) and prompt categories, on SQLite
and Postgres: dedup by long common prefix, the cap per end user, the split by end user, PII flags
and drops, the app token's single permission, bad input, the rate limit; categories in imports, the
API, exports and the data page."""

import json
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError

from app import conversation
from app.db import make_sessionmaker
from app.models import AppToken, Prompt, PromptCategory, Role, Split, Task, TaskKind
from app.services import accounts, exports, imports, intake, projects
from tests.conftest import csrf_of
from tests.labeling import make_project
from tests.test_admin_stats import World

LONG = "Write a short story about a lighthouse keeper who finds a message in a bottle. " * 4  # > 200 chars


class Intake:
    """A project with an admin (and an API token), a labeler's token and an app token."""

    def __init__(self, client, session):
        self.client, self.session = client, session
        admin = accounts.create_user(session, "intake-admin@example.com", None, role=Role.admin)
        labeler = accounts.create_user(session, "lab@example.com", None)
        self.project = make_project(session, "Assistant")
        self.other = make_project(session, "Other")
        self.admin_token = accounts.create_api_token(session, admin)
        self.labeler_token = accounts.create_api_token(session, labeler)
        self.row, self.token = intake.create_app_token(session, self.project.id, name="app", created_by=admin)
        session.commit()

    def post(self, body, *, token=None, project_id=None, **kw):
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.client.post(
            f"/api/v1/projects/{project_id or self.project.id}/intake", json=body, headers=headers, **kw
        )

    def admin(self, method, path, **kw):
        return self.client.request(
            method, f"/api/v1{path}", headers={"Authorization": f"Bearer {self.admin_token}"}, **kw
        )

    def count(self, model=Prompt) -> int:
        self.session.rollback()
        return self.session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def it(client, session):
    return Intake(client, session)


def _user_in(split: Split, project_id: int, start: int = 0) -> str:
    return next(
        f"user-{i}" for i in range(start, start + 1000) if intake.split_for_end_user(project_id, f"user-{i}") == split
    )


def test_a_prompt_is_stored_with_its_split_category_metadata_and_task(it, session):
    user = _user_in(Split.train, it.project.id)
    body = {"text": "  Summarize this paragraph for me.  ", "end_user": user, "metadata": {"app": "chat"}}
    r = it.post(body | {"category": "summarization"})
    assert r.status_code == 201, r.text
    out = r.json()
    assert out["status"] == "created" and out["split"] == "train" and out["pii"] == []
    prompt = session.get(Prompt, out["prompt_id"])
    assert prompt.text == "Summarize this paragraph for me." and prompt.category == PromptCategory.summarization
    assert prompt.meta == {"app": "chat"} and prompt.source == "intake" and prompt.pii is None
    # The end user's id is stored only hashed (with the project id), never as given.
    assert prompt.end_user_hash == intake.end_user_hash(it.project.id, user) and user not in str(prompt.meta)
    (task,) = session.scalars(select(Task).where(Task.prompt_id == prompt.id))
    assert task.kind == TaskKind.demonstration and task.required == it.project.overlap


def test_no_task_for_held_out_prompts_or_when_the_token_says_so(it, session):
    held_out = _user_in(Split.test, it.project.id)
    assert it.post({"text": "A test-split prompt.", "end_user": held_out}).json()["split"] == "test"
    _row, quiet = intake.create_app_token(session, it.project.id, create_tasks=False)
    session.commit()
    r = it.post({"text": "No task for me.", "end_user": _user_in(Split.train, it.project.id)}, token=quiet)
    assert r.status_code == 201 and r.json()["split"] == "train"
    assert it.count(Task) == 0


def test_a_prompt_sharing_a_long_prefix_is_skipped_with_a_reason(it):
    first = it.post({"text": LONG + "It ends at sea.", "end_user": "a"})
    assert first.status_code == 201
    # Same first 200 characters once lowercased and spaces collapsed; a different ending and user.
    variant = "  " + LONG.upper().replace(" ", "   \n") + "It ends in a city."
    r = it.post({"text": variant, "end_user": "b"})
    assert r.status_code == 200
    out = r.json()
    assert out["status"] == "duplicate" and out["prompt_id"] == first.json()["prompt_id"]
    assert "first 200 characters" in out["reason"]
    assert it.count() == 1
    # Shorter prompts are duplicates only when their whole (normalized) text agrees.
    assert it.post({"text": "Hello there", "end_user": "a"}).status_code == 201
    assert it.post({"text": "Hello there, friend", "end_user": "a"}).status_code == 201
    assert it.post({"text": "HELLO   there", "end_user": "c"}).json()["status"] == "duplicate"
    # The same text in another project is not a duplicate there.
    _row, other = intake.create_app_token(it.session, it.other.id)
    it.session.commit()
    assert it.post({"text": "Hello there", "end_user": "a"}, token=other, project_id=it.other.id).status_code == 201
    assert it.count() == 4


def test_the_prefix_is_unique_per_project_in_the_database(it, session):
    values = {"project_id": it.project.id, "prefix_hash": intake.prefix_hash(LONG)}
    session.add(Prompt(text=LONG + "one", content_hash="c1", **values))
    session.commit()
    session.add(Prompt(text=LONG + "two", content_hash="c2", **values))
    with pytest.raises(IntegrityError):
        session.commit()


def test_a_racing_duplicate_is_answered_as_a_duplicate(it, session, engine, db_url):
    """Another request stores the same prefix between our check and our insert (Postgres: writers
    run at once; SQLite holds the writer lock from the check, so no such race exists there)."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite's writer lock spans the check and the insert")
    from sqlalchemy import event

    raced: list[int] = []

    def before(conn, cursor, statement, params, context, executemany):
        if statement.startswith("INSERT INTO prompts") and not raced:
            with engine.connect() as other:  # a second connection commits first
                raced.append(
                    other.execute(
                        text(
                            "INSERT INTO prompts (project_id, messages, text, split, source, content_hash,"
                            " prefix_hash, meta, created_at) VALUES (:p, CAST(:m AS json), :t, 'train', 'race',"
                            " 'x', :h, '{}', now()) RETURNING id"
                        ),
                        {
                            "p": it.project.id,
                            "m": json.dumps(conversation.single(LONG + "race")),
                            "t": LONG + "race",
                            "h": intake.prefix_hash(LONG),
                        },
                    ).scalar_one()
                )
                other.commit()

    app_engine = it.client.app.state.engine
    event.listen(app_engine, "before_cursor_execute", before)
    try:
        r = it.post({"text": LONG + "mine", "end_user": "a"})
    finally:
        event.remove(app_engine, "before_cursor_execute", before)
    assert r.status_code == 200 and r.json() == {
        "status": "duplicate",
        "prompt_id": raced[0],
        "split": None,
        "pii": [],
        "reason": r.json()["reason"],
    }
    assert it.count() == 1


def test_the_201st_prompt_of_one_end_user_is_refused(it, session):
    for start in (0, 100):
        items = [intake.Item(f"Prompt number {i} from the busy user.", "busy") for i in range(start, start + 100)]
        assert {o.status for o in intake.receive(session, it.row, it.project.id, items)} == {"created"}
    assert it.count() == 200
    r = it.post({"text": "One more from the busy user.", "end_user": "busy"})
    assert r.status_code == 429 and "200 prompts" in r.json()["detail"]
    assert it.count() == 200
    assert it.post({"text": "One more from someone else.", "end_user": "calm"}).status_code == 201
    batch = it.post({"prompts": [{"text": "And again from the busy user.", "end_user": "busy"}]})
    assert batch.status_code == 200 and batch.json()["results"][0]["status"] == "refused"
    assert it.count() == 201


def test_parallel_requests_of_one_end_user_stop_exactly_at_the_cap(it, session, engine):
    """Eight requests of one end user at once, each in its own session and thread, when the user has
    room for three more (Postgres: the end user's advisory lock; SQLite: the writer lock)."""
    items = [intake.Item(f"Prompt number {i} from the busy user.", "busy") for i in range(197)]
    intake.receive(session, it.row, it.project.id, items[:100])
    intake.receive(session, it.row, it.project.id, items[100:])
    token_id, project_id = it.row.id, it.project.id
    start = threading.Barrier(8)

    def send(n: int) -> str:
        with make_sessionmaker(engine)() as s:
            token = s.get(AppToken, token_id)
            start.wait()
            (outcome,) = intake.receive(s, token, project_id, [intake.Item(f"Parallel prompt {n}.", "busy")])
            return outcome.status

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(send, range(8)))
    assert sorted(statuses) == ["created"] * 3 + ["refused"] * 5
    assert it.count() == 200


def test_every_prompt_of_one_end_user_lands_in_one_split(it, session):
    users = [_user_in(s, it.project.id) for s in Split]
    for n in range(4):
        r = it.post({"prompts": [{"text": f"Question {n} from {u}?", "end_user": u} for u in users]})
        assert [x["status"] for x in r.json()["results"]] == ["created"] * 3
    rows = session.execute(select(Prompt.end_user_hash, Prompt.split)).all()
    by_user: dict[str, set] = {}
    for h, split in rows:
        by_user.setdefault(h, set()).add(split)
    assert len(by_user) == 3 and all(len(s) == 1 for s in by_user.values())
    assert {next(iter(s)) for s in by_user.values()} == set(Split)
    # Reproducible, and near the fractions over many users.
    shares = [intake.split_for_end_user(it.project.id, f"u{i}") for i in range(5000)]
    assert shares == [intake.split_for_end_user(it.project.id, f"u{i}") for i in range(5000)]
    assert 0.08 < shares.count(Split.test) / 5000 < 0.12 and 0.08 < shares.count(Split.valid) / 5000 < 0.12


@pytest.mark.parametrize(
    "sample, kinds",
    [
        ("mail me at jane.doe+x@example.co.uk please", ["email"]),
        ("call +1 (415) 555-0100 tonight", ["phone"]),
        ("my number is 415-555-0100", ["phone"]),
        ("card 4111 1111 1111 1111 exp 12/29", ["credit_card"]),
        ("amex 378282246310005", ["credit_card"]),
        ("not a card 4111 1111 1111 1112", []),
        ("pi is 3.14159265358979", []),
        ("in 2024 we sold 1,250 units at 19.99", []),
        ("a@b and 555-0100", []),
        ("both: a@example.org, 4111-1111-1111-1111", ["credit_card", "email"]),
    ],
)
def test_pii_kinds(sample, kinds):
    assert intake.pii_kinds(sample) == kinds


def test_a_prompt_with_an_email_is_flagged_and_shown_to_admins(it, session, admin_client):
    r = it.post({"text": "Write to bob@example.com asking for a refund.", "end_user": "a"})
    assert r.status_code == 201 and r.json()["pii"] == ["email"]
    prompt = session.get(Prompt, r.json()["prompt_id"])
    assert prompt.pii == "email" and "bob@example.com" in prompt.text and "bob" not in str(prompt.meta)
    meta = it.post({"text": "Plain text.", "end_user": "a", "metadata": {"contact": "call 415-555-0100"}})
    assert meta.json()["pii"] == ["phone"]
    listed = it.admin("GET", f"/projects/{it.project.id}/prompts?pii=true").json()
    assert [(p["id"], p["pii"]) for p in listed] == [(prompt.id, ["email"]), (meta.json()["prompt_id"], ["phone"])]
    page = admin_client.get(f"/admin/data?project={it.project.id}&pii=true").text
    assert "PII: email" in page and "Write to bob@example.com" in page and "2 flagged" in page


def test_drop_stores_and_logs_nothing_of_a_prompt_with_pii(it, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "My card is 4111 1111 1111 1111, mail carol@example.com"
    r = it.post({"text": secret, "end_user": "a", "pii": "drop"})
    assert r.status_code == 200
    assert r.json() == {
        "status": "dropped",
        "prompt_id": None,
        "split": None,
        "pii": ["credit_card", "email"],
        "reason": "pii: credit_card, email",
    }
    assert it.count() == 0 and it.count(Task) == 0
    assert not any("4111" in rec.getMessage() or "carol" in rec.getMessage() for rec in caplog.records)
    assert it.post({"text": "Nothing personal here.", "end_user": "a", "pii": "drop"}).status_code == 201


def test_an_app_token_can_do_nothing_but_its_intake(it, session):
    heads = {"Authorization": f"Bearer {it.token}"}
    project_id = it.project.id
    for method, path in [
        ("GET", "/api/v1/projects"),
        ("GET", f"/api/v1/projects/{project_id}"),
        ("GET", "/api/v1/runs"),
        ("GET", "/api/v1/me"),
        ("GET", "/api/v1/work"),
        ("GET", f"/api/v1/projects/{project_id}/next"),
        ("DELETE", "/api/v1/tasks/1"),
        ("GET", f"/api/v1/projects/{project_id}/prompts"),
        ("POST", f"/api/v1/projects/{project_id}/app-tokens"),
        ("GET", f"/api/v1/projects/{project_id}/exports/sft"),
    ]:
        r = it.client.request(method, path, headers=heads, json={} if method == "POST" else None)
        assert r.status_code == 403 and "app token" in r.json()["detail"], (method, path, r.text)
    # Not another project's intake; not a page either.
    r = it.post({"text": "Hi", "end_user": "a"}, project_id=it.other.id)
    assert r.status_code == 403 and "another project" in r.json()["detail"]
    assert it.client.get("/admin/data", headers=heads).status_code in (303, 307)
    # User tokens (even an admin's) can't use the intake.
    for token in (it.admin_token, it.labeler_token):
        r = it.post({"text": "Hi", "end_user": "a"}, token=token)
        assert r.status_code == 403 and "app token" in r.json()["detail"]
    assert it.post({"text": "Hi", "end_user": "a"}, token="ilapp_nonsense").status_code == 401
    assert it.count() == 0


def test_admins_make_list_and_revoke_app_tokens(it, session):
    r = it.admin("POST", f"/projects/{it.project.id}/app-tokens", json={"name": "support bot", "create_tasks": False})
    assert r.status_code == 201
    made = r.json()
    assert made["token"].startswith("ilapp_") and made["prefix"] == made["token"][:12]
    stored = session.get(AppToken, made["id"])
    assert stored.token_hash != made["token"] and made["token"] not in str(vars(stored))
    listed = it.admin("GET", f"/projects/{it.project.id}/app-tokens").json()
    assert {t["name"] for t in listed} == {"support bot", "app"} and all(t["token"] is None for t in listed)
    assert it.post({"text": "Works.", "end_user": "a"}, token=made["token"]).status_code == 201
    assert it.admin("DELETE", f"/projects/{it.project.id}/app-tokens/{made['id']}").json()["revoked_at"]
    assert it.post({"text": "Works no more.", "end_user": "a"}, token=made["token"]).status_code == 401
    assert it.admin("DELETE", f"/projects/{it.other.id}/app-tokens/{made['id']}").status_code == 404
    heads = {"Authorization": f"Bearer {it.labeler_token}"}
    assert it.client.get(f"/api/v1/projects/{it.project.id}/app-tokens", headers=heads).status_code == 403


def test_admins_make_and_revoke_app_tokens_on_the_project_page(it, session, admin_client):
    csrf = csrf_of(admin_client, f"/admin/projects/{it.project.id}")
    page = admin_client.post(
        f"/admin/projects/{it.project.id}/app-tokens", data={"name": "web", "create_tasks": "true", "csrf_token": csrf}
    )
    assert page.status_code == 200
    raw = re.search(r"(ilapp_[\w-]+)", page.text).group(1)
    assert it.post({"text": "From the page's token.", "end_user": "a"}, token=raw).status_code == 201
    row = session.scalars(select(AppToken).where(AppToken.name == "web")).one()
    r = admin_client.post(f"/admin/projects/{it.project.id}/app-tokens/{row.id}/revoke", data={"csrf_token": csrf})
    assert r.status_code == 303
    assert raw not in admin_client.get(f"/admin/projects/{it.project.id}").text  # shown once only
    assert it.post({"text": "Revoked.", "end_user": "a"}, token=raw).status_code == 401


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"text": "", "end_user": "a"}, 422, "empty"),
        ({"text": " \n\t ", "end_user": "a"}, 422, "empty"),
        ({"text": "bad\x00byte", "end_user": "a"}, 422, "NUL"),
        ({"text": "x" * (intake.MAX_TEXT_CHARS + 1), "end_user": "a"}, 422, "limit"),
        ({"text": "Hi", "end_user": ""}, 422, "Invalid"),
        ({"text": "Hi", "end_user": "u" * 201}, 422, "Invalid"),
        ({"text": "Hi"}, 422, "Invalid"),
        ({"text": "Hi", "end_user": "a", "category": "poetry"}, 422, "Invalid"),
        ({"text": "Hi", "end_user": "a", "pii": "keep"}, 422, "Invalid"),
        ({"text": "Hi", "end_user": "a", "colour": "red"}, 422, "Invalid"),
        ({"text": "Hi", "end_user": "a", "metadata": {"k": "v" * 5000}}, 422, "metadata"),
        ({"text": "Hi", "end_user": "a", "metadata": {"k": "a\x00b"}}, 422, "NUL"),
        ({"text": 5, "end_user": "a"}, 422, "Invalid"),
        ({"prompts": []}, 422, "Invalid"),
        ({"prompts": [{"text": "Hi", "end_user": "a"}] * 101}, 422, "Invalid"),
        ({"prompts": [{"text": "Fine", "end_user": "a"}, {"text": "", "end_user": "a"}]}, 422, "prompt 2"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(it, body, status, words):
    r = it.post(body)
    assert r.status_code == status and words in r.text, r.text[:300]
    assert it.count() == 0


def test_big_bodies_unknown_and_archived_projects_are_refused(it, session):
    huge = it.client.post(
        f"/api/v1/projects/{it.project.id}/intake",
        content=b'{"end_user": "a", "text": "' + b"x" * 1_000_000 + b'"}',
        headers={"Authorization": f"Bearer {it.token}", "Content-Type": "application/json"},
    )
    assert huge.status_code == 413 and "too large" in huge.json()["detail"]
    assert it.post({"text": "Hi", "end_user": "a"}, project_id=999_999).status_code == 404
    broken = it.client.post(
        f"/api/v1/projects/{it.project.id}/intake",
        content=b"{not json",
        headers={"Authorization": f"Bearer {it.token}", "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    projects.set_archived(session, it.project.id, True)
    session.commit()
    r = it.post({"text": "Hi", "end_user": "a"})
    assert r.status_code == 409 and "archived" in r.json()["detail"]
    assert it.count() == 0


def test_the_rate_limit_answers_429_with_retry_after(it):
    it.client.app.state.intake_limiter = intake.RateLimiter(per_minute=60, burst=3)
    for n in range(3):
        assert it.post({"text": f"Prompt {n}", "end_user": "a"}).status_code == 201
    r = it.post({"text": "One too many", "end_user": "a"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "Rate limit" in r.json()["detail"]
    assert it.post({"prompts": [{"text": "Batch", "end_user": "b"}] * 2}).status_code == 429
    assert it.count() == 3
    # Each token has its own bucket.
    _row, other = intake.create_app_token(it.session, it.project.id)
    it.session.commit()
    assert it.post({"text": "Another app", "end_user": "a"}, token=other).status_code == 201


def test_a_batch_answers_per_prompt(it):
    r = it.post(
        {
            "prompts": [
                {"text": LONG + " one", "end_user": "a", "category": "generation"},
                {"text": LONG + " two", "end_user": "b"},
                {"text": "mail me: dave@example.com", "end_user": "c", "pii": "drop"},
                {"text": "Brainstorm names for a cat.", "end_user": "a", "category": "brainstorming"},
            ]
        }
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == ["created", "duplicate", "dropped", "created"]
    assert results[1]["prompt_id"] == results[0]["prompt_id"] and "first 200 characters" in results[1]["reason"]
    assert it.count() == 2


def test_a_batch_reaching_the_cap_stores_what_fits(it, session):
    items = [intake.Item(f"Prompt number {i} from the busy user.", "busy") for i in range(199)]
    intake.receive(session, it.row, it.project.id, items[:100])
    intake.receive(session, it.row, it.project.id, items[100:])
    r = it.post({"prompts": [{"text": f"Late prompt {i}.", "end_user": "busy"} for i in range(3)]})
    assert [x["status"] for x in r.json()["results"]] == ["created", "refused", "refused"]
    assert it.count() == 200


# ---------------------------------------------------------------- categories


def test_imports_read_categories_and_refuse_unknown_ones(session):
    project = make_project(session, "Imports")
    session.commit()
    data = (
        b'{"prompt": "Reword this.", "category": "rewrite"}\n{"prompt": "Who wrote Hamlet?", "category": "open QA"}\n'
    )
    result = imports.run_import(session, project, data, filename="p.jsonl")
    assert sorted((p.text, p.category) for p in result.prompts) == [
        ("Reword this.", PromptCategory.rewrite),
        ("Who wrote Hamlet?", PromptCategory.open_qa),
    ]
    assert all("category" not in p.meta for p in result.prompts)
    csv = b"prompt,category\nSort these words,classification\nTell me a joke,\n"
    preview = imports.preview_import(session, project, csv, filename="p.csv")
    assert [(r.text, r.category) for r in preview.records] == [
        ("Sort these words", PromptCategory.classification),
        ("Tell me a joke", None),
    ]
    bad = imports.preview_import(
        session, project, b'{"prompt": "A", "category": "poetry"}\n{"prompt": "B", "category": ["chat"]}\n'
    )
    assert [(e.line, "category must be one of" in e.message and "generation" in e.message) for e in bad.errors] == [
        (1, True),
        (2, True),
    ]


def test_the_api_sets_reads_and_filters_categories(it, session):
    r = it.admin(
        "POST",
        f"/projects/{it.project.id}/prompts",
        json={"prompts": [{"text": "Extract the dates.", "category": "extract"}, {"text": "Chat with me."}]},
    )
    assert r.status_code == 201, r.text
    extract_id, chat_id = r.json()["prompt_ids"]
    assert (
        it.admin(
            "POST", f"/projects/{it.project.id}/prompts", json={"prompts": [{"text": "x", "category": "nope"}]}
        ).status_code
        == 422
    )
    r = it.admin("PATCH", f"/projects/{it.project.id}/prompts/{chat_id}", json={"category": "chat"})
    assert r.status_code == 200 and r.json()["category"] == "chat"
    assert session.get(Prompt, chat_id).category == PromptCategory.chat
    assert (
        it.admin("PATCH", f"/projects/{it.project.id}/prompts/{chat_id}", json={"category": "poetry"}).status_code
        == 422
    )
    assert it.admin("PATCH", f"/projects/{it.other.id}/prompts/{chat_id}", json={"category": "chat"}).status_code == 404
    listed = it.admin("GET", f"/projects/{it.project.id}/prompts?category=extract").json()
    assert [p["id"] for p in listed] == [extract_id]
    r = it.admin("PATCH", f"/projects/{it.project.id}/prompts/{extract_id}", json={"category": None})
    assert r.status_code == 200 and r.json()["category"] is None
    projects.set_archived(session, it.project.id, True)
    session.commit()
    assert (
        it.admin("PATCH", f"/projects/{it.project.id}/prompts/{chat_id}", json={"category": "rewrite"}).status_code
        == 409
    )


def test_exports_carry_the_category(session):
    world = World(session)
    prompt = session.scalars(select(Prompt).where(Prompt.text == "prompt 1")).one()
    prompt.category = PromptCategory.closed_qa
    session.commit()
    f = exports.ExportFilter(world.project.id, splits=["train", "test"])
    sft = {r["prompt"]: r["category"] for r in exports.sft_rows(session, f)}
    assert sft == {"prompt 1": "closed_qa", "prompt 2": None}
    assert {r["category"] for r in exports.preference_rows(session, f) if r["prompt"] == "prompt 1"} == {"closed_qa"}
    assert {r["category"] for r in exports.ranking_rows(session, f)} == {None}
    line = next(exports.jsonl_lines(session, "sft", exports.ExportFilter(world.project.id)))
    assert '"category": "closed_qa"' in line


def test_the_data_page_shows_the_category_mix_and_edits_a_category(it, session, admin_client):
    for i, category in enumerate(["generation", "generation", "chat", None]):
        body = {"text": f"Prompt {i}", "end_user": "a"} | ({"category": category} if category else {})
        assert it.post(body).status_code == 201
    page = admin_client.get(f"/admin/data?project={it.project.id}").text
    assert "InstructGPT API mix (reference)" in page and "3 of 4 prompts categorized" in page
    row = re.search(
        r">generation</a></th><td class=\"num\">2</td>\s*<td class=\"num\">([\d.]+%)</td><td class=\"num muted\">([\d.]+%)",
        page,
    )
    assert row and row.groups() == ("66.7%", "45.6%")
    chat_only = admin_client.get(f"/admin/data?project={it.project.id}&category=chat").text
    assert "Prompt 2" in chat_only and "Prompt 0" not in chat_only
    uncategorized = session.scalars(select(Prompt).where(Prompt.category.is_(None))).one()
    csrf = csrf_of(admin_client, f"/admin/data?project={it.project.id}")
    r = admin_client.post(
        f"/admin/projects/{it.project.id}/prompts/{uncategorized.id}/category",
        data={"category": "rewrite", "back": f"/admin/data?project={it.project.id}", "csrf_token": csrf},
    )
    assert r.status_code == 303
    session.rollback()
    assert session.get(Prompt, uncategorized.id).category == PromptCategory.rewrite
    assert "4 of 4 prompts categorized" in admin_client.get(f"/admin/data?project={it.project.id}").text
    bad = admin_client.post(
        f"/admin/projects/{it.project.id}/prompts/{uncategorized.id}/category",
        data={"category": "poetry", "csrf_token": csrf},
    )
    assert bad.status_code == 400


# ---------------------------------------------------------------- conversations


CHAT = [
    {"role": "system", "content": "You are a travel agent."},
    {"role": "user", "content": "Plan a day in Lisbon."},
    {"role": "assistant", "content": "Morning: Belém. Afternoon: Alfama."},
    {"role": "user", "content": "  Make it rain-proof.  "},
]


def test_a_conversation_is_stored_with_its_turns(it, session):
    r = it.post({"messages": CHAT, "end_user": _user_in(Split.train, it.project.id), "category": "brainstorming"})
    assert r.status_code == 201, r.text
    prompt = session.get(Prompt, r.json()["prompt_id"])
    assert prompt.messages == CHAT[:3] + [{"role": "user", "content": "Make it rain-proof."}]
    assert prompt.text == conversation.render(prompt.messages) and prompt.text.startswith("System: You are")
    assert prompt.content_hash == conversation.content_hash(prompt.messages)
    assert prompt.prefix_hash == intake.prefix_hash(prompt.messages) != intake.prefix_hash(prompt.text)
    assert prompt.category == PromptCategory.brainstorming and prompt.source == "intake"
    (task,) = session.scalars(select(Task).where(Task.prompt_id == prompt.id))
    assert task.kind == TaskKind.demonstration
    # A one-turn conversation is the same prompt as its text.
    one = it.post({"messages": [{"role": "user", "content": "Hello there"}], "end_user": "a"})
    assert one.status_code == 201
    assert it.post({"text": "hello   THERE", "end_user": "b"}).json() == {
        "status": "duplicate",
        "prompt_id": one.json()["prompt_id"],
        "split": None,
        "pii": [],
        "reason": f"shares its first 200 characters (lowercased, spaces collapsed) with prompt {one.json()['prompt_id']}",
    }


def test_conversations_are_duplicates_when_they_agree_up_to_a_long_common_prefix_of_the_last_turn(it):
    opening = [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Once upon a time..."}]
    first = it.post({"messages": opening + [{"role": "user", "content": LONG + "Make it sad."}], "end_user": "a"})
    assert first.status_code == 201
    # The chat's first turn alone, and the chat one turn deeper, are prompts of their own (a prefix of
    # the whole rendering would have called both duplicates).
    assert it.post({"messages": opening[:1], "end_user": "a"}).status_code == 201
    deeper = opening + [
        {"role": "user", "content": "Shorter."},
        {"role": "assistant", "content": "A keeper found a bottle."},
        {"role": "user", "content": "Sadder."},
    ]
    assert it.post({"messages": deeper, "end_user": "a"}).status_code == 201
    # The same earlier turns (spacing and case aside) and the same first 200 characters of the last.
    variant = [
        {"role": "user", "content": LONG.upper()},
        {"role": "assistant", "content": "once  upon a time..."},
        {"role": "user", "content": LONG + "Make it happy."},
    ]
    r = it.post({"messages": variant, "end_user": "b"})
    assert r.status_code == 200 and r.json()["status"] == "duplicate"
    assert r.json()["prompt_id"] == first.json()["prompt_id"] and "earlier turns" in r.json()["reason"]
    # Another system message makes another prompt.
    system = [{"role": "system", "content": "Be brief."}]
    assert it.post({"messages": system + variant, "end_user": "b"}).status_code == 201
    assert it.count() == 4


def test_pii_is_looked_for_in_every_user_turn(it, session):
    chat = [
        {"role": "user", "content": "My email is dana@example.com, remember it."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "Now draft a complaint letter."},
    ]
    r = it.post({"messages": chat, "end_user": "a"})
    assert r.status_code == 201 and r.json()["pii"] == ["email"]
    assert session.get(Prompt, r.json()["prompt_id"]).pii == "email"
    dropped = it.post({"messages": chat[:2] + [{"role": "user", "content": "Again."}], "end_user": "a", "pii": "drop"})
    assert dropped.json()["status"] == "dropped" and dropped.json()["pii"] == ["email"]
    meta = it.post({"messages": chat[2:], "end_user": "a", "metadata": {"phone": "+1 415 555 0100"}})
    assert meta.json()["pii"] == ["phone"]
    # The application's own turns are not the end user's data: a support number in a reply flags nothing.
    reply = [
        {"role": "user", "content": "How do I reach support?"},
        {"role": "assistant", "content": "Call 415-555-0100."},
        {"role": "user", "content": "Thanks, and opening hours?"},
    ]
    assert it.post({"messages": reply, "end_user": "a"}).json()["pii"] == []
    assert it.count() == 3


def test_the_cap_and_the_rate_limit_count_conversations(it, monkeypatch):
    monkeypatch.setattr(intake, "MAX_PROMPTS_PER_END_USER", 2)
    it.client.app.state.intake_limiter = intake.RateLimiter(per_minute=60, burst=4)
    chats = [[{"role": "user", "content": f"Question {i}"}] for i in range(5)]
    assert it.post({"messages": chats[0], "end_user": "a"}).status_code == 201
    assert it.post({"messages": chats[1], "end_user": "a"}).status_code == 201
    capped = it.post({"messages": chats[2], "end_user": "a"})
    assert capped.status_code == 429 and "has sent 2 prompts" in capped.json()["detail"]
    assert it.post({"messages": chats[3], "end_user": "b"}).status_code == 201
    limited = it.post({"messages": chats[4], "end_user": "b"})
    assert limited.status_code == 429 and "Rate limit" in limited.json()["detail"]
    assert it.count() == 3


def _chat(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize(
    "body, words",
    [
        (
            {"messages": _chat(("user", "Hi"), ("assistant", "Hello"))},
            "messages: the conversation ends with an assistant",
        ),
        ({"messages": _chat(("system", "A"), ("system", "B"), ("user", "Hi"))}, "message 2 is a system message"),
        ({"messages": _chat(("assistant", "Hello"), ("user", "Hi"))}, "message 1 is a assistant turn where a user"),
        ({"messages": _chat(("user", "Hi"), ("user", "Again"))}, "message 2 is a user turn where a assistant"),
        (
            {"messages": _chat(("user", "Hi"), ("assistant", " \n "), ("user", "Ok"))},
            "message 2 (assistant) has no text",
        ),
        ({"messages": _chat(("system", "Be kind."))}, "only a system message"),
        ({"messages": []}, "non-empty list"),
        (
            {"messages": _chat(("user", "x" * intake.MAX_TEXT_CHARS), ("assistant", "y"), ("user", "z"))},
            "limit is 32,768",
        ),
        ({"messages": _chat(*[("user", "q"), ("assistant", "a")] * 100, ("user", "q"))}, "the limit is 200"),
        ({"messages": _chat(("user", "a\x00b"))}, "message 1 (user) contains a NUL"),
        ({"messages": _chat(("user", "Hi")), "text": "Hi"}, "either text or messages, not both"),
        ({}, "send text or messages"),
        ({"messages": _chat(("bot", "Hi"))}, "Input should be 'system', 'user' or 'assistant'"),
        ({"messages": [{"role": "user"}]}, "Field required"),
        ({"messages": "Hi"}, "Input should be a valid list"),
        (
            {"prompts": [{"text": "Fine", "end_user": "a"}, {"messages": _chat(("user", "Hi"), ("assistant", "Yo"))}]},
            "prompt 2: messages: the conversation ends with an assistant turn",
        ),
    ],
)
def test_a_malformed_conversation_is_refused_naming_the_problem(it, body, words):
    if "prompts" in body:
        body["prompts"][1]["end_user"] = "a"
    else:
        body = body | {"end_user": "a"}
    r = it.post(body)
    assert r.status_code == 422 and words in r.text, r.text[:400]
    assert it.count() == 0


def test_the_openapi_schema_documents_messages(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    fields = schema["IntakeIn"]["properties"]
    assert "exactly one of text and messages" in fields["messages"]["description"]
    assert "ending with the user's turn" in fields["messages"]["description"]
    assert schema["ChatMessage"]["properties"]["role"]["enum"] == ["system", "user", "assistant"]
