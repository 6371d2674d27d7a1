"""Progress inside a step (issue 28 item 7): PPO says which token of the rollout and which epoch it
is at, with the fraction of the step done; generate says which token its batch is at; the worker
writes both, the run page shows them, and the time left counts the part of a step done and leaves
the models' loading out."""

from datetime import timedelta

import pytest

from app.db import utcnow
from app.models import RunKind, RunStatus, TrainingRun
from app.services import runs
from tests.test_worker_resume import _inputs, _when
from tests.worker_helpers import (
    WorkerThread,
    base_version,
    fast_settings,
    make_project,
    make_prompts,
    one_torch_thread,
    wait_for,
)
from trainer import progress
from trainer.modeling import ScalarHeadModel, load_causal_lm, load_tokenizer
from trainer.ppo import FIRST_STEP_SHARES, train_ppo
from trainer.tiny import make_tiny_model

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", **SIZES))


@pytest.fixture
def every_pass(monkeypatch):
    """Every forward pass reports (the worker reports at most every 2 s)."""
    monkeypatch.setattr(progress, "REPORT_EVERY_S", 0.0)


def _steps_of(events: list) -> list[list[tuple[str, int, float]]]:
    """The on_phase calls of each step (on_metrics ends a step)."""
    steps: list[list[tuple[str, int, float]]] = [[]]
    for event in events:
        if event == "step done":
            steps.append([])
        else:
            steps[-1].append(event)
    return steps[:-1]


@pytest.mark.parametrize("lora_r", [0, 4])
def test_ppo_reports_the_rollouts_tokens_scoring_and_epochs_inside_each_step(tiny, every_pass, lora_r):
    from runconfig import PPOConfig

    tokenizer = load_tokenizer(tiny)
    policy = load_causal_lm(tiny, device="cpu", lora_r=lora_r)
    ref = None if lora_r else load_causal_lm(tiny, device="cpu")
    value = ScalarHeadModel.from_causal_lm(tiny, device="cpu")
    config = PPOConfig(
        total_episodes=16,
        rollout_batch_size=8,
        forward_batch_size=4,  # two sampling batches per step
        minibatch_size=4,  # two minibatches per epoch
        ppo_epochs=2,
        max_new_tokens=4,
        seed=0,
    )
    events: list = []
    train_ppo(
        policy,
        ref,
        None,
        value,
        tokenizer,
        ["Say a number", "Answer briefly", "One thing"],
        config,
        reward_fn=lambda prompts, answers: [float(len(a)) for a in answers],
        on_metrics=lambda step, total, metrics: events.append("step done"),
        on_phase=lambda phase, total, fraction: events.append((phase, total, fraction)),
    )
    steps = _steps_of(events)
    assert len(steps) == 2
    for calls in steps:
        phases = [phase for phase, _, _ in calls]
        fractions = [fraction for _, _, fraction in calls]
        assert {total for _, total, _ in calls} == {2}
        assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] < 1.0, calls
        # The rollout's two batches token by token, then scoring, then each epoch's minibatches.
        assert phases[:3] == [
            "rolling out (batch 1/2, token 0/4)",
            "rolling out (batch 1/2, token 1/4)",
            "rolling out (batch 1/2, token 2/4)",
        ]
        assert "rolling out (batch 2/2, token 1/4)" in phases
        scoring = phases.index("scoring")
        assert all(p.startswith("rolling out") for p in phases[:scoring])
        assert phases[scoring + 1 :] == [
            "optimizing (epoch 1 of 2)",
            "optimizing (epoch 1 of 2)",
            "optimizing (epoch 1 of 2)",
            "optimizing (epoch 2 of 2)",
            "optimizing (epoch 2 of 2)",
        ]
    # The first step splits its time by the first-step shares, the second by the first's timings.
    first_scoring = next(f for p, _, f in steps[0] if p == "scoring")
    second_scoring = next(f for p, _, f in steps[1] if p == "scoring")
    assert first_scoring == FIRST_STEP_SHARES[0] and 0 < second_scoring < 1 and second_scoring != first_scoring
    # The counting hooks are gone with the run (they hold the run and its optimizer).
    assert not policy.get_input_embeddings()._forward_pre_hooks and not value._forward_pre_hooks


def test_the_worker_writes_the_progress_inside_a_ppo_step(settings, session, tmp_path, every_pass, monkeypatch):
    written: list[tuple[int, int, str | None, float | None]] = []
    record = runs.record_progress

    def recording(session, run_id, worker_id, step, total, phase=None, partial=None):
        written.append((step, total, phase, partial))
        return record(session, run_id, worker_id, step, total, phase=phase, partial=partial)

    monkeypatch.setattr(runs, "record_progress", recording)
    tiny = make_tiny_model(tmp_path / "tiny", **SIZES)
    project = make_project(session)
    inputs = _inputs(session, project, tiny, "ppo", tmp_path)
    config = {"total_episodes": 16, "rollout_batch_size": 8, "minibatch_size": 4, "ppo_epochs": 2}
    config |= {"max_new_tokens": 4, "save_every": 0}
    run = runs.create_run(session, project_id=project.id, kind="ppo", config=config, input_model_ids=inputs)
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        ended = wait_for(lambda: _when(worker.engine, run.id), timeout=120)
    assert ended.status == RunStatus.succeeded, ended.error
    in_first_step = [(phase, partial) for step, total, phase, partial in written if step == 0 and total == 2]
    assert ("rolling out (token 0 of 4)", 0.0) in in_first_step
    assert any(p == "rolling out (token 2 of 4)" and 0 < f < FIRST_STEP_SHARES[0] for p, f in in_first_step)
    assert any(p == "optimizing (epoch 2 of 2)" and sum(FIRST_STEP_SHARES[:2]) < f < 1 for p, f in in_first_step)
    # A finished step clears the part: its metrics are written with none.
    assert (1, 2, None) in [(step, total, partial) for step, total, _, partial in written]
    assert ended.progress_partial is None and ended.phase is None
    # The attempt's work began when the rollout of step 1 started, after the models were loaded.
    assert ended.attempt_log[-1]["work_from"] == 0.0 and "work_started_at" in ended.attempt_log[-1]


