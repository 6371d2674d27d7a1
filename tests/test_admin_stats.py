"""Labeler figures, agreement (pairwise rate, Kendall's tau-b), gold accuracy, data page, tasks pages."""

import json
import math
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import make_engine, make_sessionmaker, utcnow, write_session
from app.models import (
    Comparison,
    Completion,
    Demonstration,
    FigureWrites,
    Prompt,
    Ranking,
    Skip,
    SkipReason,
    Split,
    Task,
    TaskCompletion,
    TaskKind,
    TaskStatus,
)
from app.services import ServiceError, accounts, imports, projects, queue, review, stats, submissions, tasks
from tests.conftest import csrf_of


def test_compare_orders_by_hand():
    s = stats.compare_orders([[1], [2], [3], [4]], [[1], [3], [2], [4]])
    assert (s.same, s.comparable) == (5, 6) and s.tau == pytest.approx(4 / 6)
    s = stats.compare_orders([[1], [2], [3], [4]], [[1, 2], [3], [4]])
    assert (s.same, s.comparable) == (5, 5) and s.tau == pytest.approx(5 / math.sqrt(5 * 6))
    s = stats.compare_orders([[1], [2]], [[2], [1]])
    assert (s.same, s.comparable, s.tau) == (0, 1, -1.0)
    assert stats.compare_orders([[1, 2]], [[1, 2]]).tau is None


class World:
    """A small project: 3 labelers, one shared ranking task, demos, a comparison, skips."""

    def __init__(self, session):
        # No passwords: these labelers never log in, and hashing would only slow the tests down.
        self.l1, self.l2, self.l3 = (accounts.create_user(session, f"l{i}@example.com", None) for i in (1, 2, 3))
        self.project = projects.create_project(
            session, projects.ProjectSettings(name="Stats", k=4, overlap=3, targets={"ranking": 10})
        )
        p = [
            Prompt(
                project_id=self.project.id,
                text=f"prompt {i}",
                split=Split.test if i == 2 else Split.train,
                content_hash=f"h{i}",
            )
            for i in range(3)
        ]
        session.add_all(p)
        session.flush()
        c = [Completion(prompt_id=p[0].id, text=f"output {x}", source="test") for x in "abcd"]
        c2 = [Completion(prompt_id=p[1].id, text=f"answer {x}", source="test") for x in "xy"]
        session.add_all(c + c2)
        session.flush()
        self.a, self.b, self.c, self.d = (o.id for o in c)
        rank = Task(project_id=self.project.id, prompt_id=p[0].id, kind=TaskKind.ranking, required=3, done_count=3)
        rank.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(c)]
        comp = Task(project_id=self.project.id, prompt_id=p[1].id, kind=TaskKind.comparison, required=1, done_count=1)
        comp.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(c2)]
        demos = [
            Task(project_id=self.project.id, prompt_id=p[i].id, kind=TaskKind.demonstration, required=1, done_count=1)
            for i in (1, 2)
        ]
        session.add_all([rank, comp, *demos])
        session.flush()
        self.rank_task, self.comp_task, self.x, self.y = rank, comp, c2[0].id, c2[1].id
        a, b, cc, d = self.a, self.b, self.c, self.d
        now = utcnow()
        session.add_all(
            [
                Ranking(
                    task_id=rank.id,
                    user_id=self.l1.id,
                    order=[[a], [b], [cc], [d]],
                    time_spent_ms=1000,
                    ratings={str(a): {"likert": 6, "flags": ["hallucination", "sexual"]}},
                ),
                Ranking(task_id=rank.id, user_id=self.l2.id, order=[[a], [cc], [b], [d]], time_spent_ms=1000),
                Ranking(
                    task_id=rank.id,
                    user_id=self.l3.id,
                    order=[[a, b], [cc], [d]],
                    time_spent_ms=4000,
                    created_at=now - timedelta(days=2),
                ),
                Demonstration(
                    task_id=demos[0].id, prompt_id=p[1].id, user_id=self.l1.id, text="demo one", time_spent_ms=3000
                ),
                Demonstration(
                    task_id=demos[1].id, prompt_id=p[2].id, user_id=self.l2.id, text="demo two", time_spent_ms=2000
                ),
                Comparison(
                    task_id=comp.id,
                    user_id=self.l1.id,
                    a_completion_id=self.y,
                    b_completion_id=self.x,
                    choice="b",
                    time_spent_ms=2000,
                ),
                Skip(task_id=demos[1].id, user_id=self.l1.id, reason=SkipReason.pii),
                Skip(task_id=demos[0].id, user_id=self.l3.id, reason=SkipReason.skip),
            ]
        )
        session.commit()


