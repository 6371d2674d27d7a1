"""The worker process: failures that leave it serving, cancel within seconds, SIGTERM on a real
`instructloop worker`, vanished workers, and evaluate runs."""

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.config import REPO_ROOT
from app.db import utcnow
from app.models import Completion, ModelKind, ModelVersion, RunStatus, Split, Task, TaskKind
from app.services import evaluation, registry, runs
from tests.worker_helpers import (
    COUNTING,
    WorkerThread,
    base_version,
    fast_settings,
    long_generate_run,
    make_project,
    make_prompts,
    one_torch_thread,
    queue_raw,
    run_status,
    wait_for,
)
from trainer import modeling
from trainer.tiny import make_tiny_model

FINAL = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


_one_thread = pytest.fixture(autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def _progressed(engine, run_id, steps: int):
    """The run once it has done `steps` steps (or ended, so a failure shows at once)."""
    run = run_status(engine, run_id)
    return run if run.progress_step >= steps or run.status in FINAL else None


def _finished(engine, run_id):
    run = run_status(engine, run_id)
    return run if run.status in FINAL else None


def test_failing_runs_are_marked_and_the_worker_serves_the_next(settings, session, tiny):
    project = make_project(session)
    make_prompts(session, project, [p for p, _ in COUNTING[:2]])
    good_model = base_version(session, tiny)
    missing_model = registry.register_base(session, "/nonexistent/models/tiny").id
    bad_config = queue_raw(session, project, "generate", {"k": 1, "temperature": 0}, [good_model])
    unknown_model = queue_raw(session, project, "generate", {"max_new_tokens": 4}, [missing_model])
    no_data = queue_raw(session, project, "generate", {"split": "valid", "max_new_tokens": 4}, [good_model])
    deleted_input = queue_raw(session, project, "generate", {"max_new_tokens": 4}, [4242])
    orphan = queue_raw(session, project, "generate", {"max_new_tokens": 4}, [good_model])
    orphan.project_id = None  # its project was deleted (ON DELETE SET NULL)
    good = queue_raw(session, project, "generate", {"max_new_tokens": 4}, [good_model])
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        done = {
            r.id: wait_for(lambda r=r: _finished(worker.engine, r.id), timeout=60)
            for r in (bad_config, unknown_model, no_data, deleted_input, orphan, good)
        }
    assert done[good.id].status == RunStatus.succeeded, done[good.id].error
    expected = {
        bad_config.id: "k must be 0 (the project's K) or between 2 and 9, got 1. temperature must be above 0, got 0.0.",
        unknown_model.id: f"Model version {missing_model} (tiny): model folder '/nonexistent/models/tiny' does not exist",
        no_data.id: f"Project {project.id} has no valid prompts without a ranking task",
        deleted_input.id: "Input model version 4242 no longer exists",
        orphan.id: "The run's project was deleted",
    }
    for run_id, start in expected.items():
        run = done[run_id]
        assert run.status == RunStatus.failed and run.finished_at is not None
        assert run.error.startswith(start), run.error
        assert "Traceback (last 6 frames)" in run.error and len(run.error) < 6000
    assert not list(session.scalars(select(ModelVersion).where(ModelVersion.run_id.is_not(None))))


def _cancel_once_running(settings, run):
    """Starts a worker, cancels the run once it has made progress, and returns the stopped run.
    The run stops long before its end (the callers check where); the deadline only bounds a hang."""
    with WorkerThread(fast_settings(settings)) as worker:
        started = wait_for(lambda: _progressed(worker.engine, run.id, 2), timeout=60)
        assert started.status == RunStatus.running, started.error
        with worker.transaction() as s:
            runs.cancel_run(s, run.id)
        stopped = wait_for(lambda: _finished(worker.engine, run.id), timeout=60)
    assert stopped.status == RunStatus.cancelled, stopped.error
    return stopped


def test_cancel_stops_a_running_run_within_seconds(settings, session, tiny):
    project = make_project(session)
    run = long_generate_run(session, project, base_version(session, tiny))
    session.commit()
    stopped = _cancel_once_running(settings, run)
    assert "cancelled by an admin" in stopped.error and stopped.error.startswith("Cancelled at step ")
    session.expire_all()
    made = session.scalars(select(Task).where(Task.source_run_id == run.id)).all()
    assert 2 <= len(made) < 300  # the complete tasks made before the cancel stay; the rest never came


def test_a_vanished_workers_run_is_failed_and_its_late_result_dropped(settings, session, tiny):
    project = make_project(session)
    ghost = queue_raw(session, project, "generate")
    ghost.status, ghost.worker_id = RunStatus.running, "ghost-host:123"
    ghost.started_at = ghost.heartbeat_at = utcnow() - timedelta(minutes=10)
    ghost.attempts = ghost.max_attempts = 1  # its last attempt: failed, not queued again
    run = long_generate_run(session, project, base_version(session, tiny))
    run.max_attempts = 1
    session.commit()
    with WorkerThread(fast_settings(settings, worker_stale_s=30)) as worker:
        reaped = wait_for(lambda: _finished(worker.engine, ghost.id), timeout=10)
        assert reaped.status == RunStatus.failed
        assert reaped.error.startswith("Attempt 1 of 1: worker vanished (no heartbeat from worker 'ghost-host:123'")
        # Now this worker looks dead to another one (e.g. a network partition): its run is reaped,
        # and when it notices it drops the run instead of overwriting the failure.
        started = wait_for(lambda: _progressed(worker.engine, run.id, 1), timeout=60)
        assert started.status == RunStatus.running, started.error

        def reap_everything():
            with worker.transaction() as s:
                return runs.reap_stale_runs(s, stale_s=-60)

        # The reaper passes over (SKIP LOCKED) a run whose heartbeat is being written right now.
        assert wait_for(reap_everything, timeout=10) == {run.id: RunStatus.failed}
        # The worker notices at its next heartbeat and drops the run: it is free again, and claims
        # the next queued run (one that fails at once: its model does not exist).
        after = queue_raw(session, project, "generate", {"k": 2}, [999999])
        session.commit()
        wait_for(lambda: run_status(worker.engine, after.id).status != RunStatus.queued, timeout=60)
        late = run_status(worker.engine, run.id)
    assert late.status == RunStatus.failed and "worker vanished" in late.error
    assert late.progress_step < late.progress_total, "the worker kept going"
    session.commit()  # a fresh snapshot: see the worker's writes
    assert len(session.scalars(select(Task).where(Task.source_run_id == run.id)).all()) < 300


def test_sigterm_stops_a_real_worker_at_a_safe_point(settings, session, tiny):
    project = make_project(session)
    run = long_generate_run(session, project, base_version(session, tiny))
    session.commit()
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir),
        "SECRET_KEY": "test",
        "INSTRUCTLOOP_WORKER_HEARTBEAT": "0.2",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "instructloop", "worker", "--poll-interval", "0.1", "--device", "cpu"]
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    from app.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        wait_for(lambda: run_status(engine, run.id).progress_step >= 1 or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)  # a bound on a hang, not a speed claim
        stopped = run_status(engine, run.id)
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
    assert proc.returncode == 0, output
    # Queued again for another worker (a generate run goes on with the prompts that have no task yet).
    assert stopped.status == RunStatus.queued and stopped.attempts == 1, output
    assert stopped.error.startswith("Attempt 1 of 3: worker stopped (SIGTERM at step "), stopped.error
    assert "Worker stopped after 1 run." in output


