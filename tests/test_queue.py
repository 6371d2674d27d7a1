"""The task queue and the submission rules (app.services.queue / submissions), on both databases."""

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db import utcnow, write_session
from app.models import (
    Comparison,
    ComparisonChoice,
    Demonstration,
    Draft,
    GuidelineVersion,
    Lease,
    Ranking,
    Skip,
    Task,
    TaskKind,
    TaskStatus,
)
from app.services import Conflict, Forbidden, NotFound, ServiceError, queue, submissions
from tests.labeling import comparison_setup, demo_setup, make_labelers, make_project, make_prompts, ranking_setup

LEASE = 600


def _next(engine, user, project, kind=TaskKind.demonstration, **kw):
    with write_session(engine) as s:
        return queue.next_task(s, user.id, project, kind, default_lease_seconds=LEASE, **kw)


def _do(engine, fn, *args, **kw):
    with write_session(engine) as s:
        return fn(s, *args, **kw)


def _expire(engine, user, task_id):
    with write_session(engine) as s:
        s.execute(
            update(Lease)
            .where(Lease.user_id == user.id, Lease.task_id == task_id)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


@pytest.fixture
def demo(session):
    project, tasks = demo_setup(session, n_prompts=3, overlap=2)
    users = make_labelers(session, 4)
    session.commit()
    return project, tasks, users


def test_priority_then_age_and_same_lease_again(engine, session):
    project = make_project(session)
    prompts = make_prompts(session, project, ["old", "new", "urgent"])
    from app.services import tasks

    old, new = tasks.create_demonstration_tasks(session, project, prompts[:2])
    (urgent,) = tasks.create_demonstration_tasks(session, project, prompts[2:], priority=5)
    (u,) = make_labelers(session, 1)
    session.commit()
    first = _next(engine, u, project)
    assert first.task_id == urgent.id and first.prompt_text == "urgent"
    assert first.expires_at - first.leased_at == timedelta(seconds=LEASE)
    assert _next(engine, u, project).lease_id == first.lease_id  # the live lease comes back first
    _do(engine, submissions.submit_demonstration, u, urgent.id, "done")
    assert _next(engine, u, project).task_id == old.id


def test_overlap_expiry_and_never_twice(engine, demo):
    project, (t1, t2, t3), (a, b, c, d) = demo
    assert _next(engine, a, project).task_id == t1.id
    assert _next(engine, b, project).task_id == t1.id  # overlap 2: two labelers hold t1
    assert _next(engine, c, project).task_id == t2.id  # t1 is full
    _expire(engine, a, t1.id)
    assert _next(engine, d, project).task_id == t1.id  # the expired lease freed its slot
    _do(engine, submissions.submit_demonstration, b, t1.id, "b's answer")
    _do(engine, submissions.submit_demonstration, d, t1.id, "d's answer")
    with write_session(engine) as s:
        task = s.get(Task, t1.id)
        assert (task.done_count, task.status) == (2, TaskStatus.closed)
    assert _next(engine, b, project).task_id == t2.id  # b never gets t1 again
    assert _next(engine, a, project).task_id == t3.id  # a's t1 is closed; t2 is full (c, b)


def test_late_submission(engine, demo):
    project, (t1, *_), (a, b, c, _d) = demo
    _next(engine, a, project)
    _expire(engine, a, t1.id)
    # nobody took the slot: the late answer is still wanted
    assert not _do(engine, submissions.submit_demonstration, a, t1.id, "late but welcome").replayed
    _next(engine, b, project)
    _expire(engine, b, t1.id)
    _next(engine, c, project)  # takes t1's last slot
    with pytest.raises(Conflict, match="expired"):
        _do(engine, submissions.submit_demonstration, b, t1.id, "too late")
    _do(engine, submissions.submit_demonstration, c, t1.id, "c's answer")
    with write_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Demonstration)) == 2
        assert s.get(Task, t1.id).status == TaskStatus.closed


