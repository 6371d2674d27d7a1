"""The admin dashboard in a real Chromium: create a project, import a file, invite a labeler, start an
SFT run that a real worker trains while its plot updates live, open the lineage, download an export.
Screenshots at 1280x800 go to tests/e2e/screenshots/admin-*.png."""

import json
import re

import pytest

from app.models import Role, RunStatus
from tests.conftest import PASSWORD
from tests.e2e.conftest import ui_login
from tests.worker_helpers import (
    COUNTING,
    WorkerThread,
    add_demonstrations,
    fast_settings,
    one_torch_thread,
    run_status,
    wait_for,
)

datasets = pytest.importorskip("datasets")
_one_thread = pytest.fixture(autouse=True)(one_torch_thread)


def _plot_and_step(page, metric: str) -> tuple[str, int]:
    """The plotted line of `metric` (its path) and the run's step, as the page shows them now."""
    d = page.locator(f'[data-metric="{metric}"] path[fill="none"]').first.get_attribute("d") or ""
    step = re.search(r"step (\d+) of", page.locator("#run-progress-text").inner_text())
    return d, int(step.group(1)) if step else -1


def test_admin_runs_the_loop_in_a_browser(live_server, page_at, shot, make_user, session, settings, tmp_path):
    make_user("ada@example.com", Role.admin)
    make_user("lena@example.com", Role.labeler)
    page = page_at(1280, 800)
    ui_login(page, live_server, "ada@example.com", PASSWORD)

    # 1. Create a project, with the guidelines preview rendered as typed.
    page.goto(f"{live_server}/admin/projects/new")
    page.fill("input[name=name]", "Counting assistant")
    page.fill("input[name=description]", "Answer with the next numbers")
    page.fill("input[name=k]", "2")
    page.fill("input[name=target_demonstration]", "40")
    page.fill(
        "textarea[name=guidelines]",
        "# Counting\n\nReply with the **next four numbers**, separated by spaces.\n\n- no words\n- no punctuation",
    )
    page.wait_for_selector("#guidelines-preview strong")
    shot(page, "admin-project-new")
    page.click("text=Create project")
    page.wait_for_url(re.compile(r".*/admin/projects/\d+$"))
    project_id = int(page.url.rsplit("/", 1)[1])
    assert "created" in page.locator(".flash-success").inner_text()
    shot(page, "admin-project")

    # 2. Import a file: preview first (a duplicate is reported), then import.
    file = tmp_path / "counting.jsonl"
    lines = [
        {"prompt": f"Count on from {i * 7}.", "reference": " ".join(str(i * 7 + j) for j in range(1, 5))}
        for i in range(40)
    ] + [{"prompt": "Count on from 0."}]
    file.write_text("\n".join(json.dumps(x) for x in lines))
    page.click(f"a[href='/admin/projects/{project_id}/import']")
    page.set_input_files("input[type=file]", str(file))
    page.click("button:has-text('Preview')")
    page.wait_for_selector("#preview")
    assert "line 41 = line 1" in page.content()
    shot(page, "admin-import-preview")
    page.click("button:has-text('Import 40 prompts')")
    page.wait_for_url(f"**/admin/projects/{project_id}")
    assert "Imported 40 prompts" in page.locator(".flash-success").inner_text()

    # 3. Invite a labeler.
    page.goto(f"{live_server}/admin/users")
    page.fill("input[name=email]", "new.labeler@example.com")
    page.click("text=Create invite link")
    assert "/invite/" in page.locator("#invite-link").inner_text()

    # Labels the project needs for SFT: demonstrations written straight to the database (the
    # labeler pages have their own browser tests), and a tiny model to train quickly on the CPU.
    from app.models import Project
    from app.services import registry
    from trainer.tiny import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny", texts=[p + " " + a for p, a in COUNTING])
    project = session.get(Project, project_id)
    add_demonstrations(session, project, COUNTING, make_user("writer@example.com", Role.labeler))
    base = registry.register_base(session, str(tiny), name="tiny-counting")
    session.commit()

    # 4. Start an SFT run from its form; a real worker trains it while the page plots the loss. The
    #    first run is far too long to finish (1,000 epochs of one-example steps, the most the form
    #    allows), so the test sees its plot grow whatever the machine's speed, then cancels it from the
    #    page; a second, short run goes to the end.
    def queue_sft(epochs: int, batch: int = 4) -> int:
        page.goto(f"{live_server}/admin/runs/new?kind=sft&project={project_id}")
        page.select_option("select[name=model_0]", str(base.id))
        for name, value in {
            "epochs": str(epochs),
            "batch_size": str(batch),
            "micro_batch_size": str(batch),
            "max_length": "64",
            "max_prompt_length": "32",
            "learning_rate": "0.003",
            "warmup_ratio": "0",
        }.items():
            page.fill(f"input[name=cfg_{name}]", value)
        shot(page, "admin-run-new")
        page.click("button:has-text('Queue sft run')")
        page.wait_for_url(re.compile(r".*/admin/runs/\d+$"))
        return int(page.url.rsplit("/", 1)[1])

    long_run = queue_sft(epochs=1000, batch=1)
    assert "waiting for a worker" in page.locator("#run-live").inner_text()  # none started yet
    page.evaluate("window.notReloaded = true")
    engine = session.get_bind()  # a fresh session per look: a held SQLite snapshot would never see the end
    with WorkerThread(fast_settings(settings)):
        page.wait_for_selector('[data-metric="train_loss"]', timeout=120_000)
        first_plot, first_step = _plot_and_step(page, "train_loss")
        shot(page, "admin-run-live")
        # The line is thinned to 400 points once the run is longer, so "it grew" means: a later step
        # and a redrawn line.
        page.wait_for_function(
            """([d, step]) => { const p = document.querySelector('[data-metric="train_loss"] path[fill="none"]');
                                const m = document.querySelector('#run-progress-text').innerText.match(/step (\\d+) of/);
                                return p && m && p.getAttribute('d') !== d && Number(m[1]) > step; }""",
            arg=[first_plot, first_step],
            timeout=60_000,
        )
        plot, step = _plot_and_step(page, "train_loss")
        assert step > first_step and plot != first_plot
        assert page.evaluate("window.notReloaded")  # the same page, updated by htmx polling
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel-run")
        page.wait_for_selector("#run-live .badge.warn", timeout=60_000)  # cancelled
        assert run_status(engine, long_run).status == RunStatus.cancelled

        run_id = queue_sft(epochs=20)
        wait_for(lambda: run_status(engine, run_id).status not in (RunStatus.queued, RunStatus.running), timeout=180)
    run = run_status(engine, run_id)
    assert run.status == RunStatus.succeeded, run.error
    page.wait_for_selector("#run-live .badge.ok", timeout=10_000)  # polling stops at the final state
    shot(page, "admin-run-done")

    # 5. The lineage: the tiny base model -> the SFT model this run made.
    page.click("text=Models")
    page.wait_for_selector("#lineage svg")
    assert page.locator("#lineage svg a").count() == 2
    assert page.locator("#lineage svg path[marker-end]").count() == 1
    shot(page, "admin-models")
    page.click("#lineage svg a >> nth=1")
    page.wait_for_url(re.compile(r".*/admin/models/\d+$"))
    shot(page, "admin-model")

    # 6. Download an export from the data page and load it with `datasets`.
    page.goto(f"{live_server}/admin/data")
    shot(page, "admin-data")
    with page.expect_download() as info:
        page.click(f"a[href='/admin/projects/{project_id}/export/sft']")
    path = tmp_path / "sft.jsonl"
    info.value.save_as(path)
    ds = datasets.load_dataset("json", data_files=str(path), split="train")
    assert len(ds) == len(COUNTING) and set(ds.column_names) == {"prompt", "completion", "split", "category", "source"}

    page.goto(f"{live_server}/admin/labelers")
    shot(page, "admin-labelers")
    page.goto(f"{live_server}/admin/runs")
    shot(page, "admin-runs")
