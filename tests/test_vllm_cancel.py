"""A cancel reaches a generate run that samples with vLLM through the worker: the run ends cancelled
within seconds, keeps only the tasks it completed, and the worker's next vLLM run samples normally
(the cancelled run's engine was shut down cleanly). Its own module: vLLM keeps its parallel state per
process, and this test's engines must not end test_vllm_rollouts' module engine."""

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs these tests where it is")

from sqlalchemy import select  # noqa: E402

from app.models import RunStatus, Task  # noqa: E402
from app.services import runs  # noqa: E402
from tests.test_vllm_rollouts import SIZES  # noqa: E402
from tests.worker_helpers import (  # noqa: E402
    COUNTING,
    WorkerThread,
    base_version,
    fast_settings,
    make_project,
    make_prompts,
    queue_raw,
    run_status,
    wait_for,
)
from trainer.tiny import make_tiny_model  # noqa: E402

pytestmark = pytest.mark.vllm
FINAL = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)


def _status(engine, run_id: int, steps: int = 0):
    """The run once it has done `steps` steps or ended."""
    run = run_status(engine, run_id)
    return run if (steps and run.progress_step >= steps) or run.status in FINAL else None


def test_a_cancel_stops_a_vllm_generate_run_and_the_next_run_samples(settings, session, tmp_path):
    tiny = make_tiny_model(tmp_path / "tiny", texts=[p + " " + a for p, a in COUNTING], **SIZES)
    project = make_project(session)
    model = base_version(session, tiny)
    make_prompts(session, project, [f"Tell me a long story number {i}." for i in range(200)])
    vllm = {"k": 2, "max_new_tokens": 64, "limit": 0, "rollout_backend": "vllm"}
    long_run = queue_raw(session, project, "generate", {**vllm, "batch_size": 8}, [model])
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        started = wait_for(lambda: _status(worker.engine, long_run.id, 2), timeout=300)
        assert started.status == RunStatus.running, started.error
        with worker.transaction() as s:
            runs.cancel_run(s, long_run.id)
        stopped = wait_for(lambda: _status(worker.engine, long_run.id), timeout=60)
        assert stopped.status == RunStatus.cancelled, stopped.error
        assert stopped.summary.get("rollout_backend") in (None, "vllm")
        with worker.transaction() as s:
            made = s.scalars(select(Task).where(Task.source_run_id == long_run.id)).all()
            assert 2 <= len(made) < 200  # the batches completed before the cancel stay; the rest never came
            short = queue_raw(s, project, "generate", {**vllm, "max_new_tokens": 4, "limit": 3}, [model]).id
        done = wait_for(lambda: _status(worker.engine, short), timeout=300)
    assert done.status == RunStatus.succeeded, done.error
    assert done.summary["rollout_backend"] == "vllm" and done.summary["completions"] == 6
