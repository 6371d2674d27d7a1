"""Helpers for the run and worker tests: projects with prompts and labels, tiny models, a worker."""

import hashlib
import threading
import time
from pathlib import Path

from sqlalchemy.orm import Session

from app import conversation
from app.config import Settings
from app.models import (
    Completion,
    Demonstration,
    Project,
    Prompt,
    Ranking,
    Role,
    RunStatus,
    Split,
    Task,
    TaskKind,
    TrainingRun,
    User,
)
from app.services import accounts, registry, tasks

# A learnable toy task for the tiny models: answer with the next few numbers.
COUNTING = [(f"Count on from {i}.", " ".join(str(i + j) for j in range(1, 5))) for i in range(12)]


def fast_settings(settings: Settings, **overrides) -> Settings:
    """The test settings with a quick heartbeat, so cancels and reaps show within a second."""
    values = {"worker_heartbeat_s": 0.2, "worker_stale_s": 30.0, **overrides}
    return settings.model_copy(update=values)


def make_project(session: Session, name: str = "Counting", *, k: int = 2, **fields) -> Project:
    project = Project(name=name, k=k, overlap=1, **fields)
    session.add(project)
    session.flush()
    return project


def make_prompts(session: Session, project: Project, texts: list[str], split: Split = Split.train) -> list[Prompt]:
    prompts = [
        Prompt(
            project_id=project.id, text=t, split=split, content_hash=hashlib.sha256(f"{split}:{t}".encode()).hexdigest()
        )
        for t in texts
    ]
    session.add_all(prompts)
    session.flush()
    return prompts


def make_conversation(session: Session, project: Project, messages: list[dict], split: Split = Split.train) -> Prompt:
    """A prompt that is a conversation (its text, the plain rendering, is filled in on insert)."""
    prompt = Prompt(
        project_id=project.id, messages=messages, split=split, content_hash=conversation.content_hash(messages)
    )
    session.add(prompt)
    session.flush()
    return prompt


def make_labeler(session: Session, email: str = "labeler@example.com") -> User:
    return accounts.create_user(session, email, None, role=Role.labeler)


def add_demonstrations(
    session: Session, project: Project, pairs: list[tuple[str, str]], user: User, split: Split = Split.train
) -> list[Demonstration]:
    prompts = make_prompts(session, project, [p for p, _ in pairs], split)
    demo_tasks = tasks.create_demonstration_tasks(session, project, prompts)
    demos = [
        Demonstration(task_id=t.id, prompt_id=p.id, user_id=user.id, text=answer)
        for t, p, (_, answer) in zip(demo_tasks, prompts, pairs)
    ]
    session.add_all(demos)
    session.flush()
    return demos


def add_ranking(
    session: Session, project: Project, prompt: Prompt, answers: list[str], order: list[list[int]], user: User
) -> Ranking:
    """A ranking task over new outputs and a labeler's ranking of them (order: groups of indices)."""
    outputs = [Completion(prompt_id=prompt.id, text=a, source="test") for a in answers]
    session.add_all(outputs)
    session.flush()
    task = tasks.create_ranking_task(session, project, prompt, [o.id for o in outputs])
    ranking = Ranking(
        task_id=task.id,
        user_id=user.id,
        order=[[outputs[i].id for i in g] for g in order],
        display_order=[o.id for o in outputs],
    )
    session.add(ranking)
    session.flush()
    return ranking


def base_version(session: Session, folder: Path) -> int:
    return registry.register_base(session, str(folder), name="tiny").id


def queue_raw(
    session: Session, project: Project, kind: str, config: dict | None = None, input_model_ids: list[int] | None = None
) -> TrainingRun:
    """A queued run written straight to the table, skipping the checks of runs.create_run: the
    worker must cope with what an older version or a changed database left behind."""
    run = TrainingRun(
        project_id=project.id,
        kind=kind,
        config=config or {},
        input_model_ids=input_model_ids or [],
        data_filter={},
        status=RunStatus.queued,
        summary={},
    )
    session.add(run)
    session.flush()
    return run


def ranking_tasks(session: Session, run_id: int) -> list[Task]:
    from sqlalchemy import select

    return list(session.scalars(select(Task).where(Task.source_run_id == run_id, Task.kind == TaskKind.ranking)))


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Polls predicate() until it returns something truthy; fails the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


class WorkerThread:
    """A real Worker serving the queue in a background thread (signals stay with the main thread)."""

    def __init__(self, settings: Settings, **kwargs):
        from worker.worker import Worker

        self.worker = Worker(settings, poll_interval=0.05, device="cpu", **kwargs)
        self.thread = threading.Thread(target=self.worker.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.worker

    def __exit__(self, *exc):
        self.worker.terminating.set()
        self.thread.join(timeout=60)
        self.worker.engine.dispose()
        assert not self.thread.is_alive(), "worker thread did not stop"


def long_generate_run(session: Session, project: Project, version_id: int, n_prompts: int = 300) -> TrainingRun:
    """A generate run that takes tens of seconds on the CPU (one prompt per batch), for stop tests."""
    make_prompts(session, project, [f"Tell me a long story number {i}." for i in range(n_prompts)])
    return queue_raw(
        session, project, "generate", {"k": 2, "max_new_tokens": 64, "batch_size": 1, "limit": 0}, [version_id]
    )


def run_status(engine, run_id: int) -> TrainingRun:
    """The run as the database has it now (a fresh session, so no stale identity map)."""
    from app.db import make_sessionmaker

    with make_sessionmaker(engine)() as s:
        return s.get(TrainingRun, run_id)


def one_torch_thread():
    """Generator fixture body: tiny models on one CPU thread. On this shared 2-core box, two OpenMP
    threads spinning against other processes made a 64-token generate 50x slower (16.5 s vs 0.29 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
