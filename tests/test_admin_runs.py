"""Run forms, run list and live run page, cancel, models registry and lineage pages."""

import re

import pytest
from sqlalchemy import select

from app.db import utcnow
from app.models import ModelKind, ModelVersion, RunKind, RunMetric, RunStatus, TrainingRun
from app.services import registry
from app.web.admin_runs import config_fields
from runconfig import PRESETS
from tests.conftest import csrf_of
from tests.test_admin_stats import World


@pytest.fixture
def world(session):
    return World(session)


def _fresh(session):
    session.rollback()
    session.expire_all()


def test_config_fields_have_defaults_and_docs():
    for kind in ("sft", "reward", "ppo", "generate", "evaluate"):
        doc, fields = config_fields(kind)
        assert doc and fields
        assert all(f.doc for f in fields), [f.name for f in fields if not f.doc]
    assert next(f for f in config_fields("sft")[1] if f.name == "learning_rate").default == 2e-5


@pytest.mark.parametrize("kind", ["sft", "reward", "ppo", "generate", "evaluate"])
def test_run_form_per_kind(admin_client, world, kind):
    r = admin_client.get(f"/admin/runs/new?kind={kind}&project={world.project.id}")
    assert r.status_code == 200
    _, fields = config_fields(kind)
    for f in fields:
        assert f'name="cfg_{f.name}"' in r.text


def _post_run(client, project_id, kind="sft", **extra):
    data = {
        "csrf_token": csrf_of(client, "/admin/runs/new"),
        "kind": kind,
        "project_id": str(project_id),
        "model_0": "default",
        "splits": "train",
        **extra,
    }
    return client.post("/admin/runs", data=data)


def test_start_run_with_changed_settings_and_filters(admin_client, session, world):
    r = _post_run(admin_client, world.project.id, cfg_epochs="1", cfg_learning_rate="2e-05", exclude=str(world.l3.id))
    assert r.status_code == 303, r.text
    run = session.scalar(select(TrainingRun))
    assert r.headers["location"] == f"/admin/runs/{run.id}"
    assert run.kind == RunKind.sft and run.status == RunStatus.queued
    assert run.config["epochs"] == 1 and run.config["learning_rate"] == 2e-5
    assert run.data_filter == {"exclude_labelers": [world.l3.id]}
    page = admin_client.get(r.headers["location"])
    assert "waiting for a worker" in page.text and 'hx-trigger="every 2s"' in page.text


def test_minimum_agreement_leaves_out_low_labelers(admin_client, session, world):
    # Agreement rates: l1 10/11 = 91%, l2 9/11 = 82%, l3 9/10 = 90%.
    r = _post_run(admin_client, world.project.id, kind="reward", min_agreement="85")
    assert r.status_code == 303, r.text
    run = session.scalar(select(TrainingRun))
    assert run.data_filter == {
        "exclude_labelers": [world.l2.id],
        "min_agreement": 85.0,
        "below_agreement": [world.l2.id],
    }
    assert "Left out 1 labeler below 85% agreement" in admin_client.get(r.headers["location"]).text


def test_api_takes_min_agreement_as_documented(client, session, world, make_user):
    from app.models import Role
    from app.services import accounts

    token = accounts.create_api_token(session, make_user("api-admin@example.com", Role.admin))
    session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    body = {"project_id": world.project.id, "kind": "reward", "data_filter": {"min_agreement": 85}}
    r = client.post("/api/v1/runs", headers=headers, json=body)
    assert r.status_code == 201, r.text
    assert r.json()["data_filter"]["exclude_labelers"] == [world.l2.id]
    bad = client.post("/api/v1/runs", headers=headers, json={**body, "data_filter": {"min_agreement": 150}})
    assert bad.status_code == 400 and "percentage between 0 and 100" in bad.json()["detail"]


@pytest.mark.parametrize(
    "extra,status,message",
    [
        ({"cfg_epochs": "three"}, 422, "epochs must be a whole number"),
        ({"cfg_learning_rate": "-1"}, 422, "learning_rate"),
        ({"min_agreement": "lots"}, 422, "Not a valid form"),  # type="number" on the page
        ({"min_agreement": "150"}, 400, "percentage"),
        ({"model_0": "999"}, 404, "does not exist"),
    ],
)
def test_bad_run_forms(admin_client, session, world, extra, status, message):
    r = _post_run(admin_client, world.project.id, **extra)
    assert r.status_code == status and message in r.text, r.text[-2000:]
    assert session.scalar(select(TrainingRun)) is None


