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


def test_the_run_page_says_which_sampler_ran(admin_client, session, world):
    run = _run(session, world.project, status=RunStatus.succeeded, kind=RunKind.generate)
    run.summary = {"completions": 8.0, "rollout_backend": "vllm"}
    session.commit()
    page = admin_client.get(f"/admin/runs/{run.id}").text
    assert re.search(r"<dt>sampled with</dt><dd>vLLM</dd>", page) and "<dt>completions</dt>" in page


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


def _model_folder(tmp_path, name, hidden, layers, vocab=512):
    """A model folder with only its config.json: enough for the estimate to count its parameters."""
    import json

    folder = tmp_path / name
    folder.mkdir()
    config = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "intermediate_size": 4 * hidden,
        "vocab_size": vocab,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _finished_sft(session, project, version_id, *, load_s, step_s, steps, batch, save_s, worker="cpu-box:1"):
    """A succeeded SFT run whose metrics say: load_s before the first step, step_s per step, save_s after."""
    from datetime import timedelta

    start = utcnow() - timedelta(seconds=load_s + steps * step_s + save_s + 60)
    run = TrainingRun(
        project_id=project.id,
        kind=RunKind.sft,
        status=RunStatus.succeeded,
        config={"epochs": 1, "batch_size": batch, "micro_batch_size": batch},
        input_model_ids=[version_id],
        data_filter={},
        summary={"steps": float(steps)},
        dataset_snapshot={"counts": {"sft_train": steps * batch}},
        started_at=start,
        finished_at=start + timedelta(seconds=load_s + steps * step_s + save_s),
        progress_step=steps,
        progress_total=steps,
        attempts=1,
        attempt_log=[{"attempt": 1, "worker": worker, "started_at": start.isoformat()}],
        worker_id=worker,
    )
    session.add(run)
    session.flush()
    for step in range(1, steps + 1):
        at = start + timedelta(seconds=load_s + step * step_s)
        session.add(RunMetric(run_id=run.id, step=step, name="train_loss", value=1.0, created_at=at))
    session.flush()
    return run


