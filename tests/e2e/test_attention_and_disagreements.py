"""The dashboard's attention list and the disagreement rows in a real Chromium (issue 28), at 1280 and
390 px, on SQLite and Postgres, with screenshots.

Attention: an empty instance says nothing needs attention; with answers waiting for review, flags,
a written prompt, a failed and a running run and a project nobody works on, each is a line with its
count that leads to the page that deals with it. Disagreements: three labelers who saw the same
three outputs in three different orders; each output is one row with each labeler's place, Likert
and flags in that labeler's column."""

from datetime import timedelta

import pytest

from app.db import utcnow
from app.models import (
    Completion,
    Demonstration,
    Ranking,
    Role,
    RunStatus,
    Skip,
    SkipReason,
    TaskStatus,
    TrainingRun,
    WrittenPrompt,
)
from app.services import tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project, make_prompts

WIDTHS = [1280, 390]


def _admin(page_at, live_server, width):
    page = page_at(width, 844 if width == 390 else 800)
    ui_login(page, live_server, "admin@example.com", PASSWORD)
    return page


def _no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@pytest.mark.parametrize("width", WIDTHS)
def test_the_dashboard_lists_what_needs_attention(live_server, page_at, shot, session, make_user, width):
    make_user("admin@example.com", Role.admin)
    page = _admin(page_at, live_server, width)
    assert "Nothing needs attention" in page.locator("#attention").inner_text()
    shot(page, f"attention-empty-{width}")

    lena = make_user("lena@example.com", Role.labeler)
    flagger = make_user("finn@example.com", Role.labeler)
    live = make_project(session, name="Support bot")
    prompts = make_prompts(session, live, ["Reset my password", "My card is 4111 1111 1111 1111", "Say hi"])
    demo_tasks = tasks.create_demonstration_tasks(session, live, prompts)
    for task, answer in zip(demo_tasks[:2], ["Open Settings, then Security.", "I can't store card numbers."]):
        session.add(Demonstration(task_id=task.id, prompt_id=task.prompt_id, user_id=lena.id, text=answer))
    session.add(Skip(task_id=demo_tasks[1].id, user_id=flagger.id, reason=SkipReason.pii, note="card number"))
    session.add(
        WrittenPrompt(project_id=live.id, author_id=lena.id, kind="plain", category="generation", text="Plan a trip")
    )
    quiet = make_project(session, name="Poems")
    tasks.create_demonstration_tasks(session, quiet, make_prompts(session, quiet, ["A poem about rain"]))
    failed = TrainingRun(kind="sft", status=RunStatus.failed, finished_at=utcnow() - timedelta(hours=2), error="OOM")
    running = TrainingRun(kind="generate", status=RunStatus.running, project_id=live.id)
    session.add_all([failed, running])
    session.commit()

    page.reload()
    lines = page.locator("#attention li")
    shown = {li.get_attribute("data-attention"): li.inner_text() for li in lines.all()}
    assert list(shown) == ["failed", "review", "flags", "written", "waiting", "running"]
    assert f"Run #{failed.id} (sft) failed" in shown["failed"]
    assert "2 demonstrations waiting for review" in shown["review"] and "Support bot" in shown["review"]
    assert "1 prompt flagged by labelers (1 PII)" in shown["flags"]
    assert "1 written prompt waiting for review" in shown["written"]
    assert (
        "Poems" in shown["waiting"] and "1 open task, and no labeler worked on it in the last 24 h" in shown["waiting"]
    )
    assert [li.locator(".attention-count").inner_text() for li in lines.all()] == ["1", "2", "1", "1", "1", "1"]
    assert _no_sideways_scroll(page)
    shot(page, f"attention-{width}")

    # Each line leads to the page that deals with it.
    page.locator("li[data-attention=review] a").click()
    page.wait_for_url(f"**/admin/projects/{live.id}/review?kind=demonstration&source=labelers")
    assert page.locator(".review-item").count() == 2
    page.go_back()
    page.locator("li[data-attention=flags] a").click()
    page.wait_for_url(f"**/admin/projects/{live.id}/flags")
    assert "card number" in page.locator("main").inner_text()
    page.go_back()
    page.locator("li[data-attention=failed] a").click()
    page.wait_for_url(f"**/admin/runs/{failed.id}")
    page.go_back()
    page.locator("li[data-attention=waiting] a").click()
    page.wait_for_url(f"**/admin/projects/{quiet.id}")