def test_evaluate_run_makes_ab_tasks_and_a_reward_win_rate(settings, session, tiny, tmp_path):
    project = make_project(session)
    prompts = make_prompts(session, project, [p for p, _ in COUNTING[:8]], Split.test)
    make_prompts(session, project, ["a training prompt"])
    other = make_tiny_model(tmp_path / "other", texts=[p + " " + a for p, a in COUNTING], seed=1)
    # A reward model with a fresh head on the tiny backbone (its training is tested in test_reward).
    rm_folder = tmp_path / "rm"
    modeling.ScalarHeadModel.from_causal_lm(str(tiny), device="cpu").save_pretrained(
        rm_folder, modeling.load_tokenizer(str(tiny))
    )
    candidate, baseline = base_version(session, tiny), registry.register_base(session, str(other)).id
    rm = ModelVersion(
        name="rm",
        kind=ModelKind.reward,
        source=str(rm_folder),
        artifact_path=str(rm_folder),
        parent_ids=[candidate],
        metrics={},
    )
    session.add(rm)
    session.flush()
    run = runs.create_run(
        session,
        project_id=project.id,
        kind="evaluate",
        input_model_ids=[candidate, baseline, rm.id],
        config={"max_new_tokens": 6, "num_prompts": 8, "seed": 3},
    )
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        done = wait_for(lambda: _finished(worker.engine, run.id), timeout=120)
    assert done.status == RunStatus.succeeded, done.error
    summary = done.summary
    posed = summary["comparison_tasks"]  # two identical answers are not posed (nothing to choose)
    assert posed + summary["identical_answers"] == 8 and posed >= 4
    assert done.dataset_snapshot["rows"]["prompts"] == [p.id for p in prompts]
    session.expire_all()
    made = session.scalars(select(Task).where(Task.source_run_id == run.id)).all()
    assert len(made) == posed and all(t.kind == TaskKind.comparison for t in made)
    sides = []
    for task in made:
        a, b = (session.get(Completion, o.completion_id) for o in task.outputs)  # position 0 is A
        assert {a.model_version_id, b.model_version_id} == {candidate, baseline}
        sides.append(a.model_version_id == candidate)
        pair = next(p for p in summary["pairs"] if p["task_id"] == task.id)
        assert (pair["a"], pair["b"], pair["candidate_is_a"]) == (a.id, b.id, sides[-1])
        assert a.text.strip() != b.text.strip()
    assert 0 < sum(sides) < posed, "the A/B order is not randomized"
    verdict = summary["reward_model"]
    assert verdict["n"] == 8 and verdict["wins"] + verdict["losses"] + verdict["ties"] == 8
    assert verdict["ci95"][0] <= verdict["win_rate"] <= verdict["ci95"][1] and verdict["reward_model_id"] == rm.id
    report = evaluation.evaluation_report(session, run.id)
    assert report["labelers"]["n"] == 0 and report["labelers"]["tasks"] == posed and report["reward_model"] == verdict


