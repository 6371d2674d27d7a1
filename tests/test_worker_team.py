"""`instructloop worker --processes 2`: a team of two processes (accelerate launch, gloo on the CPU)
trains each SFT and PPO run together (data parallel, or sharded with a run's sharding="fsdp"); only process 0 talks to the database (one metric row per
step, one attempt), the model equals a one-process worker's within float summation-order noise, and
a cancel from the dashboard reaches both processes in the middle of a run."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from sqlalchemy import func, select

from app.config import REPO_ROOT
from app.db import make_engine
from app.models import ModelKind, ModelVersion, RunMetric, RunStatus
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

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

TOLERANCE = 1e-4
SFT = {
    "learning_rate": 2e-3,
    "epochs": 3,
    "batch_size": 4,
    "micro_batch_size": 2,
    "max_length": 64,
    "max_prompt_length": 32,
    "warmup_ratio": 0.0,
    "keep_best": False,
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", texts=[p + " " + a for p, a in COUNTING])


def _team(settings, *args: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "DATABASE_URL": settings.db_url,
        "INSTRUCTLOOP_DATA_DIR": str(settings.data_dir),
        "SECRET_KEY": "test",
        "INSTRUCTLOOP_WORKER_HEARTBEAT": "0.2",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    command = [sys.executable, "-m", "instructloop", "worker", "--poll-interval", "0.1", "--processes", "2", *args]
    return subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _weights(folder: str) -> dict:
    return {k: v for path in sorted(Path(folder).glob("*.safetensors")) for k, v in load_file(path).items()}


def _when(engine, run_id: int, ok=lambda run: False):
    """The run once ok(run) holds or it has ended."""
    run = run_status(engine, run_id)
    return run if ok(run) or run.status in FINAL else None


def _ended(engine, run_id: int):
    return _when(engine, run_id)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_a_team_of_two_trains_a_run_like_one_process_and_only_process_0_writes(settings, session, tiny, sharding):
    if sharding == "fsdp" and settings.db_url.startswith("postgresql"):
        pytest.skip("FSDP trains alike whatever the database; the DDP run covers the team's database work on Postgres")
    project = make_project(session)
    add_demonstrations(session, project, COUNTING, make_labeler(session))
    inputs = [base_version(session, tiny)]
    config = {**SFT, "sharding": sharding}  # (one process ignores it)
    team_run = runs.create_run(session, project_id=project.id, kind="sft", config=config, input_model_ids=inputs)
    session.commit()

    proc = _team(settings, "--once")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-4000:]
    engine = make_engine(settings.db_url)
    done = run_status(engine, team_run.id)
    assert done.status == RunStatus.succeeded, (done.error, output[-4000:])
    assert done.summary["world_size"] == 2.0 and done.attempts == 1
    steps = int(done.summary["steps"])
    with engine.connect() as connection:  # one row per step and metric: written by process 0 alone
        train_rows = connection.scalar(
            select(func.count()).where(RunMetric.run_id == team_run.id, RunMetric.name == "train_loss")
        )
    assert train_rows == steps == 9

    # The same run on a one-process worker ends with the same model.
    single_run = runs.create_run(session, project_id=project.id, kind="sft", config=config, input_model_ids=inputs)
    session.commit()
    with WorkerThread(fast_settings(settings)) as worker:
        single = wait_for(lambda: _ended(engine, single_run.id), timeout=300)
        database_folder = worker.run_folder(0).parent
    assert single.status == RunStatus.succeeded and single.summary["world_size"] == 1.0
    assert abs(single.summary["valid_loss"] - done.summary["valid_loss"]) < TOLERANCE
    session.expire_all()
    versions = {v.run_id: v for v in registry.list_versions(session, project_id=project.id) if v.run_id}
    mine, theirs = _weights(versions[team_run.id].artifact_path), _weights(versions[single_run.id].artifact_path)
    assert mine.keys() == theirs.keys()
    assert max(float((mine[k] - theirs[k]).abs().max()) for k in mine) < TOLERANCE
    assert sorted(p.name for p in database_folder.iterdir()) == sorted(
        [f"run-{team_run.id}", f"run-{single_run.id}"]
    ), "no checkpoint or half-written folder is left"
    engine.dispose()


def test_a_cancel_reaches_both_processes_in_the_middle_of_a_ppo_run(settings, session, tiny, tmp_path):
    project = make_project(session)
    make_prompts(session, project, [p for p, _ in COUNTING])
    reward_folder = tmp_path / "reward"
    modeling.ScalarHeadModel.from_causal_lm(str(tiny), device="cpu").save_pretrained(
        reward_folder, modeling.load_tokenizer(str(tiny))
    )
    reward = ModelVersion(
        name="rm", kind=ModelKind.reward, source=str(reward_folder), artifact_path=str(reward_folder), parent_ids=[]
    )
    session.add(reward)
    session.flush()
    config = {"total_episodes": 4000, "rollout_batch_size": 4, "minibatch_size": 2, "max_new_tokens": 6}
    run = runs.create_run(
        session,
        project_id=project.id,
        kind="ppo",
        config=config,
        input_model_ids=[base_version(session, tiny), reward.id],
    )
    session.commit()

    proc = _team(settings, "--once")
    engine = make_engine(settings.db_url)
    try:
        running = wait_for(lambda: _when(engine, run.id, lambda r: r.progress_step >= 3), timeout=180)
        assert running.status == RunStatus.running, running.error
        assert running.summary is None or "world_size" not in running.summary
        runs.cancel_run(session, run.id)
        session.commit()
        ended = wait_for(lambda: _ended(engine, run.id), timeout=60)
        assert ended.status == RunStatus.cancelled, ended.error
        output = proc.communicate(timeout=60)[0]  # both processes leave: the launcher exits
        assert proc.returncode == 0, output[-4000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
