"""Runs and the registry as services (no torch): validation, the state machine, claiming exactly
once under concurrency, heartbeats and reaping, metrics, snapshots and win rates."""

import threading
from datetime import timedelta

import pytest
from sqlalchemy import delete, select

from app.db import utcnow, write_session
from app.models import (
    Comparison,
    ComparisonChoice,
    Completion,
    ModelKind,
    ModelVersion,
    ReviewStatus,
    RunMetric,
    RunStatus,
    Split,
    TaskCompletion,
    TrainingRun,
)
from app.services import Conflict, NotFound, ServiceError, evaluation, registry, runs, tasks
from runconfig import DataFilter
from tests.worker_helpers import (
    COUNTING,
    add_demonstrations,
    add_ranking,
    make_labeler,
    make_project,
    make_prompts,
    queue_raw,
)
from worker import snapshots as data


@pytest.fixture
def project(session):
    project = make_project(session)
    session.commit()
    return project


def _version(session, kind: ModelKind, source: str = "org/model", project_id=None) -> ModelVersion:
    version = ModelVersion(name=source, kind=kind, source=source, parent_ids=[], metrics={}, project_id=project_id)
    session.add(version)
    session.flush()
    return version


# ---- create_run refuses what a worker would fail on --------------------------------------------


def test_create_run_defaults_to_a_registered_base_model(session, project):
    make_prompts(session, project, ["Say hi"])
    run = runs.create_run(
        session, project_id=project.id, kind="generate", config={"k": 3}, default_model="smollm2-135m-instruct"
    )
    assert run.status == RunStatus.queued and run.config["k"] == 3 and run.config["temperature"] == 1.0
    (base,) = [session.get(ModelVersion, i) for i in run.input_model_ids]
    assert base.kind == ModelKind.base and base.source == "smollm2-135m-instruct"
    again = runs.create_run(session, project_id=project.id, kind="generate", default_model="smollm2-135m-instruct")
    assert again.input_model_ids == run.input_model_ids  # one base version per source


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"kind": "distill"}, 400, "Unknown run kind 'distill'"),
        ({"kind": "generate", "config": {"k": 1, "top_p": 0, "nope": 1}}, 422, "Unknown setting 'nope'"),
        ({"kind": "generate", "config": {"k": 1}}, 422, "k must be 0"),
        ({"kind": "generate", "config": {"temperature": "hot"}}, 422, "temperature must be a finite number"),
        ({"kind": "evaluate", "config": {"split": "train"}}, 422, "held-out split"),
        ({"kind": "sft"}, 400, "no accepted demonstrations"),
        ({"kind": "reward"}, 400, "no rankings"),
        ({"kind": "evaluate", "input_model_ids": [1, 2]}, 404, "Model version 1"),
        ({"kind": "ppo", "input_model_ids": []}, 400, "takes 2..2 input model versions"),
        ({"kind": "generate", "input_model_ids": ["x"]}, 400, "must be a list of model version ids"),
        ({"kind": "generate", "data_filter": {"labelers": [1]}}, 400, "Unknown data_filter keys: labelers"),
        ({"kind": "generate", "data_filter": {"exclude_labelers": [999]}}, 400, "unknown users: [999]"),
        ({"kind": "generate", "data_filter": {"splits": ["dev"]}}, 400, "data_filter.splits"),
    ],
)
def test_create_run_refuses_bad_input_with_a_clear_message(session, project, kwargs, status, words):
    make_prompts(session, project, ["Say hi"])
    with pytest.raises(ServiceError) as err:
        runs.create_run(session, project_id=project.id, default_model="some/model", **kwargs)
    assert err.value.status_code == status
    assert words in err.value.message
    assert session.scalar(select(TrainingRun.id)) is None


