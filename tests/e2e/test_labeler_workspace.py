"""The labeler workspace in a real Chromium: write a demonstration, rank four outputs by keyboard
only and by drag and drop, compare two; at 1280x800 and 390x844, with screenshots.

Browser behaviour does not depend on the database, so these run on SQLite only (the services and
API tests cover Postgres)."""

import pytest
from sqlalchemy import select

from app.models import Comparison, Demonstration, Ranking, Role
from app.services import tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_outputs, make_project, make_prompts

SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
EVIL = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>not bold</b>'
GUIDELINES = f"""# How to answer

- Be **helpful**, honest and harmless.
- Refuse clearly when a request is harmful.

{EVIL}

| Score | Meaning |
|-------|---------|
| 7 | Ideal answer |
| 1 | Useless or harmful |
"""
LONG = "\n".join(f"Line {i}: the output goes on, and every line of it stays readable." for i in range(1, 41))

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _start(page, live_server, kind: str, login: bool = True) -> None:
    if login:
        ui_login(page, live_server, "lena@example.com", PASSWORD)
    page.goto(f"{live_server}/label")
    page.locator(f"form[action$='/{kind}'] button").first.click()
    page.wait_for_url("**/label/task/*")


def _no_script_ran(page) -> None:
    assert page.evaluate("window.pwned") is None


@pytest.fixture
def lena(make_user):
    return make_user("lena@example.com", Role.labeler)


@pytest.mark.parametrize("size", SIZES)
def test_write_a_demonstration(live_server, page_at, shot, session, lena, size):
    project = make_project(session, guidelines=GUIDELINES, max_demonstration_chars=300)
    prompts = make_prompts(session, project, [f"Explain photosynthesis to a child. {EVIL}", "Second prompt"])
    tasks.create_demonstration_tasks(session, project, prompts)
    session.commit()
    page = page_at(*SIZES[size])
    page.on("dialog", lambda d: pytest.fail(f"a script ran: {d.message}"))
    ui_login(page, live_server, "lena@example.com", PASSWORD)
    assert "2 tasks" in page.locator(".queue-item").first.inner_text()
    shot(page, f"labeler-home-work-{size}")

    _start(page, live_server, "demonstration", login=False)
    assert EVIL in page.get_by_test_id("prompt").inner_text()  # shown as text
    assert "not bold" in page.get_by_test_id("guidelines").inner_text()
    assert page.locator("[data-testid=guidelines] strong").first.inner_text() == "helpful"  # Markdown rendered
    assert page.locator("[data-testid=guidelines] table").count() == 1
    _no_script_ran(page)

    box = page.locator("#demo-text")
    assert box.evaluate("el => el === document.activeElement")  # ready to type
    page.keyboard.type("Plants catch sunlight with their leaves and use it to make food from air and water. ")
    page.keyboard.type(EVIL[:40])
    page.wait_for_selector("#draft-status:has-text('Draft saved')")
    count = int(page.locator("[data-count]").inner_text())
    assert count == len(box.input_value()) > 80
    shot(page, f"demonstration-{size}")

    page.reload()  # the draft comes back
    assert box.input_value().startswith("Plants catch sunlight")
    box.press("End")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/label/task/*")
    assert "Saved" in page.locator(".flash-success").inner_text()
    assert "Second prompt" in page.get_by_test_id("prompt").inner_text()
    session.expire_all()
    demo = session.scalar(select(Demonstration))
    assert demo.text.startswith("Plants catch sunlight") and demo.text.endswith(EVIL[:40].strip())
    assert demo.time_spent_ms > 800  # the time before the reload (>= the 800 ms draft delay) counts too

    page.goto(f"{live_server}/label/history")
    assert "Explain photosynthesis" in page.locator("table").inner_text()
    _no_script_ran(page)
    shot(page, f"history-{size}")


def _ranking_task(session):
    project = make_project(session, guidelines=GUIDELINES)
    (prompt,) = make_prompts(session, project, ["Write a haiku about autumn."])
    outs = make_outputs(
        session,
        prompt,
        [
            "Leaves fall slowly down\nRed and gold upon the ground\nAutumn says goodbye",
            LONG,
            f"Autumn haiku: {EVIL}",
            "I cannot help with that.",
        ],
    )
    tasks.create_ranking_task(session, project, prompt, [o.id for o in outs])
    session.commit()
    return outs


def _letters(page) -> dict[str, int]:
    cards = page.locator(".output-card")
    return {
        cards.nth(i).get_attribute("data-letter"): int(cards.nth(i).get_attribute("data-output"))
        for i in range(cards.count())
    }


@pytest.mark.parametrize("size", SIZES)
def test_rank_four_outputs_by_keyboard_only(live_server, page_at, shot, session, lena, size):
    outs = _ranking_task(session)
    page = page_at(*SIZES[size])
    page.on("dialog", lambda d: pytest.fail(f"a script ran: {d.message}"))
    _start(page, live_server, "ranking")
    letters = _letters(page)
    assert sorted(letters.values()) == sorted(o.id for o in outs)
    long_letter = next(k for k, v in letters.items() if v == outs[1].id)
    assert (
        page.get_by_test_id(f"output-{long_letter}")
        .inner_text()
        .rstrip()
        .endswith("Line 40: the output goes on, and every line of it stays readable.")
    )
    _no_script_ran(page)
    submit = page.locator("#submit-btn")
    assert submit.is_disabled()

    # Likert: focus the scale's first option with Tab from the output text, then arrows move the choice.
    likert = {"A": 6, "B": 2, "C": 4, "D": 3}
    for letter, value in likert.items():
        cid = letters[letter]
        page.locator(f"input[name=likert_{cid}][value='1']").focus()
        page.keyboard.press("Space")
        for _ in range(value - 1):
            page.keyboard.press("ArrowRight")
        assert page.locator(f"input[name=likert_{cid}]:checked").get_attribute("value") == str(value)
    # a flag, by keyboard: open the disclosure with Enter, tick with Space
    page.locator(f"#out-{letters['B']} details.flags summary").focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    assert submit.is_disabled()

    # Places on the board: focus a letter chip, press its place; ties share a number.
    chip = {letter: page.locator(f".chip[data-output='{cid}']") for letter, cid in letters.items()}
    chip["A"].focus()
    page.keyboard.press("1")
    chip["C"].focus()
    page.keyboard.press("2")
    chip["D"].focus()
    page.keyboard.press("2")  # C and D tie for 2nd
    chip["B"].focus()
    page.keyboard.press("ArrowDown")  # unplaced -> 1st
    page.keyboard.press("ArrowDown")  # -> 2nd
    page.keyboard.press("ArrowDown")  # -> 3rd
    page.keyboard.press("ArrowDown")  # -> 4th
    page.keyboard.press("0")  # taken out again
    assert submit.is_disabled()
    assert "3 of 4 placed" in page.locator("[data-status]").inner_text()
    chip["B"].focus()
    page.keyboard.press("4")
    assert page.locator(f"select[name=place_{letters['B']}]").input_value() == "4"
    assert page.locator("[data-status]").inner_text() == "Ready to submit."
    assert submit.is_enabled()
    shot(page, f"ranking-keyboard-{size}")
    shot(page, f"ranking-top-{size}", full_page=False)
    page.locator(".rank-board").scroll_into_view_if_needed()
    shot(page, f"ranking-board-{size}", full_page=False)
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/label")  # nothing else to rank: back home
    session.expire_all()
    ranking = session.scalar(select(Ranking))
    assert [sorted(g) for g in ranking.order] == [[letters["A"]], sorted([letters["C"], letters["D"]]), [letters["B"]]]
    assert {int(k): v["likert"] for k, v in ranking.ratings.items()} == {letters[k]: v for k, v in likert.items()}
    assert ranking.ratings[str(letters["B"])]["flags"] == ["fails_to_follow"]
    assert ranking.display_order == [letters[k] for k in "ABCD"]
    assert not ranking.none_acceptable


def _drag(page, source, target) -> None:
    """A real mouse drag (press, move over the target twice so it sees dragover, release)."""
    source.scroll_into_view_if_needed()
    box = source.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 6, y + 6, steps=3)  # past the drag threshold: dragstart
    target.hover()
    target.hover(position={"x": 10, "y": 10})
    page.mouse.up()


def test_rank_by_drag_and_drop(live_server, page_at, shot, session, lena):
    _ranking_task(session)
    page = page_at(1280, 800)
    _start(page, live_server, "ranking")
    letters = _letters(page)
    for letter, value in zip("ABCD", (7, 5, 5, 1)):
        page.locator(f"#out-{letters[letter]} .likert-opt:has(input[value='{value}'])").click()
    buckets = page.locator(".buckets .bucket")
    for letter, place in zip("DCAB", (1, 2, 2, 3)):  # D best, C and A tied, B last
        _drag(page, page.locator(f".chip[data-output='{letters[letter]}']"), buckets.nth(place - 1))
        assert page.locator(f"select[name=place_{letters[letter]}]").input_value() == str(place)
    assert page.locator(f"select[name=place_{letters['A']}]").input_value() == "2"
    _drag(page, page.locator(f".chip[data-output='{letters['B']}']"), buckets.nth(3))  # move B from 3rd to 4th
    assert page.locator(f"select[name=place_{letters['B']}]").input_value() == "4"
    page.get_by_label("None of these outputs is acceptable").check()
    shot(page, "ranking-drag-desktop")
    page.locator("#submit-btn").click()
    page.wait_for_url("**/label")
    session.expire_all()
    ranking = session.scalar(select(Ranking))
    assert [sorted(g) for g in ranking.order] == [[letters["D"]], sorted([letters["A"], letters["C"]]), [letters["B"]]]
    assert ranking.none_acceptable


