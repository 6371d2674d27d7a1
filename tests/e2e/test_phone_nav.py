"""The admin navigation on a phone (issue 28): one row of links that scrolls sideways, with the
current page's link brought into view, in a bar that scrolls away with the page (it took two rows
under the brand, pinned to the screen); on a desktop the bar stays pinned as before."""

import pytest

from app.models import Role
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _bar(page) -> dict:
    return page.evaluate(
        """() => {
        const bar = document.querySelector('.topbar').getBoundingClientRect();
        const nav = document.querySelector('.nav').getBoundingClientRect();
        const tops = [...document.querySelectorAll('.nav a')].map((a) => Math.round(a.getBoundingClientRect().top));
        const active = document.querySelector('.nav a.active').getBoundingClientRect();
        return {height: bar.height, bottom: bar.bottom, rows: new Set(tops).size,
                activeInside: active.left >= nav.left - 1 && active.right <= nav.right + 1};
    }"""
    )


def test_the_admin_navigation_takes_one_row_on_a_phone_and_scrolls_away(live_server, page_at, shot, make_user):
    make_user("ada@example.com", Role.admin)
    phone = page_at(390, 844)
    ui_login(phone, live_server, "ada@example.com", PASSWORD)
    phone.goto(f"{live_server}/admin/users")  # People: the last link, off the row's right edge at first
    bar = _bar(phone)
    assert bar["rows"] == 1 and bar["height"] < 100 and bar["activeInside"], bar
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    shot(phone, "phone-nav-390", full_page=False)
    phone.evaluate("document.querySelector('main').style.minHeight = '3000px'; window.scrollTo(0, 600)")
    assert _bar(phone)["bottom"] <= 0, "the bar scrolls away with the page"

    desktop = page_at(1280, 800)
    ui_login(desktop, live_server, "ada@example.com", PASSWORD)
    desktop.goto(f"{live_server}/admin/users")
    assert _bar(desktop)["rows"] == 1
    desktop.evaluate("document.querySelector('main').style.minHeight = '3000px'; window.scrollTo(0, 600)")
    assert _bar(desktop)["bottom"] > 0, "pinned on a desktop"
