"""Data lifecycle in a real Chromium (issue 17), on SQLite and Postgres: import a wrong file and
delete that import; archive a project and see it vanish from the labeler home; give one of two
projects to its members only and see a labeler keep only the other; revoke an invite and see its
link refused; delete a model version and see its folder gone and its child's lineage still readable;
from a finished SFT run click through to a reward run and a PPO run; the demo's simulated labelers stay
out of People's list and the run form. Screenshots at 1280x800 and
390x844."""

import re
from pathlib import Path

from sqlalchemy import select

from app.models import ModelKind, ModelVersion, Prompt, Role, RunStatus, TrainingRun
from app.services import registry, tasks
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.labeling import make_project, make_prompts
from worker.simulate import ensure_labelers


def _confirming(page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())  # the data-confirm questions


def test_imports_archive_membership_and_invites(live_server, page_at, shot, session, make_user, tmp_path):
    make_user("admin@example.com", Role.admin)
    lena = make_user("lena@example.com", Role.labeler)
    first, second = make_project(session, name="First"), make_project(session, name="Second")
    for project in (first, second):
        tasks.create_demonstration_tasks(session, project, make_prompts(session, project, [f"{project.name} prompt"]))
    session.commit()
    admin = page_at(1280, 800)
    _confirming(admin)
    ui_login(admin, live_server, "admin@example.com", PASSWORD)

    # A wrong file, imported, then deleted from its import page.
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("".join(f'{{"prompt": "not meant for this project {i}"}}\n' for i in range(3)))
    admin.goto(f"{live_server}/admin/projects/{first.id}/import")
    admin.set_input_files("input[type=file]", str(wrong))
    admin.get_by_role("button", name="Preview").click()
    admin.wait_for_load_state("networkidle")
    admin.locator("form[action$='/import'] button.primary").click()
    admin.wait_for_load_state("networkidle")
    admin.locator("#imports a", has_text="wrong.jsonl").click()
    admin.wait_for_load_state("networkidle")
    shot(admin, "lifecycle-import-desktop")
    admin.get_by_role("button", name="Delete this import").click()
    admin.wait_for_url(f"**/admin/projects/{first.id}")
    assert "Import deleted: 3 prompt(s)" in admin.locator(".flash").first.inner_text()
    session.expire_all()
    assert session.scalars(select(Prompt.text).where(Prompt.project_id == first.id)).all() == ["First prompt"]

    # Second for its members only (nobody yet): lena keeps First only.
    admin.goto(f"{live_server}/admin/projects/{second.id}")
    admin.locator("#members input[value=members]").check()
    admin.locator("#members button").click()
    admin.wait_for_load_state("networkidle")
    shot(admin, "lifecycle-project-desktop")
    labeler = page_at(390, 844)
    ui_login(labeler, live_server, "lena@example.com", PASSWORD)
    home = labeler.locator("main").inner_text()
    assert "First" in home and "Second" not in home
    shot(labeler, "lifecycle-labeler-home-phone")

    # First archived: it vanishes from lena's home too.
    admin.goto(f"{live_server}/admin/projects/{first.id}")
    admin.get_by_role("button", name="Archive").click()
    admin.wait_for_load_state("networkidle")
    assert "archived" in admin.locator("main h1").first.inner_text()
    labeler.goto(f"{live_server}/label")
    assert "First" not in labeler.locator("main").inner_text()
    assert lena.id  # (the labeler still exists; only the projects moved)

    # An invite, revoked: its link is refused.
    admin.goto(f"{live_server}/admin/users")
    admin.fill("input[name=email]", "newcomer@example.com")
    admin.get_by_role("button", name="Create invite link").click()
    admin.wait_for_load_state("networkidle")
    link = admin.locator("#invite-link").inner_text()
    shot(admin, "lifecycle-people-desktop")
    admin.locator("li", has_text="newcomer@example.com").get_by_role("button", name="Revoke").click()
    admin.wait_for_load_state("networkidle")
    stranger = page_at(390, 844)
    response = stranger.goto(link)
    assert response.status == 410 and "revoked" in stranger.locator("main").inner_text()

    # The demo's simulated labelers, made as `instructloop demo` makes them: folded away on People,
    # not among the labelers a run can leave out.
    ensure_labelers(session, 2)
    session.commit()
    admin.goto(f"{live_server}/admin/users")
    folded = admin.locator("details", has_text="simulated labelers")
    assert (
        "2 simulated labelers" in folded.inner_text() and not admin.get_by_text("sim-1@simulated.invalid").is_visible()
    )
    assert "sim 1" not in admin.locator("main").inner_text().replace(folded.inner_text(), "")
    admin.goto(f"{live_server}/admin/runs/new?kind=sft")
    offered = admin.locator("input[name=exclude]").evaluate_all("els => els.map(e => e.parentElement.innerText.trim())")
    assert "lena" in offered and not [o for o in offered if o.startswith("sim ")]


def test_models_and_runs_lead_on_and_deletion_keeps_lineage(live_server, page_at, shot, session, make_user, settings):
    make_user("admin@example.com", Role.admin)
    project = make_project(session, name="Loop")
    make_prompts(session, project, ["A prompt"])
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
    (folder / "model.safetensors").write_bytes(b"weights")
    sft = ModelVersion(
        name="sft",
        kind=ModelKind.sft,
        project_id=project.id,
        source=str(folder),
        artifact_path=str(folder),
        parent_ids=[base.id],
        run_id=run.id,
    )
    session.add(sft)
    session.flush()
    reward = ModelVersion(name="rm", kind=ModelKind.reward, project_id=project.id, source="rm", parent_ids=[sft.id])
    session.add(reward)
    session.commit()
    admin = page_at(1280, 800)
    _confirming(admin)
    ui_login(admin, live_server, "admin@example.com", PASSWORD)

    # From the finished SFT run to a reward run, then from the reward model to a PPO run.
    admin.goto(f"{live_server}/admin/runs/{run.id}")
    shot(admin, "lifecycle-run-desktop")
    admin.get_by_role("link", name="Train a reward model from this").click()
    admin.wait_for_load_state("networkidle")
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    admin.goto(f"{live_server}/admin/models/{reward.id}")
    admin.get_by_role("link", name="Run PPO with this reward model").click()
    admin.wait_for_load_state("networkidle")
    assert admin.locator("select[name=model_0]").input_value() == str(sft.id)
    assert admin.locator("select[name=model_1]").input_value() == str(reward.id)
    assert re.search(r"kind=ppo", admin.url)

    # Deleting the SFT model: its folder goes, it stays as a tombstone in its child's lineage.
    admin.goto(f"{live_server}/admin/models/{sft.id}")
    admin.get_by_role("button", name="Delete").click()
    admin.wait_for_load_state("networkidle")
    assert "stays listed as deleted" in admin.locator(".flash").first.inner_text()
    assert not folder.exists()
    admin.goto(f"{live_server}/admin/models/{reward.id}")
    assert f"#{sft.id}" in admin.locator(".lineage").inner_text()
    tombstone = admin.locator(".lineage svg g.deleted")  # grey, dashed, "deleted" (issue 28)
    assert tombstone.count() == 1 and f"#{sft.id}" in tombstone.text_content() and "deleted" in tombstone.text_content()
    shot(admin, "lifecycle-model-desktop")
    phone = page_at(390, 844)
    ui_login(phone, live_server, "admin@example.com", PASSWORD)
    phone.goto(f"{live_server}/admin/models/{sft.id}")
    assert "deleted" in phone.locator("main h1").first.inner_text()
    shot(phone, "lifecycle-model-phone")