def test_the_worker_writes_the_tokens_of_a_generate_batch(settings, session, tmp_path, every_pass, monkeypatch):
    written: list[tuple[int, int, str | None, float | None]] = []
    record = runs.record_progress

    def recording(session, run_id, worker_id, step, total, phase=None, partial=None):
        written.append((step, total, phase, partial))
        return record(session, run_id, worker_id, step, total, phase=phase, partial=partial)

    monkeypatch.setattr(runs, "record_progress", recording)
    tiny = make_tiny_model(tmp_path / "tiny", **SIZES)
    project = make_project(session)
    make_prompts(session, project, [f"Tell me about {i}." for i in range(6)])
    version = base_version(session, tiny)
    config = {"k": 2, "max_new_tokens": 5, "batch_size": 4, "limit": 0}
    run = runs.create_run(session, project_id=project.id, kind="generate", config=config, input_model_ids=[version])
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        ended = wait_for(lambda: _when(worker.engine, run.id), timeout=120)
    assert ended.status == RunStatus.succeeded, ended.error
    # Batch 1 (4 prompts) from step 0, batch 2 (2 prompts) from step 4: each token is its share.
    assert (0, 6, "sampling (token 2 of 5)", 4 * 2 / 5) in written
    assert (4, 6, "sampling (token 2 of 5)", 2 * 2 / 5) in written
    assert (4, 6, "sampling", 0.0) in written


def _running(session, **fields) -> TrainingRun:
    project = make_project(session)
    values = dict(kind=RunKind.ppo, status=RunStatus.running, config={}, input_model_ids=[], data_filter={}, summary={})
    run = TrainingRun(project_id=project.id, **{**values, **fields})
    session.add(run)
    session.commit()
    return run


def test_the_time_left_counts_the_part_of_the_step_and_leaves_loading_out(session):
    started = utcnow() - timedelta(seconds=100)
    work = started + timedelta(seconds=40)  # 40 s of loading the models
    run = _running(
        session,
        progress_step=0,
        progress_total=2,
        progress_partial=0.5,
        attempt_log=[
            {"attempt": 1, "started_at": started.isoformat(), "work_started_at": work.isoformat(), "work_from": 0.0}
        ],
    )
    # Half a step in the 60 s since the work began: 1.5 steps left take 180 s.
    assert runs.timing(run, now=started + timedelta(seconds=100)) == {"elapsed_s": 100.0, "eta_s": 180.0}
    run.progress_partial = None  # nothing done since the work began: no pace yet
    assert runs.timing(run, now=started + timedelta(seconds=100))["eta_s"] is None


def test_the_run_page_shows_the_phase_and_the_part_of_the_step(admin_client, session):
    started = utcnow() - timedelta(seconds=30)
    run = _running(
        session,
        progress_step=0,
        progress_total=2,
        progress_partial=0.7,
        phase="optimizing (epoch 2 of 4)",
        started_at=started,
        worker_id="w1",
        attempt_log=[
            {"attempt": 1, "started_at": started.isoformat(), "work_started_at": started.isoformat(), "work_from": 0.0}
        ],
    )
    live = admin_client.get(f"/admin/runs/{run.id}/live").text
    assert '<b id="run-phase">optimizing (epoch 2 of 4)</b>' in live
    assert "step 0 of 2 (35.0%)" in live and 'style="width: 35.0%"' in live
    assert " left" in live  # 0.7 of a step in 30 s
    listing = admin_client.get("/admin/runs").text
    assert 'style="width: 35.0%"' in listing


def test_a_one_step_run_s_loading_is_measured_from_when_its_work_began(session):
    from app.models import RunMetric
    from app.services import estimates

    started = utcnow() - timedelta(seconds=500)
    work = started + timedelta(seconds=30)  # 30 s loading the four models
    run = _running(
        session,
        progress_step=1,
        progress_total=1,
        config={"total_episodes": 16, "rollout_batch_size": 16},
        attempt_log=[
            {"attempt": 1, "started_at": started.isoformat(), "work_started_at": work.isoformat(), "work_from": 0.0}
        ],
    )
    run.status, run.summary = RunStatus.succeeded, {"episodes": 16.0, "steps": 1.0}
    run.started_at, run.finished_at = started, started + timedelta(seconds=100)  # 10 s saving after the step
    session.add(RunMetric(run_id=run.id, step=1, name="score", value=0.5, created_at=work + timedelta(seconds=60)))
    session.commit()
    model = estimates.ModelInfo("smollm2-135m-instruct", 134_515_008.0, "smollm2")
    pace = estimates._measure(session, run, model)
    assert pace is not None and pace.measured_load
    assert pace.load_s == pytest.approx(40.0) and pace.per_unit_s == pytest.approx(60 / 16)
    # Without the work's start (a run from before it was recorded) one step is not enough to tell.
    run.attempt_log = [{"attempt": 1, "started_at": started.isoformat()}]
    assert not estimates._measure(session, run, model).measured_load
