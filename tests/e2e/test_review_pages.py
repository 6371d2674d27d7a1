"""Review in a real Chromium (issue 16), on SQLite and Postgres: a labeler flags a prompt and the
admin retires it; an admin rejects a demonstration by keyboard and the labeler reads why, while the
next SFT snapshot and the export leave it out; two labelers disagree and a third gets the task once
the admin asks for one more; a labeler revises a demonstration and the snapshot records the
revision. Screenshots of the review, flags and disagreements pages at 1280x800 and 390x844."""

import json

import pytest
from sqlalchemy import select

from app.models import Demonstration, ReviewStatus, Role, Skip, Task, TaskStatus
from app.services import tasks
from runconfig import DataFilter
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_outputs, make_project, make_prompts
from worker.snapshots import snapshot_demonstrations

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


def _labeler_writes(page, live_server, answers: dict[str, str]) -> None:
    """Takes the next demonstration task and answers it with the answer for its prompt."""
    page.goto(f"{live_server}/label")
    page.locator("form[action$='/demonstration'] button").first.click()
    page.wait_for_url("**/label/task/*")
    page.fill("#demo-text", answers[page.get_by_test_id("prompt").inner_text().strip()])
    page.locator("#submit-btn").click()
    page.wait_for_load_state("networkidle")


def _as(page_at, live_server, email: str, size=(1280, 800)):
    page = page_at(*size)
    ui_login(page, live_server, email, PASSWORD)
    return page


def test_flag_reject_and_revise(live_server, page_at, shot, session, make_user):
    make_user("admin@example.com", Role.admin)
    make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Reviewed")
    prompts = make_prompts(
        session, project, ["My card number is 4111 1111 1111 1111, keep it", "Say hello", "Count to three"]
    )
    tasks.create_demonstration_tasks(session, project, prompts)
    session.commit()

    # The labeler flags the first prompt with a note, then writes two demonstrations.
    lena = _as(page_at, live_server, "lena@example.com")
    lena.goto(f"{live_server}/label")
    lena.locator("form[action$='/demonstration'] button").first.click()
    lena.wait_for_url("**/label/task/*")
    assert "4111" in lena.get_by_test_id("prompt").inner_text()
    lena.locator("details.skip-box summary").click()
    lena.locator("input[name=reason][value=pii]").check()
    lena.fill("input[name=note]", "A card number")
    lena.locator("details.skip-box button[type=submit]").click()
    lena.wait_for_load_state("networkidle")
    answers = {"Say hello": "Hello!", "Count to three": "One, two, three.\nDone."}
    for _ in answers:
        _labeler_writes(lena, live_server, answers)

    # The admin sees the flag with the note and retires the prompt.
    admin = _as(page_at, live_server, "admin@example.com")
    admin.goto(f"{live_server}/admin/projects/{project.id}/flags")
    row = admin.locator("article", has_text="A card number")
    assert "4111 1111 1111 1111" in row.inner_text() and "pii" in row.inner_text()
    shot(admin, "review-flags-desktop")
    row.get_by_role("button", name="Retire prompt").click()
    admin.wait_for_load_state("networkidle")
    assert "Prompt retired" in admin.locator(".flash").first.inner_text()
    session.expire_all()
    flagged_task = session.scalar(select(Task).where(Task.prompt_id == prompts[0].id))
    assert flagged_task.status == TaskStatus.retired and session.scalar(select(Skip)).dismissed_at is not None

    # The labeler revises "Hello!" before anyone reviews it.
    hello = session.scalar(select(Demonstration).where(Demonstration.text == "Hello!"))
    lena.goto(f"{live_server}/label/history")
    lena.locator(f"a[href='/label/demonstrations/{hello.id}/revise']").click()
    lena.fill("#revise-text", "Hello there!")
    lena.get_by_role("button", name="Save the revision").click()
    lena.wait_for_url("**/label/history")
    assert "revision 2" in lena.locator(".flash").first.inner_text()

    # The admin rejects the counting demonstration by keyboard: focus it, r, reason, Enter.
    admin.goto(f"{live_server}/admin/projects/{project.id}/review")
    assert "Hello there!" in admin.locator(".review-item").first.inner_text()
    shot(admin, "review-queue-desktop")
    counting = session.scalar(select(Demonstration).where(Demonstration.text.startswith("One, two")))
    card = admin.locator(f"#review-demonstration-{counting.id}")
    assert "One, two, three.\nDone." in card.locator(".output").nth(1).inner_text(), "shown whole, with its line break"
    card.focus()
    admin.keyboard.press("r")
    admin.keyboard.type("Count in digits, please.")
    admin.keyboard.press("Enter")
    admin.wait_for_selector(f"#review-demonstration-{counting.id}[data-review=rejected]")
    first = admin.locator(".review-item").first
    first.focus()
    admin.keyboard.press("a")
    admin.wait_for_selector(f"#review-demonstration-{hello.id}[data-review=accepted]")
    shot(admin, "review-decided-desktop")

    # The labeler reads the decision and its reason.
    lena.goto(f"{live_server}/label/history")
    row = lena.locator("tr", has_text="Count to three")
    assert "rejected" in row.inner_text() and "Count in digits, please." in row.inner_text()
    shot(lena, "review-history-desktop")

    # The next SFT snapshot leaves it out and records the revision; the export lacks it.
    session.expire_all()
    train, valid, snap = snapshot_demonstrations(session, project.id, DataFilter(valid_splits=["train"]))
    assert [e.completion for e in train + valid] == ["Hello there!"]
    assert snap.counts["demonstrations_rejected"] == 1
    assert snap.record()["revisions"] == {"demonstrations": {str(hello.id): 2}}
    export = admin.request.get(f"{live_server}/admin/projects/{project.id}/export/sft?split=train")
    assert export.status == 200
    rows = [json.loads(line) for line in export.text().splitlines() if line.strip()]
    assert [r["completion"] for r in rows] == ["Hello there!"]
    assert session.get(Demonstration, counting.id).review == ReviewStatus.rejected