@pytest.fixture
def world(session):
    return World(session)


def test_labeler_figures(session, world):
    rows = {r.user.email: r for r in stats.labeler_figures(session, world.project.id)}
    l1, l2, l3 = rows["l1@example.com"], rows["l2@example.com"], rows["l3@example.com"]
    assert l1.done == {"ranking": 1, "demonstration": 1, "comparison": 1}
    assert l1.median_ms == {"ranking": 1000, "demonstration": 3000, "comparison": 2000}
    assert l2.median_ms == {"ranking": 1000, "demonstration": 2000} and l3.median_ms == {"ranking": 4000}
    assert l1.skip_rate == pytest.approx(0.25) and l3.skip_rate == pytest.approx(0.5)
    assert (l1.prompt_flags, l1.output_flags) == (1, 2)
    assert (l3.prompt_flags, l3.output_flags) == (0, 0)
    other = projects.create_project(session, projects.ProjectSettings(name="Other"))
    assert all(r.total == 0 for r in stats.labeler_figures(session, other.id))


def test_one_projects_figures_equal_the_all_projects_figures(session, world):
    # Both paths compute medians differently (index reads vs one string of times per labeler): an even
    # count takes the mean of the middle two, and the last time is the newest submission's.
    newest = utcnow() + timedelta(minutes=5)
    for ms, at in [(1000, None), (6000, newest), (7000, None)]:
        task = Task(
            project_id=world.project.id,
            prompt_id=world.rank_task.prompt_id,
            kind=TaskKind.demonstration,
            required=1,
            done_count=1,
        )
        session.add(task)
        session.flush()
        session.add(
            Demonstration(
                task_id=task.id,
                prompt_id=task.prompt_id,
                user_id=world.l1.id,
                text="more",
                time_spent_ms=ms,
                **({"created_at": at} if at else {}),
            )
        )
    session.commit()
    one = {r.user.email: r for r in stats.labeler_figures(session, world.project.id, fresh=True)}
    every = {r.user.email: r for r in stats.labeler_figures(session, None, fresh=True)}
    l1 = one["l1@example.com"]
    assert l1.done["demonstration"] == 4 and l1.median_ms["demonstration"] == 4500  # 1000 3000 | 6000 7000
    assert abs(l1.last_at - newest) < timedelta(seconds=1)
    for email, row in one.items():
        other = every[email]
        assert (row.done, row.median_ms, row.skips, row.prompt_flags, row.output_flags, row.last_at) == (
            other.done,
            other.median_ms,
            other.skips,
            other.prompt_flags,
            other.output_flags,
            other.last_at,
        )


def test_agreement(session, world):
    ag = stats.ranking_agreement(session, world.project.id)
    # l1-l2: 5 of 6 pairs; l1-l3: 5 of 5; l2-l3: 4 of 5 (l3 tied a and b).
    assert (ag.project.same, ag.project.comparable) == (14, 16)
    assert ag.shared_tasks == 1
    l1 = ag.per_labeler[world.l1.id]
    assert (l1.same, l1.comparable) == (10, 11)
    assert ag.per_pair[(world.l1.id, world.l2.id)].tau == pytest.approx(4 / 6)


def test_gold_accuracy(session, world):
    review.set_gold(session, world.rank_task, {"order": [[world.a], [world.b], [world.c], [world.d]]})
    review.set_gold(session, world.comp_task, {"winner": world.x})
    session.commit()
    gold = stats.gold_accuracy(session, world.project.id)
    assert gold[world.l1.id] == (2, 1.0)
    assert gold[world.l2.id] == (1, pytest.approx(5 / 6))
    assert gold[world.l3.id] == (1, pytest.approx(5 / 6))  # the a = b tie counts wrong
    for bad in [
        {"order": [[world.a], [world.b]]},
        {"order": [[world.a, world.a], [world.b], [world.c], [world.d]]},
        {"order": "a>b"},
    ]:
        with pytest.raises(ServiceError, match="every output"):
            review.set_gold(session, world.rank_task, bad)
    with pytest.raises(ServiceError, match="one of the two"):
        review.set_gold(session, world.comp_task, {"winner": world.a})
    review.set_gold(session, world.comp_task, None)
    session.commit()
    assert world.l1.id in stats.gold_accuracy(session) and stats.gold_accuracy(session)[world.l1.id][0] == 1


