"""50+ labelers working at once against the queue and submission services, each in its own thread
and database connection: no task gets more submissions than its overlap, no labeler gets a task
twice, no acknowledged submission is lost. Postgres is the case that matters (SKIP LOCKED, many
writers); SQLite runs the same test with its one writer at a time."""

import random
import threading
import time
from collections import Counter, defaultdict

from sqlalchemy import func, select

from app.db import make_engine, write_session
from app.models import Demonstration, Skip, Task, TaskKind, TaskStatus
from app.services import queue, submissions
from tests.labeling import demo_setup, make_labelers

LABELERS = 50
TASKS = 40
OVERLAP = 3


def test_fifty_labelers_at_once(settings, session):
    project, tasks = demo_setup(session, n_prompts=TASKS, overlap=OVERLAP)
    users = make_labelers(session, LABELERS)
    session.commit()
    engine = make_engine(settings.db_url, pool_size=LABELERS + 2, max_overflow=0)
    handed: dict[int, list[int]] = defaultdict(list)  # user -> tasks handed out, in order
    acked: list[tuple[int, int]] = []  # (task, user) the service stored
    skipped: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(LABELERS)
    lock = threading.Lock()

    busy = [0]  # labelers holding a task: while any does, a skip can free a slot again

    def work(user, seed):
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                with lock:
                    skips_before = len(skipped)
                with write_session(engine) as s:
                    got = queue.next_task(s, user.id, project, TaskKind.demonstration, default_lease_seconds=600)
                if got is None:
                    with lock:  # done only when no slot was freed meanwhile and none can be anymore
                        if errors or (busy[0] == 0 and len(skipped) == skips_before):
                            return
                    time.sleep(0.01)
                    continue
                with lock:
                    handed[user.id].append(got.task_id)
                    busy[0] += 1
                if rng.random() < 0.1:
                    with write_session(engine) as s:
                        submissions.skip(s, user, got.task_id, "nonsense")
                    with lock:
                        skipped.append((got.task_id, user.id))
                        busy[0] -= 1
                    continue
                key = f"{user.id}-{got.task_id}"
                for _attempt in range(2 if rng.random() < 0.2 else 1):  # some clients retry
                    with write_session(engine) as s:
                        receipt = submissions.submit_demonstration(
                            s, user, got.task_id, f"answer {key}", idempotency_key=key
                        )
                with lock:
                    acked.append((receipt.task_id, user.id))
                    busy[0] -= 1
        except BaseException as exc:  # surfaced below; the others stop instead of waiting for this one
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(u, i)) for i, u in enumerate(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    engine.dispose()
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)

    session.rollback()
    session.expire_all()  # read what the threads wrote
    stored = session.execute(select(Demonstration.task_id, Demonstration.user_id)).all()
    per_task = Counter(t for t, _ in stored)
    skips_per_task = Counter(t for t, _ in skipped)
    # no task over its overlap; every task got its overlap unless too many labelers skipped it
    for task in tasks:
        assert per_task[task.id] <= OVERLAP
        assert per_task[task.id] == min(OVERLAP, LABELERS - skips_per_task[task.id])
    # nothing lost, nothing duplicated, counters in step
    assert sorted(acked) == sorted(tuple(r) for r in stored)
    assert len(acked) == len(set(acked))
    for task in session.scalars(select(Task)):
        assert task.done_count == per_task[task.id]
        assert task.status == (TaskStatus.closed if task.done_count == OVERLAP else TaskStatus.open)
    # no labeler handed the same task twice
    for user_id, got in handed.items():
        assert len(got) == len(set(got)), f"labeler {user_id} got a task twice"
    assert session.scalar(select(func.count()).select_from(Skip)) == len(skipped)
    assert len(stored) > TASKS  # the test did real work