@pytest.mark.parametrize("size", SIZES)
def test_compare_two(live_server, page_at, shot, session, lena, size):
    project = make_project(session, guidelines=GUIDELINES)
    (prompt,) = make_prompts(session, project, ["What is the capital of France?"])
    a, b = make_outputs(session, prompt, ["Paris.", f"The capital of France is Paris. {EVIL}"])
    tasks.create_comparison_task(session, project, prompt, a.id, b.id)
    session.commit()
    page = page_at(*SIZES[size])
    page.on("dialog", lambda d: pytest.fail(f"a script ran: {d.message}"))
    _start(page, live_server, "comparison")
    _no_script_ran(page)
    page.keyboard.press("t")
    assert page.locator("input[name=choice]:checked").get_attribute("value") == "tie"
    page.keyboard.press("2")
    assert page.locator("input[name=choice]:checked").get_attribute("value") == "b"
    page.locator("textarea[name=reason]").focus()
    page.keyboard.type("b adds the full sentence")  # typing 'b' and 't' here must not change the choice
    assert page.locator("input[name=choice]:checked").get_attribute("value") == "b"
    shot(page, f"compare-{size}")
    page.keyboard.press("Control+Enter")
    page.wait_for_url("**/label")
    session.expire_all()
    cmp = session.scalar(select(Comparison))
    shown_b = cmp.b_completion_id
    assert cmp.choice.value == "b" and cmp.reason == "b adds the full sentence"
    assert {cmp.a_completion_id, shown_b} == {a.id, b.id}