def test_submissions_per_day_and_overview(session, world):
    days = stats.submissions_per_day(session, 7, world.project.id)
    assert len(days) == 7 and days[-1][0] == utcnow().date()
    assert days[-1][1] == {"ranking": 2, "demonstration": 2, "comparison": 1}
    assert days[-3][1] == {"ranking": 1}
    o = stats.data_overview(session, 30)
    assert o.counts[world.project.id]["prompts"] == {"train": 2, "test": 1}
    assert o.counts[world.project.id]["ranking"] == {"train": 3}
    assert o.counts[world.project.id]["demonstration"] == {"train": 1, "test": 1}


def test_labelers_and_data_pages(admin_client, session, world):
    r = admin_client.get(f"/admin/labelers?project={world.project.id}")
    assert r.status_code == 200
    assert "87.5%" in r.text  # 14 of 16 pairs
    assert "l3@example.com" in r.text
    r = admin_client.get("/admin/data")
    assert r.status_code == 200 and "<svg" in r.text and "3 / 10" in r.text
    assert admin_client.get(f"/admin/data?project={world.project.id}&days=7").status_code == 200
    assert admin_client.get(f"/admin/projects/{world.project.id}/tasks?kind=ranking&shared=true").status_code == 200


def test_gold_form(admin_client, session, world):
    task = world.rank_task
    token = csrf_of(admin_client, f"/admin/tasks/{task.id}")
    form = {
        "csrf_token": token,
        f"rank_{world.a}": "1",
        f"rank_{world.b}": "2",
        f"rank_{world.c}": "2",
        f"rank_{world.d}": "4",
    }
    assert admin_client.post(f"/admin/tasks/{task.id}/gold", data=form).status_code == 303
    session.rollback()
    session.expire_all()  # a fresh snapshot and no cached rows: see the app's writes
    assert session.get(Task, task.id).gold == {"order": [[world.a], [world.b, world.c], [world.d]]}
    r = admin_client.post(f"/admin/tasks/{task.id}/gold", data={**form, f"rank_{world.d}": "9"})
    assert r.status_code == 400 and "rank from 1 to 4" in r.text
    page = admin_client.get(f"/admin/tasks/{task.id}")
    assert "vs gold" in page.text and ">80%<" in page.text  # l3 tied a and b, which the gold orders: 4 of 5
    r = admin_client.post(f"/admin/tasks/{world.comp_task.id}/gold", data={"csrf_token": token, "winner": "tie"})
    assert r.status_code == 303
    session.rollback()
    session.expire_all()  # a fresh snapshot and no cached rows: see the app's writes
    assert session.get(Task, world.comp_task.id).gold == {"winner": None}
    demo = session.scalar(select(Task).where(Task.kind == TaskKind.demonstration))
    r = admin_client.post(f"/admin/tasks/{demo.id}/gold", data={"csrf_token": token, "winner": "1"})
    assert r.status_code == 400 and "free text" in r.text
    assert admin_client.get("/admin/tasks/999999").status_code == 404


def test_labeler_cannot_see_stats(labeler_client):
    assert labeler_client.get("/admin/labelers").status_code == 403
    assert labeler_client.get("/admin/data").status_code == 403


def test_remembered_figures_follow_new_work_on_the_next_view(admin_client, session, world):
    page = admin_client.get(f"/admin/labelers?project={world.project.id}")
    assert "87.5%" in page.text
    assert "3 / 10" in admin_client.get("/admin/data").text
    # A fourth labeler ranks the shared task in the reverse order: the very next views show it.
    l4 = accounts.create_user(session, "l4@example.com", None)
    session.add(Ranking(task_id=world.rank_task.id, user_id=l4.id, order=[[world.d], [world.c], [world.b], [world.a]]))
    session.commit()
    page = admin_client.get(f"/admin/labelers?project={world.project.id}")
    assert "87.5%" not in page.text and "l4@example.com" in page.text
    assert "4 / 10" in admin_client.get("/admin/data").text


