"""Helpers for the labeler-workspace tests: a project with prompts, outputs and tasks."""

import hashlib

from sqlalchemy.orm import Session

from app.models import Completion, GuidelineVersion, Project, Prompt, Role, User
from app.services import accounts, tasks


def make_project(
    session: Session,
    name: str = "Assistant",
    *,
    overlap: int = 1,
    k: int = 4,
    guidelines: str = "# Be helpful\nAnswer **clearly**.",
    **fields,
) -> Project:
    project = Project(name=name, overlap=overlap, k=k, **fields)
    session.add(project)
    session.flush()
    session.add(GuidelineVersion(project_id=project.id, version=1, body_md=guidelines))
    session.flush()
    return project


def make_prompts(session: Session, project: Project, texts: list[str]) -> list[Prompt]:
    prompts = [
        Prompt(project_id=project.id, text=t, content_hash=hashlib.sha256(t.encode()).hexdigest()) for t in texts
    ]
    session.add_all(prompts)
    session.flush()
    return prompts


def make_outputs(session: Session, prompt: Prompt, texts: list[str]) -> list[Completion]:
    outputs = [Completion(prompt_id=prompt.id, text=t, source="test") for t in texts]
    session.add_all(outputs)
    session.flush()
    return outputs


def make_labelers(session: Session, n: int, prefix: str = "l") -> list[User]:
    # password None: no argon2 hashing, so making many labelers stays fast
    return [accounts.create_user(session, f"{prefix}{i}@example.com", None, role=Role.labeler) for i in range(n)]


def demo_setup(session: Session, n_prompts: int = 3, **project_fields) -> tuple[Project, list]:
    project = make_project(session, **project_fields)
    prompts = make_prompts(session, project, [f"Prompt number {i}" for i in range(n_prompts)])
    return project, tasks.create_demonstration_tasks(session, project, prompts)


def ranking_setup(session: Session, n_outputs: int = 4, **project_fields):
    project = make_project(session, **project_fields)
    (prompt,) = make_prompts(session, project, ["Rank these answers"])
    outputs = make_outputs(session, prompt, [f"Answer {chr(65 + i)}" for i in range(n_outputs)])
    task = tasks.create_ranking_task(session, project, prompt, [o.id for o in outputs])
    return project, task, outputs


def comparison_setup(session: Session, **project_fields):
    project = make_project(session, **project_fields)
    (prompt,) = make_prompts(session, project, ["Compare these answers"])
    a, b = make_outputs(session, prompt, ["Answer A", "Answer B"])
    task = tasks.create_comparison_task(session, project, prompt, a.id, b.id)
    return project, task, [a, b]