def test_run_with_no_data_is_refused(admin_client, session, world):
    from app.services import projects

    empty = projects.create_project(session, projects.ProjectSettings(name="Empty"))
    session.commit()
    for kind, message in [
        ("sft", "no accepted demonstrations"),
        ("reward", "no rankings"),
        ("generate", "no train prompts"),
    ]:
        r = _post_run(admin_client, empty.id, kind=kind)
        assert r.status_code == 400 and message in r.text, (kind, r.text[-1500:])
    r = _post_run(admin_client, "", kind="sft")
    assert r.status_code == 400 and "needs a project" in r.text
    _fresh(session)
    assert session.scalar(select(TrainingRun)) is None
    assert session.scalar(select(ModelVersion)) is None  # nothing half-done: not even the base registration


def _run(session, project, status=RunStatus.running, **kw) -> TrainingRun:
    run = TrainingRun(
        project_id=project.id,
        kind=kw.pop("kind", RunKind.sft),
        status=status,
        config={},
        input_model_ids=[],
        data_filter={},
        summary={},
        **kw,
    )
    session.add(run)
    session.commit()
    return run


def test_live_plot_and_cancel(admin_client, session, world):
    run = _run(session, world.project, progress_step=0, progress_total=100, started_at=utcnow(), worker_id="w1")
    live = admin_client.get(f"/admin/runs/{run.id}/live")
    assert "Plots appear here" in live.text
    session.add_all([RunMetric(run_id=run.id, step=s, name="loss", value=2.0 / (s + 1)) for s in range(10)])
    run.progress_step = 10
    session.commit()
    live = admin_client.get(f"/admin/runs/{run.id}/live", headers={"HX-Request": "true"})
    assert live.status_code == 200 and 'data-metric="loss"' in live.text
    path = re.search(r'<path d="(M[^"]+)" fill="none"', live.text).group(1)
    assert path.count(" L") == 9  # one line through the 10 points
    assert "step 10 of 100" in live.text and 'hx-trigger="every 2s"' in live.text
    token = csrf_of(admin_client, f"/admin/runs/{run.id}")
    assert admin_client.post(f"/admin/runs/{run.id}/cancel", data={"csrf_token": token}).status_code == 303
    _fresh(session)
    assert session.get(TrainingRun, run.id).cancel_requested


def test_cancel_finished_run_and_failed_error(admin_client, session, world):
    run = _run(
        session,
        world.project,
        status=RunStatus.failed,
        error="ValueError: no EOS token\n  at step 3",
        finished_at=utcnow(),
    )
    page = admin_client.get(f"/admin/runs/{run.id}")
    assert "Why it failed" in page.text and "no EOS token" in page.text
    assert 'hx-trigger="every 2s"' not in page.text and "cancel-run" not in page.text
    token = csrf_of(admin_client, f"/admin/runs/{run.id}")
    r = admin_client.post(f"/admin/runs/{run.id}/cancel", data={"csrf_token": token})
    assert r.status_code == 409 and "already failed" in r.text
    _fresh(session)
    assert session.get(TrainingRun, run.id).status == RunStatus.failed
    queued = _run(session, world.project, status=RunStatus.queued)
    assert admin_client.post(f"/admin/runs/{queued.id}/cancel", data={"csrf_token": token}).status_code == 303
    _fresh(session)
    assert session.get(TrainingRun, queued.id).status == RunStatus.cancelled
    listing = admin_client.get("/admin/runs?status=cancelled")
    assert f"/admin/runs/{queued.id}" in listing.text and f'/admin/runs/{run.id}"' not in listing.text


def test_models_lineage_and_actions(admin_client, session, world):
    base = registry.register_base(session, "smollm2-135m-instruct")
    run = _run(session, world.project, status=RunStatus.succeeded)
    sft = registry.register_trained(
        session, kind=ModelKind.sft, run=run, artifact_path="/tmp/a", parent_ids=[base.id], metrics={"valid_loss": 1.25}
    )
    rm = registry.register_trained(
        session, kind=ModelKind.reward, run=run, artifact_path="/tmp/b", parent_ids=[sft.id], metrics={"accuracy": 0.7}
    )
    ppo = registry.register_trained(
        session,
        kind=ModelKind.ppo,
        run=run,
        artifact_path="/tmp/c",
        parent_ids=[sft.id, rm.id],
        metrics={"reward": 0.5},
    )
    session.commit()
    page = admin_client.get("/admin/models")
    assert page.status_code == 200
    assert page.text.count('href="/admin/models/') >= 8  # 4 boxes in the graph + 4 table rows
    assert "marker-end" in page.text and "valid_loss 1.25" in page.text
    assert f"/admin/runs/new?kind=generate&model={ppo.id}" in page.text
    detail = admin_client.get(f"/admin/models/{ppo.id}")
    assert detail.status_code == 200 and "Evaluate against another model" in detail.text
    form = admin_client.get(f"/admin/runs/new?kind=evaluate&model={ppo.id}")
    assert f'<option value="{ppo.id}" selected>' in form.text
    assert admin_client.get("/admin/models/999").status_code == 404
    token = csrf_of(admin_client, "/admin/models")
    r = admin_client.post("/admin/models", data={"csrf_token": token, "source": "  "})
    assert r.status_code == 303 and "needs a source" in admin_client.get("/admin/models").text