def test_project_page_counts_new_prompts_at_once(admin_client, session, world):
    stat = '<div class="stat-value">{}</div>'
    assert stat.format(3) in admin_client.get(f"/admin/projects/{world.project.id}").text
    session.add_all(
        [Prompt(project_id=world.project.id, text=f"new prompt {i}", content_hash=f"new{i}") for i in range(25)]
    )
    session.commit()
    assert stat.format(28) in admin_client.get(f"/admin/projects/{world.project.id}").text  # 3 + 25


# ---------------------------------------------------------------- figures are never stale


@pytest.fixture
def other(settings):
    """Another process's view of the same database: an engine and session of its own."""
    engine = make_engine(settings.db_url)
    with make_sessionmaker(engine)() as s:
        yield s
    engine.dispose()


def _views(session, project_id: int, *, fresh: bool = False):
    """Every remembered figure of a project and of the data page, as plain values."""
    rows, agreement, _ = stats.labelers_report(session, project_id, fresh=fresh)
    overview = stats.data_overview(session, 7, fresh=fresh)
    return (
        stats.project_summary(session, project_id, fresh=fresh),
        overview.counts,
        overview.per_day,
        [(r.user.email, r.done, r.median_ms, r.skips, r.prompt_flags, r.gold_n, r.gold_accuracy) for r in rows],
        (agreement.project.same, agreement.project.comparable, agreement.shared_tasks),
    )


def _spare(session, project_id: int, text: str, job_id: int | None = None) -> tuple[Prompt, Task]:
    """A prompt with an unanswered demonstration task (deletable)."""
    prompt = Prompt(project_id=project_id, text=text, content_hash=text, import_job_id=job_id)
    session.add(prompt)
    session.flush()
    task = Task(project_id=project_id, prompt_id=prompt.id, kind=TaskKind.demonstration, required=1)
    session.add(task)
    session.commit()
    return prompt, task


def _flag_id(session, world) -> int:
    return session.scalar(select(Skip.id).where(Skip.reason == SkipReason.pii))


