"""A multi-turn prompt (an hh-rlhf dialogue: user, assistant, user, assistant, user) on the labeler's
task screens in a real Chromium, at 1280x800 and 390x844: five turns with their roles, the last user
turn standing out, a long earlier turn folded until "Show", the keyboard shortcuts as before.
Screenshots go to tests/e2e/screenshots/ and /tmp/shots/.

Browser behaviour does not depend on the database: SQLite only, as the other labeler browser tests."""

from pathlib import Path

import pytest
from sqlalchemy import select

from app import conversation
from app.models import Demonstration, Prompt, Ranking, Role
from app.services import tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_outputs, make_project

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
SHOTS = Path("/tmp/shots")
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
LONG_ANSWER = "Here is a plan for the week:\n" + "\n".join(
    f"- Day {i}: {a}" for i, a in enumerate(["rest", "a short run", "intervals", "rest", "a long run"] * 4, 1)
)
DIALOGUE = [
    {"role": "user", "content": f"I want to start running. Where do I begin? {EVIL}"},
    {"role": "assistant", "content": LONG_ANSWER},
    {"role": "user", "content": "My knees hurt after two days.\n  Should I stop?"},
    {"role": "assistant", "content": "Rest for a few days, and see a doctor if the pain stays."},
    {"role": "user", "content": "Which shoes should I buy, then?"},
]
ROLE_LABELS = ["User", "Assistant", "User", "Assistant", "User · last turn"]

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def lena(make_user):
    return make_user("lena@example.com", Role.labeler)


def _dialogue_prompt(session, project) -> Prompt:
    prompt = Prompt(project_id=project.id, messages=DIALOGUE, content_hash=conversation.content_hash(DIALOGUE))
    session.add(prompt)
    session.flush()
    return prompt


def _start(page, live_server, kind: str) -> None:
    ui_login(page, live_server, "lena@example.com", PASSWORD)
    page.locator(f"form[action$='/{kind}'] button").first.click()
    page.wait_for_url("**/label/task/*")


