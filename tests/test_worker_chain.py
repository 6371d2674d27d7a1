"""The whole loop through the worker and the database on a tiny model: sft -> generate -> (rankings)
-> reward -> ppo -> evaluate, each run created through app.services.runs as the API does, with the
registry keeping every model's lineage and every run's data snapshot."""

from pathlib import Path

import pytest
from sqlalchemy import select

from app.models import Completion, ModelKind, ModelVersion, Ranking, RunMetric, RunStatus, Split
from app.services import evaluation, registry, runs
from tests.worker_helpers import (
    COUNTING,
    add_demonstrations,
    base_version,
    fast_settings,
    make_labeler,
    make_project,
    make_prompts,
    one_torch_thread,
    ranking_tasks,
    run_status,
)
from trainer.tiny import make_tiny_model
from worker.worker import Worker

_one_thread = pytest.fixture(autouse=True)(one_torch_thread)

SFT = {
    "learning_rate": 3e-3,
    "epochs": 4,
    "batch_size": 4,
    "micro_batch_size": 4,
    "max_length": 64,
    "max_prompt_length": 32,
    "eval_batch_size": 4,
    "warmup_ratio": 0.0,
}
REWARD = {
    "learning_rate": 1e-3,
    "batch_size": 2,
    "micro_batch_size": 2,
    "epochs": 1,
    "max_length": 64,
    "eval_batch_size": 4,
}
PPO = {
    "total_episodes": 4,
    "rollout_batch_size": 2,
    "minibatch_size": 1,
    "forward_batch_size": 2,
    "max_new_tokens": 6,
    "ppo_epochs": 1,
}


def _run(worker: Worker, session, project, user, kind: str, config: dict, inputs: list[int]):
    run = runs.create_run(
        session, project_id=project.id, kind=kind, config=config, input_model_ids=inputs, created_by=user
    )
    session.commit()
    assert worker.run_next()
    done = run_status(worker.engine, run.id)
    assert done.status == RunStatus.succeeded, done.error
    return done


def _produced(session, run, artifacts_dir: Path) -> ModelVersion:
    """The one model version the run registered, saved with save_pretrained in its artifact folder."""
    session.expire_all()
    (version,) = session.scalars(select(ModelVersion).where(ModelVersion.run_id == run.id))
    assert run.summary["model_version_id"] == version.id
    # Under this database's id: another database sharing the data folder has a run of this id too.
    assert Path(version.artifact_path) == artifacts_dir / registry.database_id(session) / f"run-{run.id}"
    assert (Path(version.artifact_path) / "config.json").is_file()
    return version


def test_sft_generate_reward_ppo_evaluate_through_the_worker(settings, session, tmp_path):
    texts = [p + " " + a for p, a in COUNTING]
    base = base_version(session, make_tiny_model(tmp_path / "base", texts=texts))
    project = make_project(session, k=2)
    labeler = make_labeler(session)
    add_demonstrations(session, project, COUNTING[:10], labeler)
    add_demonstrations(session, project, COUNTING[10:], labeler, Split.valid)
    make_prompts(session, project, ["Count on from 20.", "Count on from 30.", "Count on from 40."], Split.test)
    session.commit()
    settings = fast_settings(settings)
    worker = Worker(settings, device="cpu")
    try:
        # 1. SFT from the base model: held-out loss goes down on the counting task.
        sft_run = _run(worker, session, project, labeler, "sft", SFT, [base])
        assert sft_run.summary["valid_loss"] < sft_run.summary["initial_valid_loss"]
        assert len(sft_run.dataset_snapshot["rows"]["demonstrations"]) == 12
        assert session.scalar(
            select(RunMetric.id).where(RunMetric.run_id == sft_run.id, RunMetric.name == "train_loss")
        )
        sft = _produced(session, sft_run, settings.artifacts_dir)
        assert (sft.kind, sft.parent_ids, sft.run_id) == (ModelKind.sft, [base], sft_run.id)
        assert sft.metrics["valid_loss"] == sft_run.summary["valid_loss"]

        # 2. Generate from the SFT model: K=2 outputs per train prompt, as ranking tasks.
        gen_run = _run(worker, session, project, labeler, "generate", {"max_new_tokens": 6, "limit": 6}, [sft.id])
        made = ranking_tasks(session, gen_run.id)
        assert len(made) == 6 and all(len(t.outputs) == 2 for t in made)

        # 3. A labeler with a known taste ranks them: the shorter answer first.
        for task in made:
            a, b = (session.get(Completion, o.completion_id) for o in task.outputs)
            assert a.model_version_id == sft.id
            order = (
                [[a.id, b.id]]
                if len(a.text) == len(b.text)
                else [[x.id] for x in sorted((a, b), key=lambda c: len(c.text))]
            )
            session.add(Ranking(task_id=task.id, user_id=labeler.id, order=order, display_order=[a.id, b.id]))
        session.commit()
        if not any(len(r.order) == 2 for r in session.scalars(select(Ranking))):
            pytest.skip("every sampled pair had equal lengths: no preference to learn")

        # 4. Reward model from the SFT model.
        rm_run = _run(worker, session, project, labeler, "reward", REWARD, [sft.id])
        rm = _produced(session, rm_run, settings.artifacts_dir)
        assert (rm.kind, rm.parent_ids) == (ModelKind.reward, [sft.id])
        assert rm_run.dataset_snapshot["rows"]["rankings"]

        # 5. PPO: policy from SFT, value from the reward model.
        ppo_run = _run(worker, session, project, labeler, "ppo", PPO, [sft.id, rm.id])
        policy = _produced(session, ppo_run, settings.artifacts_dir)
        assert (policy.kind, policy.parent_ids) == (ModelKind.ppo, [sft.id, rm.id])
        assert [v.id for v in registry.lineage(session, policy.id)] == [policy.id, sft.id, rm.id, base]

        # 6. Evaluate PPO against SFT on the test prompts, with the reward model's verdict.
        eval_run = _run(
            worker, session, project, labeler, "evaluate", {"max_new_tokens": 6}, [policy.id, sft.id, rm.id]
        )
        report = evaluation.evaluation_report(session, eval_run.id)
        # Two identical answers are not posed to labelers; the reward model scores every prompt.
        posed = report["labelers"]["tasks"]
        assert posed == eval_run.summary["comparison_tasks"] and posed + eval_run.summary["identical_answers"] == 3
        assert report["reward_model"]["n"] == 3
        assert eval_run.summary["candidate_model_id"] == policy.id
    finally:
        worker.engine.dispose()