def test_demonstration_rules(engine, demo):
    project, (t1, *_), (a, b, *_) = demo
    with write_session(engine) as s:
        s.add(GuidelineVersion(project_id=project.id, version=2, body_md="v2"))
    _next(engine, a, project)
    with pytest.raises(ServiceError, match="empty"):
        _do(engine, submissions.submit_demonstration, a, t1.id, "   \n ")
    with pytest.raises(ServiceError, match="limit is 8000"):
        _do(engine, submissions.submit_demonstration, a, t1.id, "x" * 8001)
    with pytest.raises(Forbidden, match="not assigned to you"):
        _do(engine, submissions.submit_demonstration, b, t1.id, "b never held it")
    with pytest.raises(NotFound):
        _do(engine, submissions.submit_demonstration, a, 9999, "no such task")
    with pytest.raises(ServiceError, match="not a ranking task"):
        _do(engine, submissions.submit_ranking, a, t1.id, [], {})
    row = _do(
        engine, submissions.submit_demonstration, a, t1.id, " my answer ", time_spent_ms=1234, idempotency_key="k1"
    )
    assert (row.time_spent_ms, row.kind, row.replayed) == (1234, TaskKind.demonstration, False)
    again = _do(engine, submissions.submit_demonstration, a, t1.id, "my answer", idempotency_key="k1")
    assert again.replayed and again.id == row.id
    with pytest.raises(Conflict, match="different answer"):
        _do(engine, submissions.submit_demonstration, a, t1.id, "changed", idempotency_key="k1")
    with pytest.raises(Conflict, match="already submitted"):
        _do(engine, submissions.submit_demonstration, a, t1.id, "my answer")
    with pytest.raises(ServiceError, match="between 0"):
        _next(engine, b, project)
        _do(engine, submissions.submit_demonstration, b, t1.id, "x", time_spent_ms=-5)
    with write_session(engine) as s:
        (stored,) = s.scalars(select(Demonstration)).all()
        assert stored.text == "my answer" and stored.user_id == a.id
        assert s.get(GuidelineVersion, stored.guideline_version_id).version == 2
        assert s.get(Task, t1.id).done_count == 1
        assert s.scalar(select(func.count()).select_from(Lease).where(Lease.user_id == a.id)) == 0


def test_skip_flag_and_drafts(engine, demo):
    project, (t1, t2, _t3), (a, b, *_) = demo
    assert _next(engine, a, project).task_id == t1.id
    _do(engine, submissions.save_draft, a, t1.id, "half an ans")
    with write_session(engine) as s:
        assert submissions.get_draft(s, a, t1.id) == "half an ans"
    with pytest.raises(Forbidden):
        _do(engine, submissions.save_draft, b, t1.id, "not mine")
    with pytest.raises(ServiceError, match="Unknown skip reason"):
        _do(engine, submissions.skip, a, t1.id, "boring")
    _do(engine, submissions.skip, a, t1.id, "pii", "has a phone number")
    _do(engine, submissions.skip, a, t1.id, "pii")  # twice: no change, no error
    with pytest.raises(Forbidden):
        _do(engine, submissions.skip, b, t1.id)
    assert _next(engine, a, project).task_id == t2.id  # t1 never comes back to a
    with write_session(engine) as s:
        (flag,) = submissions.flagged_skips(s, project.id)
        assert (flag.reason.value, flag.note) == ("pii", "has a phone number")
        assert s.scalar(select(func.count()).select_from(Draft)) == 0
    _do(engine, submissions.save_draft, a, t2.id, "draft")
    _do(engine, submissions.submit_demonstration, a, t2.id, "final")
    with write_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Draft)) == 0
        # The history lists the skipped task too, with its reason.
        history = [(h.task_id, h.skip_reason and h.skip_reason.value) for h in submissions.history(s, a)]
        assert history == [(t2.id, None), (t1.id, "pii")]
        assert submissions.counts_since(s, a, submissions.start_of_today())[TaskKind.demonstration] == 1


