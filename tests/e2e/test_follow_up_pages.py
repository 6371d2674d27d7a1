"""Growing a conversation by one turn in a real Chromium (issue 25), on SQLite and Postgres: an admin
turns follow-ups on and accepts a demonstration; a labeler reads it in its thread and writes the
user's next turn; the admin accepts that; another labeler then answers the three-message
conversation on the demonstration screen, which shows it as a thread."""

from sqlalchemy import select

from app.models import Demonstration, Prompt, Role, Task
from app.services import review
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project
from tests.worker_helpers import add_demonstrations


def test_a_conversation_grows_by_one_turn(live_server, page_at, shot, session, make_user):
    admin_user = make_user("admin@example.com", Role.admin)
    author = make_user("first@example.com", Role.labeler)
    make_user("wren@example.com", Role.labeler)
    make_user("dana@example.com", Role.labeler)
    project = make_project(session, name="Chat", k=2)
    (demo,) = add_demonstrations(session, project, [("Name a prime number.", "7 is a prime number.")], author)
    session.get(Task, demo.task_id).done_count = 1  # its one demonstration is in: no longer handed out
    review.decide(session, admin_user, "demonstration", demo.id, "accepted")
    session.commit()

    admin = page_at()
    ui_login(admin, live_server, "admin@example.com", PASSWORD)
    admin.goto(f"{live_server}/admin/projects/{project.id}/written")
    admin.fill("input[name=follow_up_turns]", "3")
    admin.get_by_role("button", name="Save").click()
    assert "Settings saved" in admin.locator(".flash").first.inner_text()

    writer = page_at(390, 844)
    ui_login(writer, live_server, "wren@example.com", PASSWORD)
    writer.get_by_role("link", name="Continue").click()
    turns = writer.locator("[data-testid=conversation] > li.turn")
    assert turns.count() == 2
    assert [turns.nth(i).get_attribute("data-role") for i in range(2)] == ["user", "assistant"]
    assert "7 is a prime number." in turns.nth(1).inner_text()
    shot(writer, "follow-up-390")
    writer.fill("#follow-up-text", "Is 9 one too?")
    writer.get_by_role("button", name="Send for review").click()
    assert "sent for review" in writer.locator(".flash").first.inner_text()

    admin.goto(f"{live_server}/admin/projects/{project.id}/written")
    card = admin.locator("article[data-written]")
    assert "Follow-up" in card.inner_text() and "7 is a prime number." in card.inner_text()
    card.get_by_role("button", name="Accept").click()
    assert "Accepted" in admin.locator(".flash").first.inner_text()

    other = page_at()
    ui_login(other, live_server, "dana@example.com", PASSWORD)
    other.locator("form[action$='/demonstration'] button").first.click()
    other.wait_for_url("**/label/task/*")
    shown = other.locator("[data-testid=conversation] > li.turn")
    assert [shown.nth(i).get_attribute("data-role") for i in range(shown.count())] == ["user", "assistant", "user"]
    assert other.get_by_test_id("prompt").inner_text().strip() == "Is 9 one too?"
    other.fill("#demo-text", "No: 9 is 3 times 3.")
    other.locator("#submit-btn").click()
    other.wait_for_url("**/label")

    session.expire_all()
    deeper = session.scalar(select(Prompt).where(Prompt.project_id == project.id, Prompt.id != demo.prompt_id))
    assert [m["content"] for m in deeper.messages] == ["Name a prime number.", "7 is a prime number.", "Is 9 one too?"]
    answer = session.scalar(select(Demonstration).where(Demonstration.prompt_id == deeper.id))
    assert answer.text == "No: 9 is 3 times 3."
