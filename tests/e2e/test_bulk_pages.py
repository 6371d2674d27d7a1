"""Bulk actions in a real Chromium (issue 28), on SQLite and Postgres, at 1280 and 390 px: the admin
withdraws the open tasks a cancelled generate run made (the labeler's queue empties, the answered
task keeps its answer); the admin accepts the review items shown while a labeler revises one of
them (that one is skipped and the page says so); the task list's source column and search."""

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
    Task,
    TaskStatus,
    TrainingRun,
)
from app.services import submissions, tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project, make_prompts
from tests.worker_helpers import add_demonstrations

SIZES = {1280: (1280, 800), 390: (390, 844)}


def _as(page_at, live_server, email: str, width: int):
    page = page_at(*SIZES[width])
    ui_login(page, live_server, email, PASSWORD)
    return page


@pytest.mark.parametrize("width", [1280, 390])
def test_withdraw_the_open_tasks_of_a_cancelled_run(live_server, page_at, shot, session, make_user, width):
    make_user("admin@example.com", Role.admin)
    lena, omar = make_user("lena@example.com", Role.labeler), make_user("omar@example.com", Role.labeler)
    project = make_project(session, name="Generated", overlap=2, k=2)
    run = TrainingRun(project_id=project.id, kind=RunKind.generate, status=RunStatus.cancelled, config={})
    run.error = "Cancelled by admin@example.com at step 3 of 16."
    session.add(run)
    session.flush()
    made = []
    for i, prompt in enumerate(make_prompts(session, project, ["Name a colour", "Name a fish", "Name a tree"])):
        outputs = [Completion(prompt_id=prompt.id, text=f"answer {i}{c}", source="sampled") for c in "ab"]
        session.add_all(outputs)
        session.flush()
        made.append(tasks.create_ranking_task(session, project, prompt, [o.id for o in outputs], source_run_id=run.id))
    session.commit()
    # Lena ranks the first task (its answer must stay); Omar holds the second one.
    ids = [o.completion_id for o in made[0].outputs]
    session.add(Lease(task_id=made[0].id, user_id=lena.id, expires_at=utcnow() + timedelta(hours=1)))
    session.commit()
    ratings = {str(i): {"likert": 5, "flags": []} for i in ids}
    submissions.submit_ranking(session, lena, made[0].id, [[i] for i in ids], ratings)
    session.add(Lease(task_id=made[1].id, user_id=omar.id, expires_at=utcnow() + timedelta(hours=1)))
    session.commit()
    task_ids = [t.id for t in made]

    labeler = _as(page_at, live_server, "omar@example.com", width)
    assert "3 tasks" in labeler.locator(".queue-item", has_text="Generated").inner_text()

    admin = _as(page_at, live_server, "admin@example.com", width)
    admin.goto(f"{live_server}/admin/runs/{run.id}")
    box = admin.locator("#run-tasks")
    assert "3 still open" in box.inner_text() and "although the run was cancelled" in box.inner_text()
    assert "The 2 that nobody has answered are deleted" in box.inner_text()
    button = admin.locator("#withdraw-run-tasks")
    assert button.inner_text() == "Withdraw the 3 open tasks this run made"
    shot(admin, f"withdraw-run-before-{width}")
    admin.once("dialog", lambda dialog: dialog.accept())
    button.click()
    admin.wait_for_load_state("networkidle")
    message = admin.locator(".flash").first.inner_text()
    assert "Withdrew 3 open task(s)" in message and "2 that nobody had answered deleted" in message
    assert "1 with answers or a flag closed" in message
    assert "0 still open" in admin.locator("#run-tasks").inner_text()
    assert admin.locator("#withdraw-run-tasks").count() == 0
    shot(admin, f"withdraw-run-after-{width}")

    # The labeler's queue is empty now; the answered task is closed with Lena's ranking.
    labeler.goto(f"{live_server}/label")
    assert "No tasks for you right now" in labeler.content()
    session.expire_all()
    assert [session.get(Task, i) is None for i in task_ids] == [False, True, True]
    assert session.get(Task, task_ids[0]).status == TaskStatus.closed
    assert session.scalar(select(Ranking.user_id).where(Ranking.task_id == task_ids[0])) == lena.id

    # The task list names the run; the project page counts no open task.
    admin.click("text=List them")
    admin.wait_for_load_state("networkidle")
    assert admin.locator("tbody tr").count() == 1 and "closed" in admin.locator("tbody tr").inner_text()


@pytest.mark.parametrize("width", [1280, 390])
def test_accept_the_shown_review_items(live_server, page_at, shot, session, make_user, width):
    make_user("admin@example.com", Role.admin)
    lena = make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Reviewed")
    answers = [("Say hello", "Hello!"), ("Count to three", "One, two, three."), ("Name a banana colour", "Yellow.")]
    demos = add_demonstrations(session, project, answers, lena)
    session.commit()

    admin = _as(page_at, live_server, "admin@example.com", width)
    admin.goto(f"{live_server}/admin/projects/{project.id}/review")
    button = admin.locator("#accept-shown button")
    assert button.inner_text() == "Accept the 3 shown demonstrations"
    # Lena revises one of them after the page was rendered.
    submissions.revise_demonstration(session, lena, demos[1].id, "One, two, three, four.")
    session.commit()
    admin.evaluate("window.scrollTo(0, 0)")  # (the page focuses the first card)
    shot(admin, f"accept-shown-before-{width}")
    admin.once("dialog", lambda dialog: dialog.accept())
    button.click()
    admin.wait_for_load_state("networkidle")
    message = admin.locator(".flash").first.inner_text()
    assert message.startswith("Accepted 2 demonstration(s). Skipped 1 that its labeler revised"), message
    # What is left to review is the revised answer, as it is now.
    cards = admin.locator(".review-item")
    assert cards.count() == 1 and "One, two, three, four." in cards.first.inner_text()
    assert "revision 2" in cards.first.inner_text()
    admin.evaluate("window.scrollTo(0, 0)")
    shot(admin, f"accept-shown-after-{width}")
    session.expire_all()
    assert [session.get(Demonstration, d.id).review for d in demos] == [
        ReviewStatus.accepted,
        ReviewStatus.pending,
        ReviewStatus.accepted,
    ]

    # Search over review items: the accepted ones, by a word of an answer.
    admin.goto(f"{live_server}/admin/projects/{project.id}/review?status=all")
    admin.fill("input[name=q]", "yellow")
    admin.locator("form.review-filters button", has_text="Show").click()
    admin.wait_for_load_state("networkidle")
    assert admin.locator(".review-item").count() == 1 and "Yellow." in admin.locator(".review-item").inner_text()

    # The task list: its source column and a search over the prompts.
    admin.goto(f"{live_server}/admin/projects/{project.id}/tasks")
    admin.fill("input[name=q]", "count")
    admin.locator("#task-filters button", has_text="Search").click()
    admin.wait_for_load_state("networkidle")
    rows = admin.locator("tbody tr")
    assert rows.count() == 1 and "Count to three" in rows.inner_text() and "labelers" in rows.inner_text()
    shot(admin, f"task-search-{width}")