def test_a_disagreement_gets_one_more_labeler(live_server, page_at, shot, session, make_user):
    make_user("admin@example.com", Role.admin)
    for name in ("ann", "bob", "cat"):
        make_user(f"{name}@example.com", Role.labeler)
    project = make_project(session, name="Disagreed", overlap=2, k=2)
    (prompt,) = make_prompts(session, project, ["Which answer is kinder?"])
    outs = make_outputs(session, prompt, ["You can do it!", "Whatever."])
    tasks.create_ranking_task(session, project, prompt, [o.id for o in outs])
    session.commit()

    # ann and bob rank the two outputs in opposite orders (by keyboard: Likert on the card, place on the chip).
    for name, best in (("ann", "You can do it!"), ("bob", "Whatever.")):
        page = _as(page_at, live_server, f"{name}@example.com")
        page.goto(f"{live_server}/label")
        page.locator("form[action$='/ranking'] button").first.click()
        page.wait_for_url("**/label/task/*")
        cards = page.locator(".output-card")
        for i in range(2):
            card = cards.nth(i)
            text = card.locator(".long-text").inner_text()
            cid = card.get_attribute("data-output")
            card.focus()
            page.keyboard.press("7" if text == best else "2")
            page.locator(f".chip[data-output='{cid}']").focus()
            page.keyboard.press("1" if text == best else "2")
        assert page.locator("[data-status]").inner_text() == "Ready to submit."
        page.keyboard.press("Control+Enter")
        page.wait_for_url("**/label")

    admin = _as(page_at, live_server, "admin@example.com")
    admin.goto(f"{live_server}/admin/projects/{project.id}/disagreements")
    section = admin.locator(".disagreement").first
    assert "0% agreement" in section.inner_text()
    assert "ann" in section.locator("thead").inner_text() and "bob" in section.locator("thead").inner_text()
    shot(admin, "review-disagreements-desktop")
    section.get_by_role("button", name="Ask one more labeler").click()
    admin.wait_for_load_state("networkidle")
    assert "now asks for 3 labelers" in admin.locator(".flash").first.inner_text()

    cat = _as(page_at, live_server, "cat@example.com")
    cat.goto(f"{live_server}/label")
    cat.locator("form[action$='/ranking'] button").first.click()
    cat.wait_for_url("**/label/task/*")
    assert "Which answer is kinder?" in cat.get_by_test_id("prompt").inner_text()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("size", SIZES)
