"""Outputs cut at the token limit are marked on the ranking and comparison screens (issue 28): the
labeler sees which answers did not end by themselves; an answer that ended, or one not sampled at
all (imported, written), carries no mark. At 1280 and 390 px, with screenshots."""

import pytest

from app.models import Completion, Role
from app.services import tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project, make_prompts

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _outputs(session, prompt):
    cut = {"ended_with_eos": False, "max_new_tokens": 64}
    done = {"ended_with_eos": True, "max_new_tokens": 64}
    texts = [("The capital of France is Paris, a city", cut), ("Paris.", done), ("It is Paris.", {})]
    outputs = [Completion(prompt_id=prompt.id, text=t, source="test", generation=g) for t, g in texts]
    session.add_all(outputs)
    session.flush()
    return outputs


@pytest.mark.parametrize("width", [1280, 390])
def test_cut_off_outputs_are_marked(live_server, page_at, shot, session, make_user, width):
    make_user("lena@example.com", Role.labeler)
    project = make_project(session, k=3)
    ranked, compared = make_prompts(session, project, ["What is the capital of France?", "And of Spain?"])
    outputs = _outputs(session, ranked)
    tasks.create_ranking_task(session, project, ranked, [o.id for o in outputs])
    a, b, _ = _outputs(session, compared)
    tasks.create_comparison_task(session, project, compared, a.id, b.id)
    session.commit()

    page = page_at(width, 844 if width == 390 else 800)
    ui_login(page, live_server, "lena@example.com", PASSWORD)
    page.locator("form[action$='/ranking'] button").first.click()
    page.wait_for_url("**/label/task/*")
    marked = {
        page.locator(f"[data-testid=output-{letter}]").inner_text(): page.locator(
            f"[data-testid=cut-off-{letter}]"
        ).count()
        for letter in "ABC"
    }
    assert marked == {"The capital of France is Paris, a city": 1, "Paris.": 0, "It is Paris.": 0}
    assert "did not end by itself" in page.locator("[data-testid^=cut-off-]").inner_text()
    shot(page, f"cut-off-ranking-{width}")

    page.goto(f"{live_server}/label")
    page.locator("form[action$='/comparison'] button").first.click()
    page.wait_for_url("**/label/task/*")
    marked = {
        page.locator(f"[data-testid=output-{side}]").inner_text(): page.locator(f"[data-testid=cut-off-{side}]").count()
        for side in "ab"
    }
    assert marked == {"The capital of France is Paris, a city": 1, "Paris.": 0}
    shot(page, f"cut-off-comparison-{width}")
