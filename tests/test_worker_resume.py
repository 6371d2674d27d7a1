"""A worker killed (SIGKILL) in the middle of an SFT or a PPO run: another worker takes the run up
again and finishes it from its newest checkpoint, with the same weights as a run that was never
interrupted (CPU, one thread: deterministic), and no unfinished folder is left behind."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from app.config import REPO_ROOT
from app.db import make_engine
from app.models import ModelKind, ModelVersion, RunStatus
from app.services import registry, runs
from app.services.runs import FINAL
from tests.worker_helpers import (
    COUNTING,
    WorkerThread,
    add_demonstrations,
    base_version,
    fast_settings,
    make_labeler,
    make_project,
    make_prompts,
    one_torch_thread,
    run_status,
    wait_for,
)
from trainer import modeling
from trainer.tiny import make_tiny_model

pytestmark = pytest.mark.slow  # several processes train end to end (minutes); CI runs it

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

SFT = {
    "learning_rate": 1e-3,
    "epochs": 150,
    "batch_size": 2,
    "micro_batch_size": 2,
    "max_length": 64,
    "max_prompt_length": 32,
    "warmup_ratio": 0.0,
    "save_every": 5,
}
PPO = {
    "total_episodes": 400,
    "rollout_batch_size": 2,
    "minibatch_size": 1,
    "forward_batch_size": 2,
    "max_new_tokens": 6,
    "ppo_epochs": 1,
    "save_every": 5,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def _inputs(session, project, tiny, kind: str, tmp_path: Path) -> list[int]:
    if kind == "sft":
        add_demonstrations(session, project, COUNTING, make_labeler(session))
        return [base_version(session, tiny)]
    make_prompts(session, project, [p for p, _ in COUNTING])
    reward_folder = tmp_path / "reward"
    modeling.ScalarHeadModel.from_causal_lm(str(tiny), device="cpu").save_pretrained(
        reward_folder, modeling.load_tokenizer(str(tiny))
    )
    reward = ModelVersion(
        name="rm",
        kind=ModelKind.reward,
        source=str(reward_folder),
        artifact_path=str(reward_folder),
        parent_ids=[],
        metrics={},
    )
    session.add(reward)
    session.flush()
    return [base_version(session, tiny), reward.id]


def _when(engine, run_id: int, ok=lambda run: False):
    """The run once ok(run) holds or it has ended."""
    run = run_status(engine, run_id)
    return run if ok(run) or run.status in FINAL else None


def _weights(folder: str) -> dict:
    return {k: v for path in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(path).items()}


@pytest.mark.parametrize("kind", ["sft", "ppo"])
def test_a_killed_workers_run_is_finished_by_another_worker_from_its_checkpoint(
    settings, session, tiny, kind, tmp_path
):
    project = make_project(session)
    inputs = _inputs(session, project, tiny, kind, tmp_path)
    config = SFT if kind == "sft" else PPO
    killed = runs.create_run(session, project_id=project.id, kind=kind, config=config, input_model_ids=inputs)
    twin = runs.create_run(session, project_id=project.id, kind=kind, config=config, input_model_ids=inputs)
    session.commit()

    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir),
        "SECRET_KEY": "test",
        "INSTRUCTLOOP_WORKER_HEARTBEAT": "0.2",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "instructloop", "worker", "--once", "--poll-interval", "0.1", "--device", "cpu"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine = make_engine(settings.db_url)
    try:
        # Killed once it has saved a checkpoint and gone on beyond it.
        running = wait_for(lambda: _when(engine, killed.id, lambda r: r.progress_step >= 12), timeout=120)
        assert running.status == RunStatus.running, proc.stdout.read() if proc.poll() is not None else running.error
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed_at = run_status(engine, killed.id).progress_step
    finally:
        if proc.poll() is None:
            proc.kill()
    with WorkerThread(fast_settings(settings, worker_stale_s=1.0)) as worker:
        done = wait_for(lambda: _when(engine, killed.id), timeout=300)
        assert done.status == RunStatus.succeeded, done.error
        uninterrupted = wait_for(lambda: _when(engine, twin.id), timeout=300)
        assert uninterrupted.status == RunStatus.succeeded, uninterrupted.error
        database_id = worker.run_folder(0).parent
    engine.dispose()

    # Two attempts: the first vanished (reaped), the second resumed and finished.
    assert done.attempts == 2 and [a["outcome"] for a in done.attempt_log] == ["worker vanished", "succeeded"]
    assert 5 <= done.summary["resumed_from_step"] <= killed_at, "the second attempt started over"
    session.expire_all()
    versions = {v.run_id: v for v in registry.list_versions(session, project_id=project.id) if v.run_id}
    mine, theirs = _weights(versions[killed.id].artifact_path), _weights(versions[twin.id].artifact_path)
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    # Only the two finished models are left: no checkpoints, no half-written folder.
    assert sorted(p.name for p in database_id.iterdir()) == sorted([f"run-{killed.id}", f"run-{twin.id}"])
