"""Decide-once transitions under two admins acting at the same moment (issue 27, finding 1), on
SQLite and Postgres: each admin in a thread of their own with their own session (so their own
connection), a barrier to start them together, many rounds. Exactly one decision wins each round
and the rows agree with it.

- A written prompt accepted and rejected at once: accepted (with its Prompt and demonstration
  task, no reason) or rejected (with the reason, no Prompt), never both.
- A flag dismissed and retired at once: one of the two, and the prompt's tasks agree."""

import threading
from collections import Counter
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import make_sessionmaker
from app.models import GuidelineVersion, Project, Prompt, Role, Skip, SkipReason, Task, TaskStatus, WrittenPrompt
from app.services import ServiceError, projects, review, tasks, written_prompts
from tests.worker_helpers import make_prompts

ROUNDS = 50


def _race(engine, *steps: Callable[[Session], object]) -> list[str]:
    """Runs each step in its own thread and session, all released by one barrier; per step "ok"
    (it committed) or "refused" (a ServiceError, rolled back). Anything else fails the test."""
    maker = make_sessionmaker(engine)
    barrier = threading.Barrier(len(steps))
    outcomes: list[str] = [""] * len(steps)

    def run(i: int, step: Callable[[Session], object]) -> None:
        with maker() as session:
            barrier.wait(timeout=30)
            try:
                step(session)
                session.commit()
                outcomes[i] = "ok"
            except ServiceError as exc:
                session.rollback()
                outcomes[i] = f"refused {exc.status_code}"
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                session.rollback()
                outcomes[i] = f"error {type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(steps)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def test_accept_and_reject_of_one_written_prompt_race_and_exactly_one_wins(session, engine, make_user):
    labeler, admin_a, admin_b = (
        make_user("w@example.com"),
        make_user("a@example.com", Role.admin),
        make_user("b@example.com", Role.admin),
    )
    project = Project(name="Race", k=2, overlap=1, written_prompt_targets={"kind": {"plain": 100}})
    session.add(project)
    session.commit()
    wins: Counter[str] = Counter()
    for n in range(ROUNDS):
        row = written_prompts.write(
            session, labeler, project.id, kind="plain", text=f"Race prompt number {n}: say hi.", category="generation"
        )
        session.commit()

        def accept(s: Session, wid: int = row.id) -> None:
            written_prompts.accept(s, admin_a, project.id, wid)

        def reject(s: Session, wid: int = row.id) -> None:
            written_prompts.reject(s, admin_b, project.id, wid, "Not this one.")

        # Which thread starts first alternates, so that either can win on SQLite too.
        steps = {"accepted": accept, "rejected": reject}
        order = list(steps) if n % 2 else list(reversed(steps))
        outcomes = _race(engine, *(steps[k] for k in order))
        assert sorted(outcomes) == ["ok", "refused 409"], (n, outcomes)
        winner = order[outcomes.index("ok")]
        wins[winner] += 1
        session.expire_all()
        done = session.get_one(WrittenPrompt, row.id)
        made = session.scalars(select(Prompt).where(Prompt.meta["written_prompt_id"].as_integer() == row.id)).all()
        assert done.status.value == winner, (n, done.status, outcomes)
        if winner == "accepted":
            assert done.reason == "" and done.reviewed_by_id == admin_a.id
            assert [p.id for p in made] == [done.prompt_id]
            assert session.scalar(select(func.count()).where(Task.prompt_id == done.prompt_id)) == 1
        else:
            assert done.reason == "Not this one." and done.reviewed_by_id == admin_b.id
            assert done.prompt_id is None and made == []
    prompts = session.scalar(select(func.count()).where(Prompt.project_id == project.id))
    assert prompts == wins["accepted"] == session.scalar(select(func.count()).where(Task.project_id == project.id))
    assert wins["accepted"] + wins["rejected"] == ROUNDS
    print(f"\n{engine.dialect.name}: {ROUNDS} races, exactly one winner each; wins {dict(wins)}")


def test_a_flag_dismissed_and_retired_at_once_is_decided_once(session, engine, make_user):
    labeler, admin_a, admin_b = (
        make_user("w@example.com"),
        make_user("a@example.com", Role.admin),
        make_user("b@example.com", Role.admin),
    )
    project = Project(name="Flags", k=2, overlap=1)
    session.add(project)
    session.flush()
    wins: Counter[str] = Counter()
    for n in range(ROUNDS):
        (prompt,) = make_prompts(session, project, [f"Flagged prompt {n}"])
        (task,) = tasks.create_demonstration_tasks(session, project, [prompt])
        skip = Skip(task_id=task.id, user_id=labeler.id, reason=SkipReason.pii, note="")
        session.add(skip)
        session.commit()

        def dismiss(s: Session, sid: int = skip.id) -> None:
            review.dismiss_flag(s, admin_a, project.id, sid)

        def retire(s: Session, sid: int = skip.id) -> None:
            review.retire_flagged_prompt(s, admin_b, project.id, sid)

        steps = {"dismissed": dismiss, "retired": retire}
        order = list(steps) if n % 2 else list(reversed(steps))
        outcomes = _race(engine, *(steps[k] for k in order))
        assert sorted(outcomes) == ["ok", "refused 409"], (n, outcomes)
        winner = order[outcomes.index("ok")]
        wins[winner] += 1
        session.expire_all()
        flag, task_now = session.get_one(Skip, skip.id), session.get_one(Task, task.id)
        assert flag.dismissed_at is not None
        assert flag.dismissed_by_id == (admin_a.id if winner == "dismissed" else admin_b.id), (n, outcomes)
        assert task_now.status == (TaskStatus.open if winner == "dismissed" else TaskStatus.retired), (n, outcomes)
    assert sum(wins.values()) == ROUNDS
    print(f"\n{engine.dialect.name}: {ROUNDS} flag races, exactly one winner each; wins {dict(wins)}")


def test_guidelines_saved_by_several_admins_at_once_each_get_a_version(session, engine):
    """Found by a load of 10 admins on the API (pause, resume, save guidelines): two saves at once
    read the same latest version, and the second insert broke the unique (project, version) with a
    500. Every save must get a version of its own, 1..N."""
    project = Project(name="Guidelines race", k=2, overlap=1)
    session.add(project)
    session.commit()
    project_id = project.id

    def save(body: str) -> Callable[[Session], object]:
        return lambda s: projects.save_guidelines(s, s.get_one(Project, project_id), body)

    for round_ in range(5):
        outcomes = _race(engine, *(save(f"round {round_} admin {i}") for i in range(4)))
        assert outcomes == ["ok"] * 4, outcomes
    versions = session.scalars(select(GuidelineVersion.version).where(GuidelineVersion.project_id == project_id))
    assert sorted(versions) == list(range(1, 21))