def test_create_run_checks_input_model_kinds_and_project(session, project):
    make_prompts(session, project, ["Say hi"], Split.test)
    make_prompts(session, project, ["Train prompt"])
    policy, other = _version(session, ModelKind.sft, "a"), _version(session, ModelKind.base, "b")
    reward = _version(session, ModelKind.reward, "r")
    other_project = make_project(session, "Elsewhere")
    foreign = _version(session, ModelKind.sft, "f", project_id=other_project.id)
    create = lambda kind, ids: runs.create_run(session, project_id=project.id, kind=kind, input_model_ids=ids)  # noqa: E731
    with pytest.raises(ServiceError, match="is a reward model, but the candidate"):
        create("evaluate", [reward.id, other.id])
    with pytest.raises(ServiceError, match="the reward model of a ppo run must be reward"):
        create("ppo", [policy.id, other.id])
    with pytest.raises(ServiceError, match="candidate and the baseline are the same"):
        create("evaluate", [policy.id, policy.id])
    with pytest.raises(ServiceError, match=f"belongs to project {other_project.id}"):
        create("generate", [foreign.id])
    with pytest.raises(ServiceError, match="no test prompts|no valid prompts"):
        runs.create_run(
            session,
            project_id=project.id,
            kind="evaluate",
            config={"split": "valid"},
            input_model_ids=[policy.id, other.id],
        )
    assert create("evaluate", [policy.id, other.id, reward.id]).input_model_ids == [policy.id, other.id, reward.id]
    assert create("ppo", [policy.id, reward.id]).status == RunStatus.queued
    with pytest.raises(NotFound):
        runs.create_run(session, project_id=12345, kind="generate", default_model="m")


# ---- the state machine --------------------------------------------------------------------------


def test_cancel_queued_running_and_finished(session, project):
    queued, running, done = (queue_raw(session, project, "generate") for _ in range(3))
    running.status, done.status = RunStatus.running, RunStatus.succeeded
    session.flush()
    assert runs.cancel_run(session, queued.id).status == RunStatus.cancelled
    assert queued.finished_at is not None and "before a worker started it" in queued.error
    r = runs.cancel_run(session, running.id)
    assert r.status == RunStatus.running and r.cancel_requested
    assert runs.cancel_run(session, running.id).cancel_requested  # asking twice is fine
    for final in (done, queued):
        with pytest.raises(Conflict) as err:
            runs.cancel_run(session, final.id)
        assert err.value.status_code == 409 and "only queued or running runs can be cancelled" in err.value.message
    with pytest.raises(NotFound):
        runs.cancel_run(session, 999)


def test_a_cancel_reads_the_run_afresh_so_a_workers_claim_is_not_overwritten(engine, session, project):
    run = queue_raw(session, project, "generate")
    session.commit()
    assert runs.get_run(session, run.id).status == RunStatus.queued  # the admin's page showed it queued
    with write_session(engine) as worker:
        assert runs.claim_next_run(worker, "w1").id == run.id  # a worker claims it meanwhile
    cancelled = runs.cancel_run(session, run.id)
    session.commit()
    assert cancelled.status == RunStatus.running and cancelled.cancel_requested


def test_claim_takes_oldest_and_sets_worker_fields(engine, session, project):
    first, second = queue_raw(session, project, "generate"), queue_raw(session, project, "generate")
    session.commit()
    with write_session(engine) as s:
        claimed = runs.claim_next_run(s, "w1")
        assert claimed.id == first.id and claimed.status == RunStatus.running
        assert claimed.worker_id == "w1" and claimed.started_at and claimed.heartbeat_at
    with write_session(engine) as s:
        assert runs.claim_next_run(s, "w2").id == second.id
    with write_session(engine) as s:
        assert runs.claim_next_run(s, "w3") is None