def test_review_pages_at_both_sizes_and_the_shortcuts_panel(live_server, page_at, shot, session, make_user, size):
    make_user("admin@example.com", Role.admin)
    lena = make_user("lena@example.com", Role.labeler)
    project = make_project(session, name="Sizes")
    prompts = make_prompts(session, project, ["Write a haiku about rain", "Explain tides", "Name a colour"])
    demo_tasks = tasks.create_demonstration_tasks(session, project, prompts)
    session.add(
        Demonstration(
            task_id=demo_tasks[0].id, prompt_id=prompts[0].id, user_id=lena.id, text="Rain taps the window\n" * 3
        )
    )
    session.add(Skip(task_id=demo_tasks[1].id, user_id=lena.id, reason="nonsense", note="Not a question"))
    session.commit()
    admin = _as(page_at, live_server, "admin@example.com", SIZES[size])
    for name in ("review", "flags", "disagreements"):
        admin.goto(f"{live_server}/admin/projects/{project.id}/{name}")
        assert admin.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), (
            f"{name} scrolls sideways"
        )
        shot(admin, f"review-empty-{name}-{size}")

    # Every task screen lists its shortcuts on "?".
    page = _as(page_at, live_server, "lena@example.com", SIZES[size])
    page.goto(f"{live_server}/label")
    page.locator("form[action$='/demonstration'] button").first.click()
    page.wait_for_url("**/label/task/*")
    page.locator("body").click(position={"x": 5, "y": 5})
    page.keyboard.press("?")
    assert page.locator("dialog#shortcuts").is_visible()
    assert "Ctrl" in page.locator("dialog#shortcuts").inner_text()
    shot(page, f"task-shortcuts-{size}", full_page=False)
    page.keyboard.press("Escape")
    assert not page.locator("dialog#shortcuts").is_visible()


@pytest.mark.parametrize("size", sorted(SIZES))
def test_rejected_then_fixed_resubmitted_and_accepted(live_server, page_at, shot, session, make_user, size):
    """Issue 28: the labeler's home says an answer was rejected; "Fix and resubmit" opens it with the
    reason; the fix goes back to the admin's review queue as its new revision and is accepted."""
    from app.models import Project, SubmissionRevision
    from app.services import review
    from tests.worker_helpers import add_demonstrations

    admin_user = make_user("admin@example.com", Role.admin)
    labeler = make_user("lena@example.com", Role.labeler)
    project = Project(name="Fixes", k=2, overlap=1)
    session.add(project)
    session.flush()
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi")], labeler)
    session.commit()
    review.decide(session, admin_user, "demonstration", demo.id, "rejected", "Greet properly.")
    session.commit()

    lena = _as(page_at, live_server, "lena@example.com", SIZES[size])
    lena.goto(f"{live_server}/label")
    notice = lena.get_by_role("link", name="Fix and resubmit it")
    assert notice.is_visible() and "rejected 1 of your answers" in lena.content()
    shot(lena, f"rejected-home-{size}")
    notice.click()
    lena.wait_for_url("**/label/history")
    lena.get_by_role("link", name="Fix and resubmit").click()
    lena.wait_for_url(f"**/label/demonstrations/{demo.id}/revise")
    assert "rejected this answer: Greet properly. Fix it" in lena.get_by_test_id("rejected-reason").inner_text()
    lena.fill("#revise-text", "Hello, nice to meet you!")
    shot(lena, f"rejected-fix-{size}")
    lena.get_by_role("button", name="Send it back for review").click()
    lena.wait_for_url("**/label/history")
    assert "Fix and resubmit" not in lena.locator("tr", has_text="Say hi").inner_text()

    admin = _as(page_at, live_server, "admin@example.com", SIZES[size])
    admin.goto(f"{live_server}/admin/projects/{project.id}/review")
    card = admin.locator(f"#review-demonstration-{demo.id}")
    assert "Hello, nice to meet you!" in card.inner_text() and "revision 2" in card.inner_text()
    card.focus()
    admin.keyboard.press("a")
    admin.wait_for_selector(f"#review-demonstration-{demo.id}[data-review=accepted]")
    session.expire_all()
    fixed = session.get(Demonstration, demo.id)
    assert (fixed.text, fixed.revision, fixed.review) == ("Hello, nice to meet you!", 2, ReviewStatus.accepted)
    (earlier,) = session.scalars(select(SubmissionRevision).where(SubmissionRevision.submission_id == demo.id))
    assert earlier.answer["text"] == "Hi"