def _save(shot, page, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = shot(page, name, full_page=full_page)
    (SHOTS / path.name).write_bytes(path.read_bytes())


def _check_thread(page, width: int) -> None:
    """Five turns in order with their roles (the list's name and each role as text, for screen
    readers too), the last user turn prominent, the long assistant turn folded, nothing wider
    than the window."""
    thread = page.get_by_role("list", name="Conversation, 5 messages")
    turns = thread.locator(":scope > li")
    assert turns.count() == 5
    assert [turns.nth(i).get_attribute("data-role") for i in range(5)] == [m["role"] for m in DIALOGUE]
    assert [t.strip() for t in thread.locator(".turn-role").all_text_contents()] == ROLE_LABELS
    assert EVIL in turns.nth(0).inner_text()  # shown as text
    assert page.evaluate("window.pwned") is None
    # whitespace kept as typed
    assert turns.nth(2).locator(".long-text").inner_text() == "My knees hurt after two days.\n  Should I stop?"

    last = turns.nth(4)
    assert page.get_by_test_id("prompt").inner_text() == "Which shoes should I buy, then?"
    style = "el => { const s = getComputedStyle(el); return [s.borderTopWidth, s.borderTopColor, s.fontSize]; }"
    last_border, last_color, _ = last.evaluate(style)
    first_border, first_color, _ = turns.nth(0).evaluate(style)
    assert last_border == "2px" and first_border == "1px" and last_color != first_color
    size = lambda t: float(t.locator(".long-text").evaluate("el => getComputedStyle(el).fontSize")[:-2])  # noqa: E731
    assert size(last) > size(turns.nth(2))
    # user and assistant turns look different (tint), and the user's lean right, the assistant's left
    bg = lambda t: t.evaluate("el => getComputedStyle(el).backgroundColor")  # noqa: E731
    assert bg(turns.nth(0)) != bg(turns.nth(1))
    assert turns.nth(0).bounding_box()["x"] > turns.nth(1).bounding_box()["x"]

    fold = turns.nth(1).locator("details.turn-fold")
    assert fold.count() == 1 and fold.get_attribute("open") is None
    assert not fold.get_by_text("Day 20: a long run").is_visible()
    assert fold.locator(".fold-preview").is_visible() and fold.locator(".fold-show").is_visible()
    assert turns.nth(3).locator("details").count() == 0  # short turns are not folded
    assert page.evaluate("document.documentElement.scrollWidth") <= width


def _unfold(page) -> None:
    fold = page.locator(".turn-assistant details.turn-fold")
    fold.locator("summary").click()
    assert fold.get_attribute("open") is not None
    assert fold.get_by_text("Day 20: a long run").is_visible()
    assert not fold.locator(".fold-preview").is_visible() and fold.locator(".fold-hide").is_visible()


@pytest.mark.parametrize("size", SIZES)
def test_a_dialogue_as_five_turns_to_answer(live_server, page_at, shot, session, lena, make_user, size):
    project = make_project(session)
    tasks.create_demonstration_tasks(session, project, [_dialogue_prompt(session, project)])
    session.commit()
    page = page_at(*SIZES[size])
    page.on("dialog", lambda d: pytest.fail(f"a script ran: {d.message}"))
    _start(page, live_server, "demonstration")

    assert page.locator("#prompt-h").inner_text().startswith("CONVERSATION")  # .label is upper case
    _check_thread(page, SIZES[size][0])
    assert "the assistant's next turn" in page.locator("label[for=demo-text]").inner_text()
    box = page.locator("#demo-text")
    assert box.evaluate("el => el === document.activeElement")  # still ready to type at once
    _save(shot, page, f"conversation-demonstration-{size}")
    _save(shot, page, f"conversation-demonstration-top-{size}", full_page=False)

    _unfold(page)
    _save(shot, page, f"conversation-demonstration-unfolded-{size}")
    page.locator(".turn-assistant details.turn-fold summary").press("Enter")  # folds again by keyboard
    assert page.locator(".turn-assistant details.turn-fold").get_attribute("open") is None

    # the shortcuts are as before: "?" lists them (not while typing), Ctrl+Enter submits
    page.locator(".task-head h1").click()
    page.keyboard.press("?")
    assert page.locator("dialog#shortcuts").is_visible()
    page.keyboard.press("Escape")
    box.fill("Good running shoes fit well and cushion your step; try them on in a shop.")
    box.press("Control+Enter")
    page.wait_for_url("**/label")
    session.expire_all()
    demo = session.scalar(select(Demonstration))
    assert demo.text.startswith("Good running shoes")

    # the same thread in the labeler's history and on the admin's task page
    page.goto(f"{live_server}/label/history")
    page.locator(".history details summary").first.click()
    assert page.locator(".history .thread > li").count() == 5
    _save(shot, page, f"conversation-history-{size}")
    make_user("admin@example.com", Role.admin)
    admin = page_at(*SIZES[size])
    ui_login(admin, live_server, "admin@example.com", PASSWORD)
    admin.goto(f"{live_server}/admin/tasks/{demo.task_id}")
    turns = admin.locator("section.card .thread > li")
    assert [turns.nth(i).get_attribute("data-role") for i in range(turns.count())] == [m["role"] for m in DIALOGUE]
    assert admin.evaluate("window.pwned") is None
    assert admin.evaluate("document.documentElement.scrollWidth") <= SIZES[size][0]
    _save(shot, admin, f"conversation-admin-task-{size}")


@pytest.mark.parametrize("size", SIZES)
def test_ranking_the_next_turn_of_a_dialogue(live_server, page_at, shot, session, lena, size):
    project = make_project(session)
    prompt = _dialogue_prompt(session, project)
    outs = make_outputs(
        session, prompt, ["Go to a running shop and try several pairs.", "Any shoes will do.", "Buy boots."]
    )
    tasks.create_ranking_task(session, project, prompt, [o.id for o in outs])
    session.commit()
    page = page_at(*SIZES[size])
    _start(page, live_server, "ranking")

    _check_thread(page, SIZES[size][0])
    assert "candidate for the assistant's next turn" in page.locator(".next-turn").inner_text()
    _unfold(page)
    _save(shot, page, f"conversation-ranking-{size}")

    # the keys on an output card and on the board work as before
    cards = page.locator(".output-card")
    for i in range(3):
        cards.nth(i).focus()
        page.keyboard.press(str(7 - i))
    for i in range(3):
        page.locator(f".chip[data-output='{cards.nth(i).get_attribute('data-output')}']").focus()
        page.keyboard.press(str(i + 1))
    assert page.locator("[data-status]").inner_text() == "Ready to submit."
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/label")
    session.expire_all()
    ranking = session.scalar(select(Ranking))
    assert len(ranking.order) == 3 and sorted(int(k) for k in ranking.ratings) == sorted(o.id for o in outs)
