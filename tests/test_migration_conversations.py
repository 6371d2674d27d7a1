"""Migration 0008 (issue 25): a database of single-turn prompts with tasks, demonstrations, rankings,
comparisons and revisions upgrades with every count and text intact, each prompt one user message
with its text; it downgrades again keeping every text (a conversation as its plain rendering).

The data is written through the services at head, then the database goes down to 0007 (a database
as the previous version left it) and up again; on SQLite and Postgres."""

import os

import pytest
from sqlalchemy import func, select, text

from app import conversation
from app.db import make_engine, make_sessionmaker
from app.migrate import downgrade, upgrade
from app.models import (
    Comparison,
    Completion,
    Demonstration,
    Prompt,
    Ranking,
    SubmissionRevision,
    Task,
    TaskKind,
)
from app.services import accounts, queue, submissions
from tests.labeling import make_outputs, make_project, make_prompts

BEFORE = "0007_figure_writes"
TABLES = (Prompt, Task, Demonstration, Ranking, Comparison, SubmissionRevision, Completion)
FIVE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Name a prime."},
    {"role": "assistant", "content": "7"},
    {"role": "user", "content": "Another?"},
]


def _fill(session) -> None:
    from app.models import Role
    from app.services import tasks

    labeler = accounts.create_user(session, "m@example.com", None, role=Role.labeler)
    project = make_project(session, "Migrate", k=2)
    prompts = make_prompts(session, project, ["Write a haiku\r\nabout rain", "Zähle bis drei", "Rank me", "Compare me"])
    tasks.create_demonstration_tasks(session, project, prompts[:2])
    tasks.create_ranking_task(
        session, project, prompts[2], [o.id for o in make_outputs(session, prompts[2], ["a", "b"])]
    )
    a, b = make_outputs(session, prompts[3], ["x", "y"])
    tasks.create_comparison_task(session, project, prompts[3], a.id, b.id)
    session.add(Prompt(project_id=project.id, messages=FIVE, content_hash=conversation.content_hash(FIVE)))
    session.commit()
    lease = lambda kind: queue.next_task(session, labeler.id, project, kind, default_lease_seconds=600)  # noqa: E731
    demo = submissions.submit_demonstration(session, labeler, lease(TaskKind.demonstration).task_id, "Rain falls")
    submissions.revise_demonstration(session, labeler, demo.id, "Rain falls softly")
    ranking = lease(TaskKind.ranking)
    submissions.submit_ranking(
        session,
        labeler,
        ranking.task_id,
        [[o.id] for o in ranking.outputs],
        {str(o.id): {"likert": 5, "flags": []} for o in ranking.outputs},
    )
    submissions.submit_comparison(session, labeler, lease(TaskKind.comparison).task_id, "a", "clearer")
    session.commit()


def _snapshot(engine) -> dict:
    with engine.connect() as conn:
        counts = {t.__tablename__: conn.scalar(select(func.count()).select_from(t.__table__)) for t in TABLES}
        texts = {
            r.id: (r.text, r.content_hash) for r in conn.execute(text("SELECT id, text, content_hash FROM prompts"))
        }
        answers = sorted(conn.execute(text("SELECT text FROM demonstrations")).scalars())
    return {"counts": counts, "texts": texts, "answers": answers}


def _check_round_trip(url: str) -> None:
    upgrade(url)
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        _fill(session)
    before = _snapshot(engine)
    assert before["counts"]["submission_revisions"] == 1 and before["counts"]["rankings"] == 1

    downgrade(url, BEFORE)
    as_left = _snapshot(engine)
    five = next(i for i, (t, _) in before["texts"].items() if t.startswith("User: Hi"))
    assert as_left["counts"] == before["counts"] and as_left["answers"] == before["answers"], "going down loses nothing"
    assert {i: t for i, (t, _) in as_left["texts"].items()} == {i: t for i, (t, _) in before["texts"].items()}
    # Only the conversation's hash changes: back to the hash of its text, as the earlier version had.
    assert as_left["texts"][five][1] == conversation.content_hash(conversation.single(conversation.render(FIVE)))
    assert {i: h for i, (_, h) in as_left["texts"].items() if i != five} == {
        i: h for i, (_, h) in before["texts"].items() if i != five
    }
    before = as_left
    with engine.connect() as conn:
        rendered = conn.scalar(text("SELECT text FROM prompts WHERE text LIKE 'User: Hi%'"))
        assert rendered == conversation.render(FIVE)

    upgrade(url)
    assert _snapshot(engine) == before, "coming up changes no count, no text and no hash"
    with make_sessionmaker(engine)() as session:
        for prompt in session.scalars(select(Prompt)):
            # Each prompt is its text as one user turn (the conversation too: the earlier version
            # stored it as its plain rendering, which is what comes back).
            assert prompt.messages == [{"role": "user", "content": prompt.text}]
    engine.dispose()


def test_sqlite_upgrade_keeps_every_count_and_text_and_downgrades(tmp_path):
    _check_round_trip(f"sqlite:///{tmp_path / 'conv.db'}")


@pytest.mark.postgres
def test_postgres_upgrade_keeps_every_count_and_text_and_downgrades():
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("TEST_DATABASE_URL is not set: Postgres tests skipped")
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA IF NOT EXISTS conversation_migration"))
    try:
        _check_round_trip(url + ("&" if "?" in url else "?") + "options=-csearch_path%3Dconversation_migration")
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA conversation_migration CASCADE"))
        engine.dispose()