def test_cancel_during_sft_registers_no_model(settings, session, tiny):
    from tests.worker_helpers import add_demonstrations, make_labeler

    project = make_project(session)
    add_demonstrations(session, project, COUNTING, make_labeler(session))
    run = queue_raw(
        session,
        project,
        "sft",
        {
            "epochs": 1000,
            "batch_size": 2,
            "micro_batch_size": 2,
            "max_length": 64,
            "max_prompt_length": 32,
            "learning_rate": 1e-3,
        },
        [base_version(session, tiny)],
    )
    session.commit()
    stopped = _cancel_once_running(settings, run)
    assert stopped.error.startswith("Cancelled at step ") and stopped.progress_total == 6000
    session.expire_all()
    assert session.scalar(select(ModelVersion.id).where(ModelVersion.run_id == run.id)) is None
    assert not (settings.artifacts_dir / registry.database_id(session) / f"run-{run.id}").exists()


def test_errors_are_described_for_people():
    from trainer.errors import TrainingDiverged
    from worker.context import describe_error

    class OutOfMemoryError(RuntimeError):  # the name torch.cuda.OutOfMemoryError has
        pass

    oom = describe_error(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert oom.startswith("Out of memory: lower the batch size") and "Tried to allocate 2.00 GiB" in oom
    assert (
        describe_error(TrainingDiverged("SFT loss became nan at step 3"))
        == "Training diverged: SFT loss became nan at step 3"
    )
    assert describe_error(ValueError("k must be 2..9")) == "k must be 2..9"
    assert describe_error(KeyError("input_ids")) == "KeyError: 'input_ids'"


def test_two_worker_processes_on_postgres_run_each_run_once(settings, session, tiny, db_url):
    if not db_url.startswith("postgresql"):
        pytest.skip(
            "the multi-process claim race is a Postgres (SKIP LOCKED) scenario; SQLite claims are "
            "serialized by its writer lock (covered with threads in test_runs)"
        )
    project = make_project(session)
    version = base_version(session, tiny)
    make_prompts(session, project, [f"Prompt {i}" for i in range(16)])
    session.commit()
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir),
        "SECRET_KEY": "test",
        "INSTRUCTLOOP_WORKER_HEARTBEAT": "0.2",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "instructloop", "worker", "--poll-interval", "0.05", "--device", "cpu"]
    procs = [
        subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    try:
        for proc in procs:  # both are polling before the runs arrive, so both get some
            for line in proc.stdout:
                if " polling " in line:
                    break
        queued = [
            queue_raw(
                session,
                project,
                "generate",
                {"k": 2, "max_new_tokens": 8, "limit": 2, "batch_size": 1, "new_prompts_only": False, "seed": i},
                [version],
            ).id
            for i in range(6)
        ]
        session.commit()
        from app.db import make_engine

        engine = make_engine(settings.db_url)
        try:
            done = [wait_for(lambda r=r: _finished(engine, r), timeout=120) for r in queued]
        finally:
            engine.dispose()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(r.status == RunStatus.succeeded for r in done), [r.error for r in done]
    assert len({r.worker_id for r in done}) == 2, "one worker took every run"
    session.expire_all()
    for run_id in queued:  # run twice, a run would have made 4 tasks
        assert len(session.scalars(select(Task).where(Task.source_run_id == run_id)).all()) == 2
