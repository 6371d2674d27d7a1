"""Bulk actions of the admin (issue 28), on SQLite and Postgres: withdrawing the open tasks of an
ended run or of a model version (unanswered ones deleted, answered or flagged ones closed with what
they hold, the queue and the counts updated); "accept the shown items" on the review page, which
skips what was revised since the page was rendered; the task list's source column and text search,
and the review page's text search."""

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.models import (
    Completion,
    Demonstration,
    Lease,
    Ranking,
    ReviewStatus,
    Role,
    RunKind,
    RunStatus,
    Skip,
    SkipReason,
    Task,
    TaskKind,
    TaskStatus,
    TrainingRun,
)
from app.services import Conflict, projects, queue, registry, review, runs, submissions, tasks
from tests.conftest import csrf_of
from tests.labeling import make_labelers, make_outputs, make_project, make_prompts
from tests.worker_helpers import add_demonstrations


def _run(session, project, status=RunStatus.cancelled, kind=RunKind.generate, inputs=()) -> TrainingRun:
    run = TrainingRun(project_id=project.id, kind=kind, status=status, config={}, input_model_ids=list(inputs))
    session.add(run)
    session.flush()
    return run


def _ranking(session, project, prompt, run=None, version=None, texts=("one", "two")) -> Task:
    outputs = [Completion(prompt_id=prompt.id, text=t, source="test", model_version_id=version) for t in texts]
    session.add_all(outputs)
    session.flush()
    return tasks.create_ranking_task(
        session, project, prompt, [o.id for o in outputs], source_run_id=run.id if run else None
    )


def _ranked(session, task, labeler) -> Ranking:
    """The labeler's ranking of the task, stored as a submission does (done_count, closing)."""
    ids = [o.completion_id for o in task.outputs]
    sub = Ranking(task_id=task.id, user_id=labeler.id, order=[[i] for i in ids], display_order=ids)
    session.add(sub)
    task.done_count += 1
    if task.done_count >= task.required:
        task.status = TaskStatus.closed
    session.flush()
    return sub


@pytest.fixture
def made(session):
    """A cancelled generate run whose five ranking tasks are each in another state, and an open task
    of another run."""
    project = make_project(session, overlap=2, k=2)
    ann, ben = make_labelers(session, 2)
    prompts = make_prompts(session, project, [f"Prompt {i}" for i in range(6)])
    run, other = _run(session, project), _run(session, project, status=RunStatus.succeeded)
    t = {
        name: _ranking(session, project, p, run) for name, p in zip(["leased", "answered", "flagged", "done"], prompts)
    }
    t["fresh"] = _ranking(session, project, prompts[4], run)
    t["other"] = _ranking(session, project, prompts[5], other)
    session.add(Lease(task_id=t["leased"].id, user_id=ann.id, expires_at=utcnow() + timedelta(hours=1)))
    kept = _ranked(session, t["answered"], ann)
    session.add(Skip(task_id=t["flagged"].id, user_id=ben.id, reason=SkipReason.pii, note="an address"))
    _ranked(session, t["done"], ann)
    _ranked(session, t["done"], ben)
    session.commit()
    return project, run, other, {name: task.id for name, task in t.items()}, kept, (ann, ben)


def _open_count(session, project) -> int:
    return next(r.open_tasks for r in projects.list_projects(session) if r.project.id == project.id)


def test_withdrawing_a_runs_open_tasks_keeps_answers_and_flags(session, made):
    project, run, other, t, kept, (ann, ben) = made
    assert _open_count(session, project) == 5
    before = runs.run_open_tasks(session, run.id)
    assert (before.made, before.open, before.kept) == (5, 4, 2)

    withdrawn = runs.withdraw_run_tasks(session, run.id)
    assert (withdrawn.deleted, withdrawn.closed) == (2, 2)
    session.expire_all()
    assert session.get(Task, t["leased"]) is None and session.get(Task, t["fresh"]) is None
    assert session.scalar(select(Lease)) is None, "the leases of the deleted tasks go with them"
    assert session.get(Task, t["answered"]).status == TaskStatus.closed
    assert session.get(Ranking, kept.id) is not None, "a submitted label is kept"
    assert session.get(Task, t["flagged"]).status == TaskStatus.closed
    assert [f.skip.note for f in review.open_flags(session, project.id)] == ["an address"], "the flag stays open"
    assert session.get(Task, t["done"]).status == TaskStatus.closed
    assert session.get(Task, t["other"]).status == TaskStatus.open, "another run's task is untouched"
    assert _open_count(session, project) == 1
    after = runs.run_open_tasks(session, run.id)
    assert (after.made, after.open, after.kept) == (3, 0, 0)

    # Out of the queue: Ben (who did none of them) now gets only the other run's task.
    got = queue.next_task(session, ben.id, project, TaskKind.ranking, default_lease_seconds=600)
    assert got is not None and got.task_id == t["other"]
    assert (
        queue.next_task(session, ann.id, project, TaskKind.ranking, default_lease_seconds=600).task_id == (t["other"])
    )
    # Withdrawing again changes nothing.
    again = runs.withdraw_run_tasks(session, run.id)
    assert (again.deleted, again.closed) == (0, 0)