def test_concurrent_workers_claim_each_run_exactly_once(settings, session, project):
    """Four workers (each with its own engine and connections) race for 40 runs."""
    from worker.worker import Worker

    ids = [queue_raw(session, project, "generate").id for _ in range(40)]
    session.commit()
    claims: dict[str, list[int]] = {}
    start = threading.Barrier(4)

    def serve(name: str) -> None:
        worker = Worker(settings, worker_id=name, device="cpu")
        mine = claims.setdefault(name, [])
        start.wait()
        try:
            while (ctx := worker.claim()) is not None:
                mine.append(ctx.run_id)
        finally:
            worker.engine.dispose()

    threads = [threading.Thread(target=serve, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    everything = [run_id for mine in claims.values() for run_id in mine]
    assert sorted(everything) == ids, "a run was claimed twice or not at all"
    session.expire_all()
    owners = dict(session.execute(select(TrainingRun.id, TrainingRun.worker_id)).all())
    for name, mine in claims.items():
        assert all(owners[run_id] == name for run_id in mine)


def test_heartbeat_reap_and_finish_guard(session, project):
    run = queue_raw(session, project, "generate")
    run.status, run.worker_id = RunStatus.running, "w1"
    run.heartbeat_at = utcnow() - timedelta(seconds=300)
    fresh = queue_raw(session, project, "generate")
    fresh.status, fresh.worker_id, fresh.heartbeat_at = RunStatus.running, "w2", utcnow()
    session.flush()
    assert runs.heartbeat(session, run.id, "someone-else") == "lost"
    run.attempts = run.max_attempts = 1
    assert runs.reap_stale_runs(session, stale_s=120) == {run.id: RunStatus.failed}
    assert run.status == RunStatus.failed
    assert run.error.startswith("Attempt 1 of 1: worker vanished (no heartbeat from worker 'w1'")
    assert fresh.status == RunStatus.running
    # The vanished worker comes back: its run is no longer its own.
    assert runs.heartbeat(session, run.id, "w1") == "lost"
    assert not runs.finish_run(session, run.id, "w1", RunStatus.succeeded, summary={"x": 1})
    assert run.status == RunStatus.failed and run.summary == {}
    fresh.cancel_requested = True
    assert runs.heartbeat(session, fresh.id, "w2") == "cancel"
    assert runs.finish_run(session, fresh.id, "w2", RunStatus.cancelled, error="stopped")
    assert fresh.status == RunStatus.cancelled and fresh.finished_at


def test_metrics_are_bulk_written_and_latest_per_name(session, project):
    run = queue_raw(session, project, "sft")
    assert runs.record_metrics(session, run.id, 1, {"loss": 2.0, "lr": 1e-4}) == 2
    assert runs.record_metrics(session, run.id, 2, {"loss": 1.5, "bad": float("nan")}) == 1
    session.flush()
    assert [m.value for m in runs.metrics(session, run.id, name="loss")] == [2.0, 1.5]
    assert [m.step for m in runs.metrics(session, run.id, since_step=1)] == [2]
    assert runs.latest_metrics(session, run.id) == {"loss": {"step": 2, "value": 1.5}, "lr": {"step": 1, "value": 1e-4}}
    assert session.scalar(select(RunMetric.id).where(RunMetric.name == "bad")) is None


# ---- registry -------------------------------------------------------------------------------------


def test_registry_lineage_and_bad_sources(session, project):
    base = registry.register_base(session, "org/base-model")
    assert base.name == "base-model" and registry.register_base(session, "org/base-model").id == base.id
    run = queue_raw(session, project, "sft")
    sft = registry.register_trained(
        session,
        kind=ModelKind.sft,
        run=run,
        artifact_path="/data/run-1",
        parent_ids=[base.id],
        metrics={"valid_loss": 1.25, "nan": float("nan")},
    )
    rm = registry.register_trained(
        session, kind=ModelKind.reward, run=run, artifact_path="/data/run-2", parent_ids=[sft.id], metrics={}
    )
    ppo = registry.register_trained(
        session, kind=ModelKind.ppo, run=run, artifact_path="/data/run-3", parent_ids=[sft.id, rm.id], metrics={}
    )
    assert sft.metrics == {"valid_loss": 1.25, "nan": None} and sft.project_id == project.id
    assert [v.id for v in registry.lineage(session, ppo.id)] == [ppo.id, sft.id, rm.id, base.id]
    assert registry.weights_location(sft) == "/data/run-1" and registry.weights_location(base) == "org/base-model"
    with pytest.raises(ServiceError, match="needs a source"):
        registry.register_base(session, "  ")
    with pytest.raises(NotFound):
        registry.register_trained(
            session, kind=ModelKind.sft, run=run, artifact_path="/x", parent_ids=[999], metrics={}
        )
    with pytest.raises(NotFound):
        registry.lineage(session, 999)


# ---- snapshots ------------------------------------------------------------------------------------


def test_demonstration_snapshot_records_rows_and_a_content_hash(session, project):
    alice, bob = make_labeler(session, "alice@example.com"), make_labeler(session, "bob@example.com")
    mine = add_demonstrations(session, project, COUNTING[:3], alice)
    theirs = add_demonstrations(session, project, [("Other prompt", "Other answer")], bob)
    held = add_demonstrations(session, project, COUNTING[3:5], alice, Split.valid)
    mine[0].review = ReviewStatus.rejected  # rejected by an admin: never trained on
    session.flush()
    train, valid, snap = data.snapshot_demonstrations(session, project.id, DataFilter(exclude_labelers=[bob.id]))
    assert [e.completion for e in train] == [a for _, a in COUNTING[1:3]]
    assert [e.prompt for e in valid] == [p for p, _ in COUNTING[3:5]]
    record = snap.record()
    assert record["rows"]["demonstrations"] == sorted(d.id for d in mine[1:] + held)
    assert record["counts"]["demonstrations_rejected"] == 1 and "Left out 1 demonstration(s)" in record["notes"][0]
    assert theirs[0].id not in record["rows"]["demonstrations"] and len(record["sha256"]) == 64
    # Same rows, same hash; an edited answer gives another hash.
    assert (
        data.snapshot_demonstrations(session, project.id, DataFilter(exclude_labelers=[bob.id]))[2].sha256
        == snap.sha256
    )
    mine[1].text = "edited"
    session.flush()
    assert (
        data.snapshot_demonstrations(session, project.id, DataFilter(exclude_labelers=[bob.id]))[2].sha256
        != snap.sha256
    )
    with pytest.raises(data.DataError, match="No accepted demonstrations"):
        data.snapshot_demonstrations(session, project.id, DataFilter(exclude_labelers=[alice.id, bob.id]))


def test_ranking_snapshot_orders_ties_and_deleted_completions(session, project):
    alice = make_labeler(session)
    prompts = make_prompts(session, project, [f"Question {i}" for i in range(3)])
    r1 = add_ranking(session, project, prompts[0], ["best", "mid", "also mid", "worst"], [[0], [1, 2], [3]], alice)
    add_ranking(session, project, prompts[1], ["x", "y"], [[0, 1]], alice)  # all tied: no preference
    r3 = add_ranking(session, project, prompts[2], ["p", "q"], [[1], [0]], alice)
    train, valid, snap = data.snapshot_rankings(session, project.id)
    assert valid == []  # 3 prompts: too few to hold any out
    assert [(e.completions, e.order) for e in train] == [
        (["best", "mid", "also mid", "worst"], [[0], [1, 2], [3]]),
        (["q", "p"], [[0], [1]]),
    ]
    assert snap.record()["rows"]["rankings"] == [r1.id, r3.id]
    assert any("every output tied" in n for n in snap.notes)
    # A completion removed behind the ranking's back (e.g. by a manual cleanup) fails the snapshot clearly.
    gone = r3.order[0][0]
    session.execute(delete(TaskCompletion).where(TaskCompletion.completion_id == gone))
    session.execute(delete(Completion).where(Completion.id == gone))
    with pytest.raises(data.DataError, match=rf"Ranking {r3.id} \(task \d+\) refers to completion\(s\) \[{gone}\]"):
        data.snapshot_rankings(session, project.id)


def test_prompt_snapshot_limits_and_skips_prompts_with_tasks(session, project):
    prompts = make_prompts(session, project, [f"P{i}" for i in range(5)])
    outputs = [Completion(prompt_id=prompts[0].id, text=t) for t in ("a", "b")]
    session.add_all(outputs)
    session.flush()
    tasks.create_ranking_task(session, project, prompts[0], [o.id for o in outputs])
    from app.models import TaskKind

    items, snap = data.snapshot_prompts(session, project.id, ["train"], limit=2, without_task_kind=TaskKind.ranking)
    assert [i.id for i in items] == [prompts[1].id, prompts[2].id] and snap.rows == {"prompts": [i.id for i in items]}
    with pytest.raises(data.DataError, match="no test prompts"):
        data.snapshot_prompts(session, project.id, ["test"])


# ---- win rates ------------------------------------------------------------------------------------


def test_the_interval_counts_prompts_not_judgements():
    # 3 labelers judging the same 20 prompts (they agree on each prompt) against 60 prompts judged
    # once, with the same 60% win rate: the first is 20 prompts' worth of evidence, not 60.
    outcomes = [0.0] * 8 + [1.0] * 12
    clustered = evaluation.win_rate([(p, score) for p, score in enumerate(outcomes) for _ in range(3)])
    spread = evaluation.win_rate([(p, score) for p, score in enumerate(outcomes * 3)])
    assert clustered["win_rate"] == spread["win_rate"] == pytest.approx(0.6)
    assert clustered["n"] == spread["n"] == 60 and (clustered["prompts"], spread["prompts"]) == (20, 60)
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(clustered) > 1.5 * width(spread)
    assert clustered["ci95"][0] < 0.6 < clustered["ci95"][1] and spread["ci95"][0] < 0.6 < spread["ci95"][1]
    # With 60 independent prompts the bootstrap agrees with the textbook interval (±1.96 standard errors).
    assert width(spread) == pytest.approx(2 * 1.96 * (0.6 * 0.4 / 60) ** 0.5, rel=0.15)
    assert evaluation.win_rate([]) == {
        "n": 0,
        "wins": 0,
        "losses": 0,
        "ties": 0,
        "identical": 0,
        "prompts": 0,
        "win_rate": None,
        "ci95": None,
    }
    assert evaluation.win_rate([(1, 1.0), (1, 0.0)])["ci95"] == [0.0, 1.0], "one prompt: nothing to resample"


def test_labeler_win_rate_reads_choices_whatever_the_shown_order(session, project):
    candidate, baseline = _version(session, ModelKind.sft, "c"), _version(session, ModelKind.base, "b")
    run = queue_raw(session, project, "evaluate", input_model_ids=[candidate.id, baseline.id])
    labelers = [make_labeler(session, f"l{i}@example.com") for i in range(4)]
    prompts = make_prompts(session, project, [f"Q{i}" for i in range(4)], Split.test)
    # (shown as A, choice): the candidate wins twice (once shown as B), loses once, ties once.
    plan = [("candidate", "a"), ("baseline", "b"), ("candidate", "b"), ("baseline", "tie")]
    for prompt, labeler, (first, choice) in zip(prompts, labelers, plan):
        mine = Completion(prompt_id=prompt.id, text="c", model_version_id=candidate.id)
        theirs = Completion(prompt_id=prompt.id, text="b", model_version_id=baseline.id)
        session.add_all([mine, theirs])
        session.flush()
        a, b = (mine, theirs) if first == "candidate" else (theirs, mine)
        task = tasks.create_comparison_task(session, project, prompt, a.id, b.id, source_run_id=run.id)
        session.add(
            Comparison(
                task_id=task.id,
                user_id=labeler.id,
                a_completion_id=a.id,
                b_completion_id=b.id,
                choice=ComparisonChoice(choice),
            )
        )
    session.flush()
    result = evaluation.labeler_win_rate(session, run.id)
    assert (result["wins"], result["losses"], result["ties"], result["n"]) == (2, 1, 1, 4)
    assert result["win_rate"] == pytest.approx(2.5 / 4) and result["identical"] == 0 and result["prompts"] == 4
    assert result["ci95"][0] < result["win_rate"] < result["ci95"][1]
    assert result["tasks"] == 4
    # Two identical answers are a tie whatever the labeler picked.
    prompt = make_prompts(session, project, ["Q same"], Split.test)[0]
    mine = Completion(prompt_id=prompt.id, text="same answer", model_version_id=candidate.id)
    theirs = Completion(prompt_id=prompt.id, text=" same answer\n", model_version_id=baseline.id)
    session.add_all([mine, theirs])
    session.flush()
    task = tasks.create_comparison_task(session, project, prompt, mine.id, theirs.id, source_run_id=run.id)
    session.add(
        Comparison(
            task_id=task.id,
            user_id=labelers[0].id,
            a_completion_id=mine.id,
            b_completion_id=theirs.id,
            choice=ComparisonChoice.a,
        )
    )
    session.flush()
    result = evaluation.labeler_win_rate(session, run.id)
    assert (result["wins"], result["ties"], result["identical"], result["n"]) == (2, 2, 1, 5)
    # Identical answers the run never posed (nothing to choose) are ties too, each its own prompt.
    unposed = make_prompts(session, project, ["Q one", "Q two"], Split.test)
    run.summary = {**run.summary, "identical_answers": 2, "identical_prompt_ids": [p.id for p in unposed]}
    session.flush()
    result = evaluation.labeler_win_rate(session, run.id)
    assert (result["wins"], result["ties"], result["identical"], result["n"]) == (2, 4, 3, 7)
    assert result["prompts"] == 7 and result["win_rate"] == pytest.approx((2 + 4 * 0.5) / 7)
    with pytest.raises(ServiceError, match="win rates come from evaluate runs"):
        evaluation.labeler_win_rate(session, queue_raw(session, project, "sft").id)


def test_a_vanished_or_stopped_workers_run_is_queued_again_until_its_attempts_are_used(session, project):
    run = queue_raw(session, project, "sft")
    run.max_attempts = 2
    session.flush()
    log = []
    for attempt, end in ((1, "vanished"), (2, "stopped")):
        assert runs.claim_next_run(session, f"w{attempt}").id == run.id
        assert run.attempts == attempt and run.attempt_log[-1]["worker"] == f"w{attempt}"
        if end == "vanished":
            run.heartbeat_at = utcnow() - timedelta(seconds=300)
            assert runs.reap_stale_runs(session, stale_s=120) == {run.id: RunStatus.queued}
            assert run.worker_id is None and "Queued again" in run.error
        else:
            assert runs.release_run(session, run.id, "w2", "SIGTERM at step 3 of 9") == RunStatus.cancelled
            assert run.error.startswith("Attempt 2 of 2: worker stopped (SIGTERM at step 3 of 9). No attempts left")
        log.append(run.attempt_log[-1]["outcome"])
    assert log == ["worker vanished", "worker stopped"] and run.finished_at is not None
    # An evaluate run is not posed twice: its first vanished attempt fails it.
    evaluate = queue_raw(session, project, "evaluate")
    session.flush()
    runs.claim_next_run(session, "w3")
    evaluate.heartbeat_at = utcnow() - timedelta(seconds=300)
    assert runs.reap_stale_runs(session, stale_s=120) == {evaluate.id: RunStatus.failed}


@pytest.mark.parametrize("end", ["vanished", "stopped"])
def test_a_cancel_wins_over_queueing_again_when_the_worker_dies_or_stops(engine, session, project, end):
    run = queue_raw(session, project, "sft")  # resumable, with attempts left: would be queued again
    session.commit()
    with write_session(engine) as s:
        runs.claim_next_run(s, "w1")
    with write_session(engine) as s:  # the admin's cancel: the worker has not seen it yet
        assert runs.cancel_run(s, run.id).cancel_requested
    with write_session(engine) as s:
        if end == "vanished":
            s.get_one(TrainingRun, run.id).heartbeat_at = utcnow() - timedelta(seconds=300)
            assert runs.reap_stale_runs(s, stale_s=120) == {run.id: RunStatus.cancelled}
        else:
            assert runs.release_run(s, run.id, "w1", "SIGTERM at step 3 of 9") == RunStatus.cancelled
    session.expire_all()
    ended = session.get_one(TrainingRun, run.id)
    assert ended.status == RunStatus.cancelled and ended.finished_at is not None
    assert ended.error.startswith("Cancelled: an admin asked to stop it"), ended.error
    assert [a["outcome"] for a in ended.attempt_log] == ["worker vanished" if end == "vanished" else "worker stopped"]
    with write_session(engine) as s:
        assert runs.claim_next_run(s, "w2") is None  # no worker picks it up again
