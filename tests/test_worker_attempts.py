"""A run's second attempt, resumed from a checkpoint older than the last step its first attempt
reported (the worker died in between): the attempt log names the checkpoint's step and every
step's metrics are recorded once. Fast: a tiny model, a few steps, in this process."""

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select

from app.db import utcnow, write_session
from app.models import RunMetric, RunStatus, TrainingRun
from app.services import runs
from tests.worker_helpers import (
    COUNTING,
    add_demonstrations,
    base_version,
    fast_settings,
    make_labeler,
    make_project,
    one_torch_thread,
)
from trainer.tiny import make_tiny_model
from worker.worker import Worker

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

SFT = {
    "learning_rate": 1e-3,
    "epochs": 1,
    "batch_size": 2,
    "micro_batch_size": 2,
    "max_length": 64,
    "max_prompt_length": 32,
    "warmup_ratio": 0.0,
    "save_every": 2,
}


class Killed(BaseException):
    """The worker process dies here (no ending of the run is written)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def test_a_resumed_attempt_starts_at_its_checkpoint_and_records_each_steps_metrics_once(settings, session, tiny):
    project = make_project(session)
    add_demonstrations(session, project, COUNTING, make_labeler(session))  # 12 examples: 6 steps of 2
    run = runs.create_run(
        session, project_id=project.id, kind="sft", config=SFT, input_model_ids=[base_version(session, tiny)]
    )
    session.commit()

    first = Worker(settings, worker_id="first", device="cpu")
    ctx = first.claim()
    assert ctx is not None and ctx.run_id == run.id
    record = ctx.on_metrics

    def die_after_step_5(step, total, metrics):
        record(step, total, metrics)
        if step == 5 and metrics:  # checkpoints at steps 2 and 4; step 5's metrics are in
            raise Killed()

    ctx.on_metrics = die_after_step_5
    with pytest.raises(Killed):
        first._dispatch(ctx)
    with write_session(first.engine) as s:  # its heartbeat stops
        s.get_one(TrainingRun, run.id).heartbeat_at = utcnow() - timedelta(minutes=10)
    first.engine.dispose()

    second = Worker(fast_settings(settings), worker_id="second", device="cpu")
    assert second.run(once=True) == 1  # reaps the run (queued again), claims and finishes it
    second.engine.dispose()

    session.expire_all()
    done = session.get_one(TrainingRun, run.id)
    assert done.status == RunStatus.succeeded, done.error
    assert done.summary["resumed_from_step"] == 4
    assert [(a["from_step"], a["outcome"]) for a in done.attempt_log] == [(0, "worker vanished"), (4, "succeeded")]
    rows = session.execute(select(RunMetric.step, RunMetric.name).where(RunMetric.run_id == run.id)).all()
    twice = [key for key, n in Counter(rows).items() if n > 1]
    assert not twice, f"recorded twice: {sorted(twice)}"
    assert sorted(step for step, name in rows if name == "train_loss") == [1, 2, 3, 4, 5, 6]
