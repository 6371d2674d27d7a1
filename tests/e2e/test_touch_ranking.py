"""Touch drag on the ranking board (issue 28, Low): on a touch screen a finger drags a letter chip
into a place (HTML5 drag and drop starts from a mouse only, so a finger did nothing); a tap still
only scrolls to the output. Real touch input through Chromium (CDP Input.dispatchTouchEvent)."""

import pytest

from app.models import Role
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import ranking_setup

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _centre(page, selector):
    box = page.locator(selector).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def _touch(cdp, kind, points):
    cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [{"x": x, "y": y} for x, y in points]})


def test_a_finger_drags_a_chip_into_a_place(live_server, browser, session, make_user, shot):
    make_user("lena@example.com", Role.labeler)
    ranking_setup(session, n_outputs=3)
    session.commit()
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        ui_login(page, live_server, "lena@example.com", PASSWORD)
        page.locator("form[action$='/ranking'] button").first.click()
        page.wait_for_url("**/label/task/*")
        cdp = context.new_cdp_session(page)
        chip_a = page.locator(".chip", has_text="A")
        output_a = chip_a.get_attribute("data-output")
        chip_a.scroll_into_view_if_needed()

        # A tap: no place.
        x, y = _centre(page, f".chip[data-output='{output_a}']")
        _touch(cdp, "touchStart", [(x, y)])
        _touch(cdp, "touchEnd", [])
        assert page.locator(f"select[name=place_{output_a}]").input_value() == ""
        page.wait_for_function(  # the tap scrolls (smoothly) to output A: wait until the page stands still
            "new Promise((ok) => { const y = scrollY; setTimeout(() => ok(scrollY === y), 300); })"
        )
        page.evaluate("document.querySelector('[data-board]').scrollIntoView({block: 'center'})")

        # A drag to the first place, in small moves as a finger makes them.
        x, y = _centre(page, f".chip[data-output='{output_a}']")
        tx, ty = _centre(page, "[data-board] [data-drop='1']")
        _touch(cdp, "touchStart", [(x, y)])
        for i in range(1, 11):
            _touch(cdp, "touchMove", [(x + (tx - x) * i / 10, y + (ty - y) * i / 10)])
        _touch(cdp, "touchEnd", [])
        assert page.locator(f"select[name=place_{output_a}]").input_value() == "1"
        assert page.locator(f"[data-board] [data-drop='1'] .chip[data-output='{output_a}']").count() == 1
        assert "1 of 3 placed" in page.locator("[data-status]").inner_text()
        shot(page, "touch-ranking-390")
    finally:
        context.close()
