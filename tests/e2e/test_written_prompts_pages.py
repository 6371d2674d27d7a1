"""Labeler-written prompts in a real Chromium (issue 18's acceptance test), on SQLite and Postgres: a
labeler writes a few-shot prompt with a category; an admin accepts it; it becomes a demonstration
task that another labeler completes; the admin data page shows it in the category mix."""

from sqlalchemy import select

from app.models import Demonstration, Prompt, Role
from app.services import written_prompts
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project

FEW_SHOT = "Translate to French.\n\nQuery: cat\nResponse: chat\n\nQuery: dog\nResponse: chien\n\nQuery: bird\nResponse:"


def test_a_written_few_shot_prompt_is_accepted_demonstrated_and_counted(live_server, page_at, session, make_user):
    make_user("admin@example.com", Role.admin)
    make_user("wren@example.com", Role.labeler)
    make_user("dana@example.com", Role.labeler)
    project = make_project(session, name="Written")
    written_prompts.set_settings(session, project.id, targets={"kind": {"few_shot": 1}}, cases=[])
    session.commit()

    writer = page_at()
    ui_login(writer, live_server, "wren@example.com", PASSWORD)
    writer.get_by_role("link", name="Write a prompt").click()
    writer.get_by_role("link", name="Few-shot").click()
    assert "Query:" in writer.input_value("#write-text"), "the few-shot template is filled in"
    writer.fill("#write-text", FEW_SHOT)
    writer.select_option("select[name=category]", "generation")
    writer.get_by_role("button", name="Send for review").click()
    assert "sent for review" in writer.locator(".flash").first.inner_text()
    assert "pending" in writer.locator("tr[data-written]").first.inner_text()

    admin = page_at()
    ui_login(admin, live_server, "admin@example.com", PASSWORD)
    admin.goto(f"{live_server}/admin/projects/{project.id}/written")
    card = admin.locator("article[data-written]")
    assert "Few-shot" in card.inner_text() and "wren@example.com" in card.inner_text()
    card.get_by_role("button", name="Accept").click()
    assert "Accepted" in admin.locator(".flash").first.inner_text()

    other = page_at()
    ui_login(other, live_server, "dana@example.com", PASSWORD)
    other.locator("form[action$='/demonstration'] button").first.click()
    other.wait_for_url("**/label/task/*")
    assert "Translate to French." in other.get_by_test_id("prompt").inner_text()
    other.fill("#demo-text", "oiseau")
    other.locator("#submit-btn").click()
    other.wait_for_url("**/label")

    admin.goto(f"{live_server}/admin/data?project={project.id}")
    mix = admin.locator("details.category-mix")
    assert "1 of 1 prompts categorized" in mix.inner_text()
    assert "generation" in mix.locator("tbody tr").first.inner_text()
    session.expire_all()
    prompt = session.scalar(select(Prompt).where(Prompt.project_id == project.id))
    assert prompt.source == written_prompts.SOURCE
    assert session.scalar(select(Demonstration.text)) == "oiseau"
