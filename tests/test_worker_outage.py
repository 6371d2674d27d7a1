"""A database outage in the middle of a run: the metrics wait in memory and are all written once
the database is back, and the log gets a few lines instead of a traceback per step."""

import logging
from contextlib import contextmanager

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.models import RunMetric
from tests.worker_helpers import make_project, queue_raw
from worker.worker import Worker


def test_metrics_survive_an_outage_and_the_log_stays_short(settings, session, caplog):
    project = make_project(session)
    run = queue_raw(session, project, "sft")
    session.commit()
    worker = Worker(settings, poll_interval=0.01)
    ctx = worker.claim()
    assert ctx is not None and ctx.run_id == run.id
    real, down = worker.transaction, {"now": False}

    @contextmanager
    def flaky():
        if down["now"]:
            raise OperationalError("SELECT 1", {}, Exception("connection refused: 127.0.0.1:5432"))
        with real() as s:
            yield s

    worker.transaction = flaky
    caplog.set_level(logging.INFO, logger="instructloop.worker")
    ctx.on_metrics(1, 1000, {"loss": 1.0})
    down["now"] = True
    for step in range(2, 2002):  # 2,000 steps while the database is away
        ctx.on_metrics(step, 1000, {"loss": 1.0 / step})
    down["now"] = False
    ctx.on_metrics(2002, 1000, {"loss": 0.1})
    session.expire_all()
    steps = sorted(session.scalars(select(RunMetric.step).where(RunMetric.run_id == run.id, RunMetric.name == "loss")))
    assert steps == list(range(1, 2003))
    lines = [r for r in caplog.records if "metrics" in r.getMessage()]
    assert 2 <= len(lines) <= 3, [r.getMessage() for r in lines]  # went away, (maybe once more), came back
    assert not any(r.exc_info for r in caplog.records)
    worker.engine.dispose()
