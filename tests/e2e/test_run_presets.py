"""Run form presets in a real Chromium (issue 28, High 1): from an SFT model's "Generate ranking
tasks" and "Train a reward model from this", clicking "CPU quick look" changes the settings only;
the queued run's model is still the SFT model. Also: a model changed in the form before the click
stays, and so do the data filter's choices. Screenshots of the run form at 1280x800 and 390x844."""

from pathlib import Path

from sqlalchemy import select

from app.models import ModelKind, ModelVersion, Role, RunStatus, TrainingRun
from app.services import registry
from runconfig import PRESETS
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.worker_helpers import add_ranking, make_labeler, make_project, make_prompts


def _world(session, settings):
    """A project with train prompts and one ranking; a base model, an SFT run and its model."""
    project = make_project(session, "Presets", k=2)
    prompts = make_prompts(session, project, [f"Name a fruit ({i})" for i in range(6)])
    labeler = make_labeler(session, "ranker@example.com")
    add_ranking(session, project, prompts[0], ["apple", "no"], [[0], [1]], labeler)
    base = registry.register_base(session, "tiny-base")
    run = TrainingRun(
        project_id=project.id,
        kind="sft",
        config={"epochs": 1},
        input_model_ids=[base.id],
        data_filter={},
        status=RunStatus.succeeded,
        summary={"train_loss": 1.25},
    )
    session.add(run)
    session.flush()
    folder = Path(settings.artifacts_dir) / "db" / f"run-{run.id}"
    folder.mkdir(parents=True)
    sft = ModelVersion(
        name="sft-1",
        kind=ModelKind.sft,
        project_id=project.id,
        source=str(folder),
        artifact_path=str(folder),
        parent_ids=[base.id],
        run_id=run.id,
    )
    session.add(sft)
    session.commit()
    return project, base, sft, labeler


def _preset(page, name: str) -> None:
    """Clicks a preset link and waits for htmx to put the new form in place (the page does not load
    again, so Playwright's load states say nothing about it)."""
    old = page.locator("#run-form").element_handle()
    with page.expect_response(lambda r: f"preset={name}" in r.url):
        page.locator(f"#run-presets a[data-preset={name}]").click()
    page.wait_for_function("el => !el.isConnected", arg=old)  # swapped
    page.wait_for_load_state("networkidle")


def _queued(session, kind: str) -> TrainingRun:
    session.expire_all()
    return session.scalars(
        select(TrainingRun).where(TrainingRun.kind == kind, TrainingRun.status == RunStatus.queued)
    ).one()


def test_a_preset_keeps_the_model_you_came_with(live_server, page_at, shot, session, make_user, settings):
    make_user("admin@example.com", Role.admin)
    project, base, sft, labeler = _world(session, settings)
    admin = page_at(1280, 800)
    ui_login(admin, live_server, "admin@example.com", PASSWORD)

    # From the SFT model's page: "Generate ranking tasks", then "CPU quick look".
    admin.goto(f"{live_server}/admin/models/{sft.id}")
    admin.get_by_role("link", name="Generate ranking tasks").click()
    admin.wait_for_load_state("networkidle")
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    _preset(admin, "cpu")
    assert admin.locator("#run-presets a[data-preset=cpu] strong").count() == 1  # the chosen preset
    generate = PRESETS["cpu"]["generate"]
    assert admin.locator("input[name=cfg_max_new_tokens]").input_value() == str(generate["max_new_tokens"])
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    shot(admin, "run-form-generate-desktop")
    admin.get_by_role("button", name="Queue generate run").click()
    admin.wait_for_url("**/admin/runs/*")
    run = _queued(session, "generate")
    assert run.input_model_ids == [sft.id] and run.config["max_new_tokens"] == generate["max_new_tokens"]

    # "Train a reward model from this": a data filter chosen in the form stays through a preset,
    # and so does a model changed in the form before the click (htmx sends the form's choices).
    admin.goto(f"{live_server}/admin/models/{sft.id}")
    admin.get_by_role("link", name="Train a reward model from this").click()
    admin.wait_for_load_state("networkidle")
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    admin.locator(f"input[name=exclude][value='{labeler.id}']").check()
    admin.locator("input[name=min_agreement]").fill("40")
    admin.locator("select[name=model_0]").select_option(str(base.id))
    _preset(admin, "cpu")
    assert admin.locator("select[name=model_0]").input_value() == str(base.id)
    assert admin.locator(f"input[name=exclude][value='{labeler.id}']").is_checked()
    assert admin.locator("input[name=min_agreement]").input_value() in ("40", "40.0")
    admin.locator("select[name=model_0]").select_option(str(sft.id))
    admin.locator(f"input[name=exclude][value='{labeler.id}']").uncheck()
    admin.locator("input[name=min_agreement]").fill("")
    _preset(admin, "cpu")
    reward = PRESETS["cpu"]["reward"]
    assert admin.locator("input[name=cfg_max_length]").input_value() == str(reward["max_length"])
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    assert "No rankings on held-out (valid) prompts" in admin.locator("#run-estimate").inner_text()
    admin.get_by_role("button", name="Queue reward run").click()
    admin.wait_for_url("**/admin/runs/*")
    run = _queued(session, "reward")
    assert run.input_model_ids == [sft.id] and run.config["max_length"] == reward["max_length"]

    # The form on a phone, from the same link.
    phone = page_at(390, 844)
    ui_login(phone, live_server, "admin@example.com", PASSWORD)
    phone.goto(f"{live_server}/admin/runs/new?kind=generate&models={sft.id}&preset=cpu")
    assert phone.locator("select[name=model_0]").input_value() == str(sft.id)
    shot(phone, "run-form-generate-phone")
    wide = phone.evaluate(
        "[...document.querySelectorAll('#run-form *')].filter(e => e.getBoundingClientRect().right > 391)"
        ".map(e => e.tagName + '.' + e.className + ' ' + (e.getAttribute('name') || '')).slice(0, 8)"
    )
    assert not wide, f"the run form is wider than a phone: {wide}"
