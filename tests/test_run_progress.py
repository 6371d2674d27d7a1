"""A run says what it is doing from its first second: its phase and its number of steps before the
first step is done, elapsed time and an estimate of the time left; and a cancel in the middle of a
long PPO step ends the run within seconds."""

import pytest

from app.models import RunStatus
from app.services import runs
from app.web.render import duration
from tests.test_worker_resume import _inputs, _when
from tests.worker_helpers import COUNTING, WorkerThread, fast_settings, make_project, one_torch_thread, wait_for
from trainer.ppo import FIRST_STEP_SHARES
from trainer.tiny import make_tiny_model

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

# One PPO step of many minibatch updates: long enough to cancel in its middle.
LONG_STEP = {
    "total_episodes": 96,
    "rollout_batch_size": 32,
    "minibatch_size": 1,
    "forward_batch_size": 32,
    "max_new_tokens": 8,
    "ppo_epochs": 100,
    "save_every": 0,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def test_phase_total_and_cancel_in_the_middle_of_a_long_ppo_step(settings, session, tiny, tmp_path, client):
    project = make_project(session)
    inputs = _inputs(session, project, tiny, "ppo", tmp_path)
    run = runs.create_run(session, project_id=project.id, kind="ppo", config=LONG_STEP, input_model_ids=inputs)
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        seen = wait_for(
            lambda: _when(worker.engine, run.id, lambda r: (r.phase or "").startswith("optimizing")), timeout=120
        )
        assert seen.status == RunStatus.running, seen.error
        # The first step is not done, and the page and the API already say how many there are.
        assert (seen.progress_step, seen.progress_total) == (0, 3)
        assert "ended_at" not in seen.attempt_log[-1]  # the attempt is running
        timing = runs.timing(seen)
        assert timing["elapsed_s"] is not None and timing["elapsed_s"] >= 0
        # The rollout is done: that part of the step gives a time left before the step ends.
        assert seen.progress_partial >= FIRST_STEP_SHARES[0] and timing["eta_s"] > 0
        with worker.transaction() as s:
            runs.cancel_run(s, run.id)
        stopped = wait_for(lambda: _when(worker.engine, run.id), timeout=60)
    assert stopped.status == RunStatus.cancelled, stopped.error
    assert stopped.phase is None and stopped.error.startswith("Cancelled at step ")


def test_the_estimate_follows_the_pace_of_the_current_attempt(session):
    from datetime import timedelta

    from app.db import utcnow
    from app.models import TrainingRun

    started = utcnow() - timedelta(seconds=100)
    run = TrainingRun(
        status=RunStatus.running,
        progress_step=30,
        progress_total=50,
        attempt_log=[{"attempt": 2, "started_at": started.isoformat(), "from_step": 10}],
    )
    timing = runs.timing(run, now=started + timedelta(seconds=100))
    assert timing == {"elapsed_s": 100.0, "eta_s": 100.0}  # 20 steps in 100 s; 20 left
    assert [duration(s) for s in (7, 245, 7620)] == ["7 s", "4 min 05 s", "2 h 07 min"]