CHANGES = {
    # name: (change made through the other engine, what the world project's summary says after)
    "prompt deleted": lambda o, w, spare: tasks.delete_prompt(o, w.project.id, spare[0].id),
    "task deleted": lambda o, w, spare: tasks.delete_task(o, spare[1].id),
    "gold set": lambda o, w, spare: review.set_gold(
        o, o.get(Task, w.rank_task.id), {"order": [[w.d], [w.c], [w.b], [w.a]]}
    ),
    "flagged prompt retired": lambda o, w, spare: review.retire_flagged_prompt(
        o, o.get(accounts.User, w.l1.id), w.project.id, _flag_id(o, w)
    ),
    "one more labeler asked": lambda o, w, spare: review.ask_one_more_labeler(o, w.comp_task.id),
    "submission rejected": lambda o, w, spare: review.decide(
        o, o.get(accounts.User, w.l1.id), "ranking", o.scalar(select(Ranking.id).limit(1)), "rejected", "Off topic"
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_an_edit_or_deletion_elsewhere_shows_on_the_next_view(session, other, world, change):
    """Figures are remembered per process; a row another process deletes or edits in place (no new
    row) shows in the very next view of this one, and of the other one."""
    spare = _spare(session, world.project.id, "spare prompt")
    _spare(session, world.project.id, "newer prompt")  # the deleted rows are not the newest
    session.get(Task, world.comp_task.id).status = TaskStatus.closed
    session.commit()
    before = _views(session, world.project.id)
    assert before[0]["prompts_total"] == 5 and before[0]["tasks"]["demonstration"] == {"open": 4}
    # A remembered view is what a fresh computation says, and stays so without writes.
    assert _views(other, world.project.id) == before == _views(session, world.project.id, fresh=True)
    CHANGES[change](other, world, spare)
    other.commit()
    session.commit()  # a new snapshot (Postgres), as a new request has
    after = _views(session, world.project.id)
    assert after == _views(other, world.project.id) == _views(session, world.project.id, fresh=True)
    expected = {
        "prompt deleted": lambda: after[0]["prompts_total"] == 4 and after[0]["tasks"]["demonstration"] == {"open": 3},
        "task deleted": lambda: after[0]["prompts_total"] == 5 and after[0]["tasks"]["demonstration"] == {"open": 3},
        "flagged prompt retired": lambda: after[0]["tasks"]["demonstration"] == {"open": 3, "retired": 1},
        "one more labeler asked": lambda: after[0]["tasks"]["comparison"] == {"open": 1},
        "gold set": lambda: [row[5] for row in after[3]] == [1, 1, 1],
    }
    assert expected.get(change, lambda: after == before)()


def test_a_deleted_project_and_import_leave_the_figures(session, other, world):
    spare = projects.create_project(session, projects.ProjectSettings(name="Spare"))
    job = imports.start_job(session, spare, filename="p.jsonl", options={}, created_by=None)
    job.status = imports.ImportJobStatus.succeeded
    session.commit()
    for i in range(3):
        _spare(session, spare.id, f"imported {i}", job.id)
    _spare(session, spare.id, "typed in")
    _spare(session, world.project.id, "newer prompt")  # the deleted rows are not the newest
    assert stats.project_summary(session, spare.id)["prompts_total"] == 4
    assert stats.data_overview(session).counts[spare.id]["prompts"] == {"train": 4}
    imports.delete_import(other, spare.id, job.id)
    other.commit()
    assert stats.project_summary(session, spare.id)["prompts_total"] == 1
    assert stats.data_overview(session).counts[spare.id]["prompts"] == {"train": 1}
    projects.delete_project(other, spare.id)
    other.commit()
    assert stats.project_summary(session, spare.id)["prompts_total"] == 0
    assert spare.id not in stats.data_overview(session).counts
    assert stats.data_overview(session).counts[world.project.id]["prompts"] == {"train": 3, "test": 1}


def test_a_deletion_by_another_process_shows_on_the_next_view(session, settings, world):
    """A separate Python process (as a worker or the CLI is) that never imports the stats module."""
    prompt, _ = _spare(session, world.project.id, "spare prompt")
    _spare(session, world.project.id, "newer prompt")  # the deleted prompt is not the newest
    assert stats.project_summary(session, world.project.id)["prompts_total"] == 5
    script = (
        "import sys\n"
        "from app.db import make_engine, write_session\n"
        "from app.services import tasks\n"
        "with write_session(make_engine(sys.argv[1])) as s:\n"
        "    tasks.delete_prompt(s, int(sys.argv[2]), int(sys.argv[3]))\n"
        "assert 'app.services.stats' not in sys.modules\n"
    )
    args = [settings.db_url, str(world.project.id), str(prompt.id)]
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", script, *args], check=True, cwd=root, timeout=120)
    session.commit()
    assert stats.project_summary(session, world.project.id)["prompts_total"] == 4


def _writes(session) -> int | None:
    session.commit()
    return session.scalar(select(FigureWrites.n).where(FigureWrites.id == 1))


def test_inserts_leave_the_write_count_alone(session, engine, world, db_url):
    """Labeling and the intake add rows (the newest-row part of the fingerprint sees them) and
    leave the one counted row alone; on Postgres even a submission's slot update, which rides
    inside its INSERT. (SQLite takes the slot in a separate UPDATE; its writers take turns anyway.)"""
    project = world.project
    spare = _spare(session, project.id, "spare prompt")
    shown = stats.project_summary(session, project.id)
    writes = _writes(session)
    with write_session(engine) as s:
        leased = queue.next_task(s, world.l3.id, project, TaskKind.demonstration, default_lease_seconds=600)
    assert leased is not None and leased.task_id == spare[1].id
    with write_session(engine) as s:
        submissions.submit_demonstration(s, s.get(accounts.User, world.l3.id), spare[1].id, "An answer.")
    if db_url.startswith("postgresql"):
        assert _writes(session) == writes
    after = stats.project_summary(session, project.id)
    assert after != shown and after == stats.project_summary(session, project.id, fresh=True)
    assert after["done"]["demonstration"] == shown["done"]["demonstration"] + 1
    assert after["tasks"]["demonstration"] == {"open": 2, "closed": 1}
    assert json.dumps(after)  # plain values, as remembered