def test_a_labeler_holding_a_withdrawn_task_is_told_nothing_was_stored(session):
    project = make_project(session, overlap=2, k=2)
    ann, ben = make_labelers(session, 2)
    (prompt,) = make_prompts(session, project, ["Which is better?"])
    run = _run(session, project)
    task = _ranking(session, project, prompt, run)
    session.commit()
    for who in (ann, ben):
        assert queue.next_task(session, who.id, project, TaskKind.ranking, default_lease_seconds=600).task_id == task.id
    ids = [o.completion_id for o in task.outputs]
    ratings = {str(i): {"likert": 4, "flags": []} for i in ids}
    submissions.submit_ranking(session, ann, task.id, [[i] for i in ids], ratings)
    session.commit()
    assert runs.withdraw_run_tasks(session, run.id).closed == 1
    with pytest.raises(submissions.LeaseLost, match="closed and takes no more answers"):
        submissions.submit_ranking(session, ben, task.id, [[i] for i in ids], ratings)
    session.rollback()
    session.expire_all()
    assert session.get(Task, task.id).done_count == 1


def test_withdrawing_is_refused_while_the_run_makes_tasks_and_on_an_archived_project(session, made):
    project, run, _, _, _, _ = made
    run.status = RunStatus.running
    session.commit()
    with pytest.raises(Conflict, match="cancel it first"):
        runs.withdraw_run_tasks(session, run.id)
    run.status = RunStatus.failed
    session.commit()
    projects.set_archived(session, project.id, True)
    session.commit()
    with pytest.raises(Conflict, match="archived"):
        runs.withdraw_run_tasks(session, run.id)
    session.expire_all()
    assert runs.run_open_tasks(session, run.id).open == 4, "nothing was withdrawn"


def test_withdrawing_a_model_versions_open_tasks(session):
    project = make_project(session, overlap=1, k=2)
    (ann,) = make_labelers(session, 1)
    bad = registry.register_base(session, "/models/bad").id
    good = registry.register_base(session, "/models/good").id
    prompts = make_prompts(session, project, ["a", "b", "c", "d"])
    shown_bad = _ranking(session, project, prompts[0], version=bad, texts=("x", "y", "z"))
    answered = _ranking(session, project, prompts[1], version=bad)
    _ranked(session, answered, ann)  # closed: overlap 1
    other = _ranking(session, project, prompts[2], version=good)
    # An A/B task of both models: it shows an output of the bad one, so it goes too.
    a, b = (
        Completion(prompt_id=prompts[3].id, text="from bad", model_version_id=bad),
        Completion(prompt_id=prompts[3].id, text="from good", model_version_id=good),
    )
    session.add_all([a, b])
    session.flush()
    both = tasks.create_comparison_task(session, project, prompts[3], a.id, b.id)
    session.commit()
    gone = [shown_bad.id, both.id]
    counted = runs.version_open_tasks(session, bad)
    assert (counted.made, counted.open, counted.kept) == (3, 2, 0), "a task with 3 of its outputs counts once"
    withdrawn = runs.withdraw_version_tasks(session, bad)
    assert (withdrawn.deleted, withdrawn.closed) == (2, 0)
    session.expire_all()
    assert [session.get(Task, i) for i in gone] == [None, None]
    assert session.get(Task, answered.id) is not None and session.get(Task, other.id).status == TaskStatus.open


def _flash(page: str) -> str:
    found = re.findall(r'class="flash flash-(\w+)" role="status">([^<]*)<', page)
    assert found, "no flash message"
    return " ".join(f"{kind}: {text}" for kind, text in found)


