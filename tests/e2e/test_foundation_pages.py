"""Login page, labeler home and admin dashboard in a real Chromium, at desktop and phone sizes."""

import pytest

from app.models import Role
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}


@pytest.mark.parametrize("size", SIZES)
def test_login_home_and_dashboard(live_server, page_at, shot, make_user, size):
    make_user("lena@example.com", Role.labeler)
    make_user("ada@example.com", Role.admin)
    page = page_at(*SIZES[size])

    page.goto(f"{live_server}/label")
    assert "/login" in page.url
    shot(page, f"login-{size}")

    page.fill("input[name=email]", "lena@example.com")
    page.fill("input[name=password]", "wrong password")
    page.click("button[type=submit]")
    assert page.locator(".flash-error").inner_text() == "Wrong email or password."
    shot(page, f"login-error-{size}")

    ui_login(page, live_server, "lena@example.com", PASSWORD)
    assert page.url.endswith("/label")
    assert page.locator("h1").first.inner_text() == "Your work"
    shot(page, f"labeler-home-{size}")
    page.goto(f"{live_server}/admin")
    assert page.locator("h1").inner_text() == "Forbidden"

    page.click("text=Log out")
    page.wait_for_url("**/login")
    ui_login(page, live_server, "ada@example.com", PASSWORD)
    assert page.url.endswith("/admin")
    assert page.locator("h1").first.inner_text() == "Dashboard"
    shot(page, f"admin-dashboard-{size}")
    page.goto(f"{live_server}/admin/users")
    page.fill("input[name=email]", "new.labeler@example.com")
    page.click("text=Create invite link")
    assert "/invite/" in page.locator("#invite-link").inner_text()
    shot(page, f"admin-people-{size}")
