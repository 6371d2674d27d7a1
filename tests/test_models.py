"""Every table round-trips on both databases: text, JSON, enums and aware datetimes come back as stored."""

from datetime import timedelta

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.db import make_sessionmaker, utcnow
from app.models import (
    ApiToken,
    Base,
    Comparison,
    ComparisonChoice,
    Completion,
    Demonstration,
    Draft,
    GuidelineVersion,
    Invite,
    Lease,
    LoginFailure,
    ModelKind,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    Role,
    RunKind,
    RunMetric,
    RunStatus,
    Skip,
    SkipReason,
    Split,
    Task,
    TaskCompletion,
    TaskKind,
    TrainingRun,
    User,
)

UNICODE = "Ünïcode ✓ 中文 — <b>not bold</b> \"quotes\" 'and' \\ backslash\nnew line"


def _graph(now):
    admin = User(email="admin@example.com", name="Ada", role=Role.admin, password_hash="h", last_login_at=now)
    lab = User(email="lab@example.com", name=UNICODE, role=Role.labeler, password_hash=None)
    project = Project(
        name="p " + UNICODE,
        description=UNICODE,
        k=4,
        overlap=2,
        lease_seconds=600,
        targets={"demonstration": 10, "ranking": 5},
        chat_template="{{ x }}",
    )
    gv = GuidelineVersion(project=project, version=1, body_md="# Be helpful\n" + UNICODE, created_by_id=None)
    prompt = Prompt(
        project=project,
        text=UNICODE,
        split=Split.valid,
        source="alpaca",
        external_id="a-1",
        content_hash="c" * 64,
        reference="ref",
        meta={"n": [1, 2, {"k": None}]},
    )
    base = ModelVersion(
        name="base", kind=ModelKind.base, source="smollm2-135m-instruct", parent_ids=[], metrics={"loss": 1.5}
    )
    run = TrainingRun(
        project=project,
        kind=RunKind.sft,
        status=RunStatus.running,
        config={"lr": 1e-5, "epochs": 2},
        input_model_ids=[1],
        data_filter={"exclude_labelers": [3]},
        dataset_snapshot={"demonstrations": [1, 2], "sha256": "ab"},
        started_at=now,
        heartbeat_at=now,
        worker_id="host:1",
        progress_step=3,
        progress_total=10,
        summary={"acc": 0.9},
    )
    comp_a = Completion(prompt=prompt, text=UNICODE, source="m1", generation={"temperature": 0.7, "eos": True})
    comp_b = Completion(prompt=prompt, text="b", source="m2", generation={})
    task = Task(
        project=project, prompt=prompt, kind=TaskKind.ranking, required=2, priority=5, gold={"order": [[1], [2]]}
    )
    return admin, lab, project, gv, prompt, base, run, comp_a, comp_b, task