def test_the_run_page_offers_the_withdrawal_and_honours_it(session, admin_client, made):
    project, run, other, t, _, _ = made
    page = admin_client.get(f"/admin/runs/{run.id}").text
    assert "Withdraw the 4 open tasks this run made" in page
    assert "labelers are getting them although the run was cancelled" in page
    assert "The 2 that nobody has answered are deleted" in page and "The 2 with answers or a flag are closed" in page
    assert f'href="/admin/projects/{project.id}/tasks?run={run.id}"' in page
    done = admin_client.post(
        f"/admin/runs/{run.id}/withdraw-tasks", data={"csrf_token": csrf_of(admin_client, "/admin")}
    )
    assert done.status_code == 303 and done.headers["location"] == f"/admin/runs/{run.id}"
    after = admin_client.get(done.headers["location"]).text
    assert "Withdrew 4 open task(s)" in _flash(after) and "2 that nobody had answered deleted" in _flash(after)
    assert "0 still open" in after and "withdraw-run-tasks" not in after
    session.expire_all()
    assert runs.run_open_tasks(session, run.id).open == 0
    # The task list, filtered to the run, shows what is left of it: closed, with the run named.
    listed = admin_client.get(f"/admin/projects/{project.id}/tasks?run={run.id}").text
    assert listed.count('data-source="labeler"') == 3 and f"run #{run.id}" in listed and ">open<" not in listed


def test_a_running_run_offers_no_withdrawal_and_refuses_one(session, admin_client, made):
    _, run, _, _, _, _ = made
    run.status = RunStatus.running
    session.commit()
    assert "withdraw-run-tasks" not in admin_client.get(f"/admin/runs/{run.id}").text
    refused = admin_client.post(
        f"/admin/runs/{run.id}/withdraw-tasks", data={"csrf_token": csrf_of(admin_client, "/admin")}
    )
    assert refused.status_code == 303
    assert "cancel it first" in _flash(admin_client.get(refused.headers["location"]).text)
    session.expire_all()
    assert runs.run_open_tasks(session, run.id).open == 4
    assert (
        admin_client.post(
            "/admin/runs/999999/withdraw-tasks", data={"csrf_token": csrf_of(admin_client, "/admin")}
        ).status_code
        == 404
    )


def test_the_model_page_offers_the_withdrawal_and_honours_it(session, admin_client):
    project = make_project(session, overlap=1, k=2)
    version = registry.register_base(session, "/models/bad")
    prompts = make_prompts(session, project, ["a", "b"])
    for p in prompts:
        _ranking(session, project, p, version=version.id)
    session.commit()
    page = admin_client.get(f"/admin/models/{version.id}").text
    assert "2 tasks show outputs of this model" in page and "Withdraw the 2 open tasks" in page
    done = admin_client.post(
        f"/admin/models/{version.id}/withdraw-tasks", data={"csrf_token": csrf_of(admin_client, "/admin")}
    )
    assert done.status_code == 303
    after = admin_client.get(done.headers["location"]).text
    assert "Withdrew 2 open task(s)" in _flash(after) and "withdraw-model-tasks" not in after
    assert _open_count(session, project) == 0


# -- accept the shown items -------------------------------------------------------------------------


def test_accept_shown_skips_what_was_revised_or_decided_since(session, make_user):
    admin, other_admin = make_user("a@example.com", Role.admin), make_user("b@example.com", Role.admin)
    labeler = make_user("w@example.com", Role.labeler)
    project, elsewhere = make_project(session, name="One"), make_project(session, name="Two")
    demos = add_demonstrations(session, project, [(f"Prompt {i}", f"Answer {i}") for i in range(4)], labeler)
    (foreign,) = add_demonstrations(session, elsewhere, [("Other", "Other answer")], labeler)
    session.commit()
    shown = [(d.id, d.revision) for d in demos] + [(foreign.id, 1)]
    submissions.revise_demonstration(session, labeler, demos[1].id, "Answer 1, revised")
    review.decide(session, other_admin, "demonstration", demos[2].id, "rejected", "No.", revision=1)
    session.commit()

    done = review.accept_shown(session, admin, project.id, "demonstration", shown)
    assert (done.accepted, done.revised, done.decided) == (2, 1, 2)  # the other project's one is "gone" here
    session.expire_all()
    status = {d.id: session.get(Demonstration, d.id).review for d in [*demos, foreign]}
    assert status == {
        demos[0].id: ReviewStatus.accepted,
        demos[1].id: ReviewStatus.pending,
        demos[2].id: ReviewStatus.rejected,
        demos[3].id: ReviewStatus.accepted,
        foreign.id: ReviewStatus.pending,
    }
    assert session.get(Demonstration, demos[0].id).reviewed_by_id == admin.id
    with pytest.raises(review.ServiceError, match="No pending items"):
        review.accept_shown(session, admin, project.id, "demonstration", [])
    with pytest.raises(review.NotFound):
        review.accept_shown(session, admin, project.id, "nonsense", [(1, 1)])