@pytest.fixture
def quiet_cpu(monkeypatch):
    """A machine where the first guess holds: no GPU, bf16 instructions, not busy."""
    from app.services import estimates

    monkeypatch.setattr(estimates, "gpu_present", lambda: False)
    monkeypatch.setattr(estimates, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(estimates.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    # The test's models are tiny; the guess's own size floor is tested on its own below.
    monkeypatch.setattr(estimates, "FIRST_GUESS_MIN_PARAMS", 0)


def test_no_first_guess_for_a_model_far_smaller_than_the_one_it_was_measured_on(monkeypatch):
    from app.services import estimates

    monkeypatch.setattr(estimates, "gpu_present", lambda: False)
    monkeypatch.setattr(estimates, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(estimates.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    config = type("Config", (), {"precision": "bf16"})()
    assert "under 50M parameters" in estimates._first_guess_problem(estimates.RunKind.sft, config, 33_000)
    assert estimates._first_guess_problem(estimates.RunKind.sft, config, 134_515_008) is None


def test_the_estimate_takes_loading_apart_from_the_pace_of_a_run_on_the_same_model(
    admin_client, session, tmp_path, quiet_cpu
):
    from tests.worker_helpers import COUNTING, add_demonstrations, make_labeler, make_project

    project = make_project(session, "Estimates")
    add_demonstrations(session, project, COUNTING, make_labeler(session))  # 12 accepted demonstrations
    small = registry.register_base(session, _model_folder(tmp_path, "small", 64, 2), project_id=project.id)
    big = registry.register_base(session, _model_folder(tmp_path, "big", 512, 12), project_id=project.id)
    session.commit()
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}&preset=defaults&model_0={small.id}").text
    assert "3 optimizer steps: 3 epoch(s) over 12 demonstrations" in page
    # The default precision is fp32 on a CPU: the first guess's constant was measured in bf16 mixed.
    assert "About" not in page and "measured in bf16 mixed precision" in page
    token = csrf_of(admin_client, "/admin/runs/new")
    form = {"csrf_token": token, "kind": "sft", "project_id": str(project.id), "model_0": str(small.id)}
    guess = admin_client.post("/admin/runs/estimate", data={**form, "cfg_precision": "bf16"}).text
    assert "First guess: no finished sft run on a comparable model yet" in guess  # a size and this CPU
    # SFT on the small model: 15 s loading, 6 steps of 4 demonstrations at 5 s a step, 5 s saving.
    _finished_sft(session, project, small.id, load_s=15, step_s=5, steps=6, batch=4, save_s=5)
    # Newer, on a model about 130x the size: not a pace for the small model.
    _finished_sft(session, project, big.id, load_s=40, step_s=500, steps=2, batch=4, save_s=10, worker="other:2")
    session.commit()
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}&preset=defaults&model_0={small.id}").text
    # 20 s loading and saving + 36 demonstrations x 1.25 s = 65 s (the whole run's pace said 2.2 s each: 100 s)
    assert "About 1 min 05 s" in page and "on the same model" in page and "worker cpu-box:1" in page
    changed = admin_client.post("/admin/runs/estimate", data={**form, "cfg_epochs": "1"})
    assert changed.status_code == 200 and "About 35 s" in changed.text  # 20 + 12 x 1.25
    bad = admin_client.post("/admin/runs/estimate", data={**form, "cfg_epochs": "0"})
    assert bad.status_code == 200 and "Fix the settings" in bad.text
    # The big model's own run sets its pace: loading 50 s, 125 s per demonstration.
    on_big = admin_client.post("/admin/runs/estimate", data={**form, "model_0": str(big.id), "cfg_epochs": "1"})
    assert "About 25 min 50 s" in on_big.text and "worker other:2" in on_big.text  # 50 + 12 x 125


def test_a_comparable_model_scales_the_pace_and_an_unknown_one_gets_no_number(admin_client, session, tmp_path):
    from tests.worker_helpers import COUNTING, add_demonstrations, make_labeler, make_project

    project = make_project(session, "Scaled")
    add_demonstrations(session, project, COUNTING, make_labeler(session))
    one = registry.register_base(session, _model_folder(tmp_path, "one", 256, 4), project_id=project.id)
    two = registry.register_base(session, _model_folder(tmp_path, "two", 256, 8), project_id=project.id)
    hub = registry.register_base(session, "no-such-org/unsized-model", project_id=project.id)
    _finished_sft(session, project, one.id, load_s=10, step_s=4, steps=6, batch=4, save_s=0)
    session.commit()
    token = csrf_of(admin_client, "/admin/runs/new")
    form = {"csrf_token": token, "kind": "sft", "project_id": str(project.id), "cfg_epochs": "1"}
    scaled = admin_client.post("/admin/runs/estimate", data={**form, "model_0": str(two.id)}).text
    ratio = _params_of(256, 8) / _params_of(256, 4)
    expected = 10 * ratio + 12 * 1.0 * ratio  # loading and per-demonstration time both scale with size
    from app.web.render import duration

    assert f"About {duration(expected)}" in scaled and "scaled to" in scaled
    unknown = admin_client.post("/admin/runs/estimate", data={**form, "model_0": str(hub.id)}).text
    assert "About" not in unknown and "No estimate" in unknown and "size is unknown" in unknown


def _params_of(hidden, layers, vocab=512):
    return layers * (4 * hidden * hidden + 3 * hidden * 4 * hidden) + vocab * hidden


def test_no_first_guess_on_a_gpu_machine_a_busy_one_or_for_sampling(
    admin_client, session, tmp_path, quiet_cpu, monkeypatch
):
    from app.services import estimates
    from tests.worker_helpers import COUNTING, add_demonstrations, make_labeler, make_project

    project = make_project(session, "GPU box")
    add_demonstrations(session, project, COUNTING, make_labeler(session))
    version = registry.register_base(session, _model_folder(tmp_path, "m", 64, 2), project_id=project.id)
    session.commit()
    url = f"/admin/runs/new?kind=sft&project={project.id}&model_0={version.id}&preset=cpu"  # bf16 mixed
    assert "First guess" in admin_client.get(url).text
    generate = admin_client.get(url.replace("kind=sft", "kind=generate")).text
    assert "First guess" not in generate and "no measured first guess for sampling" in generate
    monkeypatch.setattr(estimates.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert "this machine is busy" in admin_client.get(url).text
    monkeypatch.setattr(estimates.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(estimates, "cpu_has_bf16", lambda: False)
    token = csrf_of(admin_client, "/admin/runs/new")
    form = {"csrf_token": token, "kind": "sft", "project_id": str(project.id), "model_0": str(version.id)}
    bf16 = admin_client.post("/admin/runs/estimate", data={**form, "cfg_precision": "bf16"}).text
    assert "About" not in bf16 and "bf16 is emulated" in bf16
    fp32 = admin_client.post("/admin/runs/estimate", data={**form, "cfg_precision": "fp32"}).text
    assert "About" not in fp32 and "no measured first guess for this precision on this CPU" in fp32
    monkeypatch.setattr(estimates, "gpu_present", lambda: True)
    page = admin_client.get(url).text
    assert "About" not in page and "no measured first guess for a GPU" in page


def test_the_form_opens_with_the_cpu_preset_when_no_gpu_is_present(admin_client, session, monkeypatch):
    from app.services import estimates
    from tests.worker_helpers import make_project

    project = make_project(session, "Devices")
    session.commit()
    cpu = PRESETS["cpu"]["sft"]
    monkeypatch.setattr(estimates, "gpu_present", lambda: False)
    monkeypatch.setattr(estimates, "cpu_has_bf16", lambda: True)
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}").text
    assert f'name="cfg_max_length" value="{cpu["max_length"]}"' in page and 'name="cfg_precision" value="bf16"' in page
    assert "chosen because this machine has no GPU" in page
    monkeypatch.setattr(estimates, "cpu_has_bf16", lambda: False)  # bf16 would be emulated, 10x slower
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}").text
    assert 'name="cfg_precision" value="fp32"' in page and "this CPU has no bf16 instructions" in page
    monkeypatch.setattr(estimates, "gpu_present", lambda: True)
    page = admin_client.get(f"/admin/runs/new?kind=sft&project={project.id}").text
    assert 'name="cfg_max_length" value="1024"' in page and "the defaults (sized for a GPU)" in page


def test_a_preset_keeps_the_models_project_and_data_filter(admin_client, session, world, tmp_path):
    folder = str(tmp_path / "sft")
    sft = ModelVersion(
        name="sft-7",
        kind=ModelKind.sft,
        source=folder,
        artifact_path=folder,
        parent_ids=[],
        project_id=world.project.id,
    )
    session.add(sft)
    session.commit()
    url = f"/admin/runs/new?kind=generate&models={sft.id}"
    page = admin_client.get(url).text
    assert re.search(rf'<option value="{sft.id}" selected>', page)
    link = re.search(r'href="(/admin/runs/new\?[^"]*preset=cpu)"', page).group(1).replace("&amp;", "&")
    assert f"model_0={sft.id}" in link and f"project={world.project.id}" in link
    kept = admin_client.get(link).text
    assert re.search(rf'<option value="{sft.id}" selected>', kept)
    gen = PRESETS["cpu"]["generate"]
    assert f'name="cfg_max_new_tokens" value="{gen["max_new_tokens"]}"' in kept
    # The data filter of a reward form stays too (htmx sends the form's models and data with the preset).
    reward = admin_client.get(
        f"/admin/runs/new?kind=reward&project={world.project.id}&model_0={sft.id}&splits=train&splits=valid"
        f"&exclude={world.l2.id}&min_agreement=60&preset=cpu-real"
    ).text
    assert re.search(rf'<option value="{sft.id}" selected>', reward)
    assert re.search(r'name="splits" value="valid" class="keep-on-preset" checked', reward)
    assert re.search(rf'name="exclude" value="{world.l2.id}" class="keep-on-preset" checked', reward)
    assert (
        'name="min_agreement" class="keep-on-preset" type="number" min="0" max="100" step="any" value="60.0"' in reward
    )
    assert f'name="cfg_epochs" value="{PRESETS["cpu-real"]["reward"]["epochs"]}"' in reward


def test_a_reward_form_without_held_out_rankings_warns(admin_client, session, world):
    page = admin_client.get(f"/admin/runs/new?kind=reward&project={world.project.id}").text
    assert "No rankings on held-out (valid) prompts" in page  # World's one ranking task is on a train prompt


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


def test_the_run_line_and_inputs_read_as_words(admin_client, session, world):
    """No empty item in the run line while models load ("loading models · 12 s elapsed", not "· ·"),
    and the data filter names the labelers it left out."""
    from datetime import timedelta

    started = utcnow() - timedelta(seconds=12)
    run = TrainingRun(
        project_id=world.project.id,
        kind=RunKind.sft,
        status=RunStatus.running,
        config={},
        input_model_ids=[],
        data_filter={
            "exclude_labelers": [world.l1.id, world.l3.id],
            "min_agreement": 65.0,
            "below_agreement": [world.l3.id],
        },
        started_at=started,
        phase="loading models",
        attempts=1,
        attempt_log=[{"attempt": 1, "worker": "w", "started_at": started.isoformat()}],
    )
    session.add(run)
    session.commit()
    live = admin_client.get(f"/admin/runs/{run.id}/live").text
    line = re.sub(r"<[^>]+>", "", re.search(r'id="run-progress-text">(.*?)</span>', live).group(1))
    assert re.fullmatch(r"loading models · 1\d s elapsed", line), line
    page = admin_client.get(f"/admin/runs/{run.id}").text
    shown = re.sub(r"<[^>]+>", "", re.search(r'id="run-data-filter">(.*?)</dd>', page, re.S).group(1))
    names = [u.name or u.email for u in (world.l1, world.l3)]
    assert f"left out: {names[0]}, {names[1]}" in shown and f"below the minimum agreement: {names[1]}" in shown
    assert "minimum agreement: 65%" in shown and "[" not in shown  # (it showed exclude_labelers = [2, 4])