@pytest.mark.parametrize("width", WIDTHS)
def test_disagreements_show_one_row_per_output_across_labelers(live_server, page_at, shot, session, make_user, width):
    make_user("admin@example.com", Role.admin)
    ann, bob, cat = (make_user(f"{n}@example.com", Role.labeler) for n in ("ann", "bob", "cat"))
    project = make_project(session, name="Kindness", overlap=3, k=3)
    (prompt,) = make_prompts(session, project, ["How do I tell a friend their cooking is bad?"])
    texts = ["Be honest but kind: praise one thing first.", "Just say it's bad.", "Don't; eat it anyway."]
    kind, blunt, avoid = (Completion(prompt_id=prompt.id, text=t, source="test") for t in texts)
    session.add_all([kind, blunt, avoid])
    session.flush()
    task = tasks.create_ranking_task(session, project, prompt, [kind.id, blunt.id, avoid.id])
    answers = [  # each saw the outputs in its own order (A, B, C), so "A" is a different output for each
        (
            ann,
            [kind, blunt, avoid],
            [[kind], [avoid], [blunt]],
            {kind: (7, []), blunt: (2, ["inappropriate_for_customer_assistant"])},
        ),
        (bob, [blunt, avoid, kind], [[blunt], [kind, avoid]], {blunt: (6, [])}),
        (cat, [avoid, kind, blunt], [[avoid], [kind], [blunt]], {}),
    ]
    for user, shown, order, ratings in answers:
        session.add(
            Ranking(
                task_id=task.id,
                user_id=user.id,
                display_order=[o.id for o in shown],
                order=[[o.id for o in group] for group in order],
                ratings={str(o.id): {"likert": lk, "flags": fl} for o, (lk, fl) in ratings.items()},
            )
        )
    task.done_count, task.required, task.status = 3, 3, TaskStatus.closed
    session.commit()

    page = _admin(page_at, live_server, width)
    page.goto(f"{live_server}/admin/projects/{project.id}/disagreements")
    table = page.get_by_test_id(f"disagreement-{task.id}")
    if width == 1280:
        heads = [" ".join(h.inner_text().split()) for h in table.locator("th.labeler-col").all()]
        assert heads == ["ann pending", "bob pending", "cat pending"]
    else:  # on a phone the header row is hidden: each mark is named by its labeler instead (below)
        assert table.locator("thead").is_hidden()

    def marks(output):
        row = table.locator(f"tr[data-completion='{output.id}']")
        assert texts[[kind, blunt, avoid].index(output)] in row.locator(".output-text").inner_text()
        return [" ".join(m.inner_text().split()) for m in row.locator("td.mark").all()]

    assert marks(kind) == ["1st Likert 7/7 saw it as A", "=2nd saw it as C", "2nd saw it as B"]
    assert marks(blunt) == [
        "3rd Likert 2/7 inappropriate for customer assistant saw it as B",
        "1st Likert 6/7 saw it as A",
        "3rd saw it as C",
    ]
    assert marks(avoid) == ["2nd saw it as C", "=2nd saw it as B", "1st saw it as A"]
    assert table.locator("tr.split").count() == 1  # blunt: placed 1st by bob, 3rd by ann and cat
    assert _no_sideways_scroll(page)
    if width == 390:  # each output a block, each labeler's mark a line under it, named
        name = page.evaluate(
            "getComputedStyle(document.querySelector(\"tr[data-completion] td.mark\"), '::before').content"
        )
        assert name == '"ann"'
    shot(page, f"disagreement-rows-{width}")

    # The answers themselves, with accept / reject / gold, are one click away.
    page.locator(".disagreement-answers summary").click()
    assert page.locator(".disagreement-answers .review-item").count() == 3