def test_ranking_rules(engine, session):
    project, task, outs = ranking_setup(session, n_outputs=4)
    _, other_task, other_outs = ranking_setup(session, n_outputs=2, name="Other")
    a, b = make_labelers(session, 2)
    session.commit()
    got = _next(engine, a, project, TaskKind.ranking)
    ids = [o.id for o in outs]
    assert sorted(o.id for o in got.outputs) == sorted(ids)
    assert [o.text for o in got.outputs] == [{o.id: o.text for o in outs}[o.id] for o in got.outputs]
    ok_ratings = {i: {"likert": 7 - n, "flags": []} for n, i in enumerate(ids)}
    bad = [
        ([[ids[0]], [ids[1]], [ids[2]]], ok_ratings, "not in the order"),
        ([[ids[0], ids[0]], [ids[1]], [ids[2]], [ids[3]]], ok_ratings, "more than once"),
        ([[ids[0]], [ids[1]], [ids[2]], [ids[3]], [other_outs[0].id]], ok_ratings, "not one of this task"),
        ([[ids[0]], [ids[1]], [ids[2]], [ids[3]], [424242]], ok_ratings, "not one of this task"),
        ([[ids[0]], [], [ids[1], ids[2], ids[3]]], ok_ratings, "non-empty"),
        (ids, ok_ratings, "non-empty list"),
        ([[ids[0]], [ids[1], ids[2], ids[3]]], {**ok_ratings, ids[0]: {"likert": 8}}, "from 1 to 7"),
        ([[ids[0]], [ids[1], ids[2], ids[3]]], {**ok_ratings, ids[0]: {"likert": 0}}, "from 1 to 7"),
        (
            [[ids[0]], [ids[1], ids[2], ids[3]]],
            {**ok_ratings, ids[0]: {"likert": 3, "flags": ["rude"]}},
            "Unknown flag",
        ),
        ([[ids[0]], [ids[1], ids[2], ids[3]]], {i: r for i, r in ok_ratings.items() if i != ids[3]}, "no rating"),
    ]
    for order, ratings, message in bad:
        with pytest.raises(ServiceError, match=message):
            _do(engine, submissions.submit_ranking, a, task.id, order, ratings)
    order = [[ids[2]], [ids[0], ids[3]], [ids[1]]]
    ratings = {**ok_ratings, ids[2]: {"likert": 6, "flags": ["hallucination", "expresses_opinion"]}}
    row = _do(engine, submissions.submit_ranking, a, task.id, order, ratings, none_acceptable=True)
    with write_session(engine) as s:
        stored = s.get(Ranking, row.id)
        assert stored.order == order and stored.none_acceptable
        assert stored.display_order == [o.id for o in got.outputs]
        assert stored.ratings[str(ids[2])] == {"likert": 6, "flags": ["expresses_opinion", "hallucination"]}
        assert stored.flag_count == 2  # what the labelers page sums
    with pytest.raises(Forbidden):
        _do(engine, submissions.submit_ranking, b, task.id, order, ratings)
    assert other_task.id != task.id


def test_comparison(engine, session):
    project, task, (oa, ob) = comparison_setup(session, overlap=2)
    a, b = make_labelers(session, 2)
    session.commit()
    got = _next(engine, a, project, TaskKind.comparison)
    assert {o.id for o in got.outputs} == {oa.id, ob.id}
    with pytest.raises(ServiceError, match="Choose 'a', 'b' or 'tie'"):
        _do(engine, submissions.submit_comparison, a, task.id, "c")
    with pytest.raises(ServiceError, match="limit is 2000"):
        _do(engine, submissions.submit_comparison, a, task.id, "a", "x" * 2001)
    row = _do(engine, submissions.submit_comparison, a, task.id, "b", "clearer")
    with write_session(engine) as s:
        stored = s.get(Comparison, row.id)
        assert [stored.a_completion_id, stored.b_completion_id] == [o.id for o in got.outputs]
        assert (stored.choice, stored.reason) == (ComparisonChoice.b, "clearer")


def test_lease_length_per_project_and_counts(engine, session):
    project, _ = demo_setup(session, n_prompts=2, lease_seconds=42)
    (a,) = make_labelers(session, 1)
    session.commit()
    got = _next(engine, a, project)
    assert got.expires_at - got.leased_at == timedelta(seconds=42)
    with write_session(engine) as s:
        assert queue.available_counts(s, a.id) == {(project.id, TaskKind.demonstration): 2}
    later = utcnow() + timedelta(seconds=60)
    again = _next(engine, a, project, now=later)  # the lease expired: a may get the same task back
    assert again.task_id == got.task_id and again.lease_id == got.lease_id
    with write_session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Skip)) == 0