def test_the_review_page_accepts_the_shown_items_and_says_how_many_were_skipped(session, admin_client, make_user):
    labeler = make_user("w@example.com", Role.labeler)
    project = make_project(session)
    demos = add_demonstrations(session, project, [(f"Prompt {i}", f"Answer {i}") for i in range(3)], labeler)
    session.commit()
    url = f"/admin/projects/{project.id}/review?kind=demonstration&status=pending"
    page = admin_client.get(url).text
    assert "Accept the 3 shown demonstrations" in page
    shown = re.findall(r'name="shown" value="(\d+:\d+)"', page)
    assert shown == [f"{d.id}:1" for d in demos]
    submissions.revise_demonstration(session, labeler, demos[0].id, "Answer 0, now rude")
    session.commit()

    data = {"csrf_token": csrf_of(admin_client, "/admin"), "back": url, "kind": "demonstration", "shown": shown}
    done = admin_client.post(f"/admin/projects/{project.id}/review/accept-shown", data=data)
    assert done.status_code == 303 and done.headers["location"] == url
    after = admin_client.get(url).text
    assert "warn: Accepted 2 demonstration(s). Skipped 1 that its labeler revised" in _flash(after)
    assert "Answer 0, now rude" in after and "1 pending · 2 accepted" in after
    assert "Accept the 1 shown demonstration" in after

    # A forged or broken field is refused with 422, nothing decided.
    bad = admin_client.post(
        f"/admin/projects/{project.id}/review/accept-shown",
        data=data | {"shown": ["1:x"], "csrf_token": csrf_of(admin_client, "/admin")},
    )
    assert bad.status_code == 422
    session.expire_all()
    assert session.get(Demonstration, demos[0].id).review == ReviewStatus.pending


# -- task list: source and search; review search --------------------------------------------------


def test_the_task_list_shows_the_source_and_searches_the_prompts(session, admin_client):
    project = make_project(session)
    p_capital, p_percent, p_imported = make_prompts(
        session, project, ["What is the Capital of France?", "Is 50% a half?", "Imported: the capital of Spain"]
    )
    tasks.create_demonstration_tasks(session, project, [p_capital, p_percent])
    imported = Task(project_id=project.id, prompt_id=p_imported.id, kind=TaskKind.demonstration, status="closed")
    session.add(imported)
    session.flush()
    session.add(
        Demonstration(
            task_id=imported.id, prompt_id=p_imported.id, user_id=None, text="Madrid.", origin_file="oasst.jsonl"
        )
    )
    session.commit()
    base = f"/admin/projects/{project.id}/tasks"

    page = admin_client.get(base).text
    assert page.count('data-source="labeler"') == 2 and page.count('data-source="imported"') == 1
    assert "oasst.jsonl" in page
    capital = admin_client.get(base, params={"q": "capital"}).text
    assert "Capital of France" in capital and "capital of Spain" in capital and "50%" not in capital
    only_imported = admin_client.get(base, params={"q": "capital", "source": "imported"}).text
    assert "capital of Spain" in only_imported and "Capital of France" not in only_imported
    only_labelers = admin_client.get(base, params={"source": "labelers"}).text
    assert "oasst.jsonl" not in only_labelers and only_labelers.count('data-source="labeler"') == 2
    percent = admin_client.get(base, params={"q": "0%"}).text  # % is a character, not a wildcard
    assert "50%" in percent and "Capital" not in percent
    none = admin_client.get(base, params={"q": "nowhere"}).text
    assert "No task's prompt contains “nowhere”" in none
    assert admin_client.get(base, params={"q": "x" * 201}).status_code == 400


def test_the_review_page_searches_prompts_answers_and_outputs(session, admin_client, make_user):
    labeler = make_user("w@example.com", Role.labeler)
    project = make_project(session)
    add_demonstrations(session, project, [("Name a fruit", "A banana."), ("Name a Banana colour", "Yellow.")], labeler)
    add_demonstrations(session, project, [("Name a tree", "An oak.")], labeler)
    (prompt,) = make_prompts(session, project, ["Rank these"])
    task = tasks.create_ranking_task(
        session, project, prompt, [o.id for o in make_outputs(session, prompt, ["Plain", "Banana bread"])]
    )
    _ranked(session, task, labeler)
    session.commit()
    url = f"/admin/projects/{project.id}/review"

    found = admin_client.get(url, params={"q": "BANANA"}).text
    assert "A banana." in found and "Yellow." in found and "An oak." not in found
    assert "2 pending" in found and "(filtered)" in found
    assert 'name="q" value="BANANA"' in found
    ranked = admin_client.get(url, params={"q": "banana", "kind": "ranking"}).text
    assert "Banana bread" in ranked and "1 pending" in ranked
    assert "No pending rankings match" in admin_client.get(url, params={"q": "oak", "kind": "ranking"}).text