def test_evaluation_results_match_the_evaluation_service(admin_client, session, world):
    from app.models import Comparison, Completion, Prompt, Task, TaskCompletion, TaskKind
    from app.services import evaluation

    cand = registry.register_base(session, "/models/candidate")
    base = registry.register_base(session, "/models/baseline")
    run = _run(session, world.project, status=RunStatus.succeeded, kind=RunKind.evaluate)
    run.input_model_ids = [cand.id, base.id]
    prompt = session.scalar(select(Prompt))
    for i, choice in enumerate(["a", "a", "b", "tie", "a"]):
        a = Completion(prompt_id=prompt.id, text=f"c{i}", model_version_id=cand.id if i % 2 else base.id)
        b = Completion(prompt_id=prompt.id, text=f"b{i}", model_version_id=base.id if i % 2 else cand.id)
        session.add_all([a, b])
        session.flush()
        task = Task(
            project_id=world.project.id,
            prompt_id=prompt.id,
            kind=TaskKind.comparison,
            required=1,
            done_count=1,
            status="closed",
            source_run_id=run.id,
        )
        task.outputs = [TaskCompletion(completion_id=a.id, position=0), TaskCompletion(completion_id=b.id, position=1)]
        session.add(task)
        session.flush()
        session.add(
            Comparison(task_id=task.id, user_id=world.l1.id, a_completion_id=a.id, b_completion_id=b.id, choice=choice)
        )
    session.commit()
    one = evaluation.labeler_win_rate(session, run.id)
    batched = evaluation.recent_evaluations(session)[0][1]
    assert batched == one
    assert (one["wins"], one["losses"], one["ties"]) == (2, 2, 1)  # worked by hand from the choices above
    page = admin_client.get("/admin/models")
    assert f'href="/admin/runs/{run.id}"' in page.text and "50.0%" in page.text


def test_the_run_form_says_what_the_run_will_do_and_about_how_long(admin_client, session):
    from datetime import timedelta

    from tests.worker_helpers import COUNTING, add_demonstrations, make_labeler, make_project

    project = make_project(session, "Estimates")
    add_demonstrations(session, project, COUNTING, make_labeler(session))  # 12 accepted demonstrations
    session.commit()
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}").text
    assert "3 optimizer steps: 3 epoch(s) over 12 demonstrations" in page and "No finished sft run yet" in page
    # A finished SFT run that saw 24 demonstrations in 120 s sets the pace: 5 s per demonstration.
    done = utcnow()
    session.add(
        TrainingRun(
            project_id=project.id,
            kind=RunKind.sft,
            status=RunStatus.succeeded,
            config={"epochs": 2, "batch_size": 4},
            input_model_ids=[],
            data_filter={},
            summary={"steps": 6.0},
            dataset_snapshot={"counts": {"sft_train": 12}},
            started_at=done - timedelta(seconds=120),
            finished_at=done,
            worker_id="cpu-box:1",
        )
    )
    session.commit()
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}").text
    assert "About 3 min 00 s" in page and "worker cpu-box:1" in page  # 3 epochs x 12 = 36 x 5 s
    token = csrf_of(admin_client, "/admin/runs/new")
    changed = admin_client.post(
        "/admin/runs/estimate",
        data={"csrf_token": token, "kind": "sft", "project_id": str(project.id), "cfg_epochs": "1"},
    )
    assert changed.status_code == 200 and "About 1 min 00 s" in changed.text
    bad = admin_client.post(
        "/admin/runs/estimate",
        data={"csrf_token": token, "kind": "sft", "project_id": str(project.id), "cfg_epochs": "0"},
    )
    assert bad.status_code == 200 and "Fix the settings" in bad.text


def test_cpu_preset_fills_the_form_and_the_estimate_follows(admin_client, session):
    from tests.worker_helpers import make_project, make_prompts

    project = make_project(session, "Presets")
    make_prompts(session, project, [f"prompt {i}" for i in range(20)])
    session.commit()
    page = admin_client.get(f"/admin/runs/new?kind=ppo&project={project.id}&preset=cpu").text
    ppo = PRESETS["cpu"]["ppo"]
    assert f'name="cfg_rollout_batch_size" value="{ppo["rollout_batch_size"]}"' in page
    assert f'name="cfg_total_episodes" value="{ppo["total_episodes"]}"' in page
    steps = ppo["total_episodes"] // ppo["rollout_batch_size"]
    assert f"{steps} PPO steps of {ppo['rollout_batch_size']} episodes" in page  # the estimate reads the preset
    sft = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}&preset=cpu").text
    assert 'name="cfg_keep_best" checked' in sft and 'name="cfg_max_length" value="96"' in sft
