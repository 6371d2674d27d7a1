"""The dashboard's list of what needs attention (issue 28), on SQLite and Postgres: labelers' answers
waiting for review, open flags, written prompts waiting, failed and running runs, projects whose
open tasks wait for labelers; each with its count and the page that deals with it. Archived
projects, imported feedback, dealt-with flags, old failures and paused projects stay off it."""

from datetime import timedelta

from app.db import utcnow
from app.models import (
    ReviewStatus,
    RunStatus,
    Skip,
    SkipReason,
    TrainingRun,
    WrittenPrompt,
)
from app.services import attention, tasks
from tests.worker_helpers import add_demonstrations, add_ranking, make_labeler, make_project, make_prompts


def _written(session, project, author, status=ReviewStatus.pending):
    session.add(
        WrittenPrompt(project_id=project.id, author_id=author.id, kind="plain", category="generation", text="Hi?")
    )
    session.flush()
    if status != ReviewStatus.pending:
        session.query(WrittenPrompt).filter_by(project_id=project.id).update({"status": status})


def _run(session, status, finished_days_ago=0.0, kind="sft"):
    run = TrainingRun(kind=kind, status=status, config={}, data_filter={}, summary={})
    if status in (RunStatus.failed, RunStatus.succeeded):
        run.finished_at = utcnow() - timedelta(days=finished_days_ago)
    session.add(run)
    session.flush()
    return run


def _listed(session):
    return [(a.what, a.project, a.count, a.text, a.href) for a in attention.needs_attention(session)]


def test_nothing_needs_attention_on_an_empty_instance(session, admin_client):
    assert attention.needs_attention(session) == []
    page = admin_client.get("/admin").text
    assert 'id="attention-empty"' in page and "Nothing needs attention" in page


def test_what_needs_attention_is_listed_with_counts_and_links(session, admin_client):
    alice = make_labeler(session, "alice@example.com")
    live = make_project(session, "Live")
    demos = add_demonstrations(session, live, [("a", "A"), ("b", "B"), ("c", "C")], alice)
    demos[2].review = ReviewStatus.accepted
    (prompt,) = make_prompts(session, live, ["Rank"])
    imported = add_ranking(session, live, prompt, ["x", "y"], [[0], [1]], alice)
    imported.user_id = None  # imported feedback: judged already, not counted
    skips = [SkipReason.pii, SkipReason.pii, SkipReason.harmful, SkipReason.skip, SkipReason.pii]
    for i, reason in enumerate(skips):
        flagger = make_labeler(session, f"flagger{i}@example.com")
        skip = Skip(task_id=demos[0].task_id, user_id=flagger.id, reason=reason)
        skip.dismissed_at = utcnow() if i == 4 else None  # dealt with
        session.add(skip)
    _written(session, live, alice)

    archived = make_project(session, "Archived", archived_at=utcnow())
    add_demonstrations(session, archived, [("old", "Old")], alice)
    _written(session, archived, alice)

    quiet = make_project(session, "Quiet")
    (old_answer,) = add_demonstrations(session, quiet, [("q1", "Q1")], alice)
    old_answer.created_at, old_answer.review = utcnow() - timedelta(days=2), ReviewStatus.accepted
    tasks.create_demonstration_tasks(session, quiet, make_prompts(session, quiet, ["open 1", "open 2"]))
    paused = make_project(session, "Paused", paused_at=utcnow())
    tasks.create_demonstration_tasks(session, paused, make_prompts(session, paused, ["waits"]))

    failed = _run(session, RunStatus.failed)
    _run(session, RunStatus.failed, finished_days_ago=10)
    _run(session, RunStatus.succeeded)
    _run(session, RunStatus.running)
    _run(session, RunStatus.running, kind="generate")
    queued = _run(session, RunStatus.queued, kind="reward")
    session.commit()

    assert _listed(session) == [
        ("failed", "", 1, f"Run #{failed.id} (sft) failed in the last 7 days", f"/admin/runs/{failed.id}"),
        (
            "review",
            "Live",
            2,
            "2 demonstrations waiting for review",
            f"/admin/projects/{live.id}/review?kind=demonstration&source=labelers",
        ),
        ("flags", "Live", 3, "3 prompts flagged by labelers (2 PII, 1 harmful)", f"/admin/projects/{live.id}/flags"),
        ("written", "Live", 1, "1 written prompt waiting for review", f"/admin/projects/{live.id}/written"),
        (
            "waiting",
            "Quiet",
            3,
            "3 open tasks, and no labeler worked on them in the last 24 h",
            f"/admin/projects/{quiet.id}",
        ),
        ("running", "", 2, "2 runs running", "/admin/runs?status=running"),
        ("queued", "", 1, f"Run #{queued.id} (reward) waiting for a worker", f"/admin/runs/{queued.id}"),
    ]

    page = admin_client.get("/admin").text
    assert 'id="attention-empty"' not in page
    assert f'href="/admin/projects/{live.id}/flags"' in page and "3 prompts flagged by labelers" in page
    assert f'href="/admin/runs/{failed.id}"' in page and "Archived" not in page

    # Dealt with: decided, dismissed, reviewed, retried; the list shrinks to what is left.
    for demo in demos[:2]:
        demo.review = ReviewStatus.accepted
    session.query(Skip).update({"dismissed_at": utcnow()})
    session.query(WrittenPrompt).update({"status": ReviewStatus.rejected})
    failed.finished_at = utcnow() - timedelta(days=8)
    session.commit()
    assert [what for what, *_ in _listed(session)] == ["waiting", "running", "queued"]


def test_a_project_waits_for_labelers_until_one_works_on_it(session):
    project = make_project(session, "Waiting")
    (prompt,) = make_prompts(session, project, ["open"])
    tasks.create_demonstration_tasks(session, project, [prompt])
    session.commit()
    (entry,) = attention.needs_attention(session)
    assert entry.href == "/admin/users" and entry.text.endswith("there is no active labeler; invite some")

    bob = make_labeler(session, "bob@example.com")
    project.members_only = True
    session.commit()
    (entry,) = attention.needs_attention(session)
    assert entry.href == f"/admin/projects/{project.id}"
    assert entry.text.endswith("the project is for its members only and has no active member")

    # A labeler at work on another task of the project (a ranking just now): not waiting any more.
    project.members_only = False
    (other,) = make_prompts(session, project, ["rank me"])
    ranking = add_ranking(session, project, other, ["x", "y"], [[0], [1]], bob)
    ranking.review = ReviewStatus.accepted
    session.commit()
    assert attention.needs_attention(session) == []