def test_every_table_round_trips(engine):
    now = utcnow()
    Session = make_sessionmaker(engine)
    with Session() as s:
        admin, lab, project, gv, prompt, base, run, comp_a, comp_b, task = _graph(now)
        s.add_all([admin, lab, project, gv, prompt, base, run, comp_a, comp_b, task])
        s.flush()
        base.run_id = run.id
        task.source_run_id = run.id
        s.add_all(
            [
                Invite(
                    token_hash="t" * 64,
                    email="inv@example.com",
                    role=Role.admin,
                    created_by_id=admin.id,
                    expires_at=now + timedelta(days=1),
                ),
                LoginFailure(email="x@example.com", ip="127.0.0.1", at=now),
                ApiToken(user_id=admin.id, name="cli", token_hash="a" * 64, prefix="il_abc"),
                TaskCompletion(task_id=task.id, completion_id=comp_a.id, position=0),
                TaskCompletion(task_id=task.id, completion_id=comp_b.id, position=1),
                Lease(
                    task_id=task.id,
                    user_id=lab.id,
                    expires_at=now + timedelta(minutes=30),
                    display_order=[comp_b.id, comp_a.id],
                ),
                Skip(task_id=task.id, user_id=admin.id, reason=SkipReason.pii, note=UNICODE),
                Draft(task_id=task.id, user_id=lab.id, text=UNICODE),
                Demonstration(
                    task_id=task.id,
                    prompt_id=prompt.id,
                    user_id=lab.id,
                    guideline_version_id=gv.id,
                    text=UNICODE,
                    time_spent_ms=1234,
                    idempotency_key="k1",
                ),
                Ranking(
                    task_id=task.id,
                    user_id=lab.id,
                    guideline_version_id=gv.id,
                    order=[[comp_a.id], [comp_b.id]],
                    ratings={str(comp_a.id): {"likert": 6, "flags": ["hallucination"]}},
                    display_order=[comp_b.id, comp_a.id],
                    none_acceptable=False,
                    time_spent_ms=99,
                ),
                Comparison(
                    task_id=task.id,
                    user_id=lab.id,
                    a_completion_id=comp_b.id,
                    b_completion_id=comp_a.id,
                    choice=ComparisonChoice.tie,
                    reason=UNICODE,
                ),
                RunMetric(run_id=run.id, step=3, name="loss", value=0.125),
            ]
        )
        s.commit()
        ids = {type(o).__name__: sa_inspect(o).identity for o in s.identity_map.values()}

    expected_tables = {m.class_.__tablename__ for m in Base.registry.mappers}
    assert expected_tables == set(Base.metadata.tables)

    with Session() as s:
        assert {type(o).__name__ for o in [s.get(type_, ident) for type_, ident in _types(ids)]} == set(ids)
        lab = s.scalar(select(User).where(User.email == "lab@example.com"))
        assert lab.name == UNICODE and lab.role is Role.labeler and lab.is_active
        admin = s.scalar(select(User).where(User.role == Role.admin))
        assert admin.last_login_at == now and admin.last_login_at.tzinfo is not None
        project = s.scalar(select(Project))
        assert project.targets == {"demonstration": 10, "ranking": 5} and project.guidelines[0].version == 1
        prompt = s.scalar(select(Prompt))
        assert prompt.text == UNICODE and prompt.split is Split.valid and prompt.meta == {"n": [1, 2, {"k": None}]}
        task = s.scalar(select(Task))
        assert task.kind is TaskKind.ranking and [o.position for o in task.outputs] == [0, 1]
        assert task.gold == {"order": [[1], [2]]} and task.source_run_id is not None
        ranking = s.scalar(select(Ranking))
        a_id = task.outputs[0].completion_id
        assert ranking.ratings[str(a_id)] == {"likert": 6, "flags": ["hallucination"]}
        assert ranking.order[0] == [a_id]
        assert s.scalar(select(Comparison)).choice is ComparisonChoice.tie
        run = s.scalar(select(TrainingRun))
        assert run.status is RunStatus.running and run.config == {"lr": 1e-5, "epochs": 2}
        assert run.heartbeat_at == now
        assert s.scalar(select(RunMetric)).value == 0.125
        assert s.scalar(select(ModelVersion)).run_id == run.id
        assert s.scalar(select(Lease)).expires_at > now
        assert s.scalar(select(Skip)).reason is SkipReason.pii
        assert s.scalar(select(Invite)).role is Role.admin


def _types(ids):
    import app.models as m

    return [(getattr(m, name), ident) for name, ident in ids.items()]


def test_one_submission_per_task_and_labeler(engine):
    now = utcnow()
    Session = make_sessionmaker(engine)
    with Session() as s:
        admin, lab, project, gv, prompt, base, run, comp_a, comp_b, task = _graph(now)
        s.add_all([lab, project, prompt, task])
        s.flush()
        s.add(Demonstration(task_id=task.id, prompt_id=prompt.id, user_id=lab.id, text="one"))
        s.commit()
        s.add(Demonstration(task_id=task.id, prompt_id=prompt.id, user_id=lab.id, text="two"))
        try:
            s.commit()
            raise AssertionError("a second demonstration for the same task and labeler was stored")
        except IntegrityError:
            s.rollback()
        assert [d.text for d in s.scalars(select(Demonstration))] == ["one"]
