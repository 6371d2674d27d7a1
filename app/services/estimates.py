"""What a run will do (steps, examples, episodes) and about how long it will take, for the run form.

The time comes from the pace of the newest finished run of the same kind: its wall time (claim to
end, model loading included) per unit of work (a demonstration or ranking seen once, an episode, a
sampled answer). It is the worker that ran it that set the pace: a run taken by another machine
(a GPU worker after a CPU one) is faster or slower, and the form says which run the pace is from."""

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import (
    Project,
    Prompt,
    RunKind,
    RunStatus,
    Split,
    Task,
    TaskKind,
    TrainingRun,
)
from app.services import ServiceError
from app.services.runs import training_examples
from runconfig import config_from_dict


@dataclass
class Estimate:
    work: str
    """What the run will do, in words."""
    units: float
    """How much work that is, in the kind's unit (examples seen, episodes, answers sampled)."""
    seconds: float | None = None
    basis: str = ""
    """Which run the pace comes from, or why there is no time estimate."""


UNITS = {
    RunKind.sft: "demonstrations",
    RunKind.reward: "rankings",
    RunKind.ppo: "episodes",
    RunKind.generate: "answers",
    RunKind.evaluate: "answers",
}


def estimate_run(session: Session, project_id: int | None, kind: str, config: dict[str, Any]) -> Estimate:
    """The work of a run with these settings on this project's data now, and its time at the pace of
    the newest finished run of the same kind. ServiceError when the settings are invalid."""
    try:
        run_kind = RunKind(kind)
        parsed = config_from_dict(kind, config)
    except ValueError as exc:
        raise ServiceError(str(exc), status_code=422) from None
    estimate = _work(session, project_id, run_kind, parsed)
    pace = _pace(session, run_kind)
    if pace is None:
        estimate.basis = f"No finished {kind} run yet to measure the pace of a worker."
    else:
        seconds_per_unit, run = pace
        estimate.seconds = seconds_per_unit * estimate.units
        estimate.basis = (
            f"At the pace of run #{run.id} ({seconds_per_unit:.3g} s per {UNITS[run_kind][:-1]}, "
            f"worker {run.worker_id or 'unknown'})."
        )
    return estimate


def _count(session: Session, stmt) -> int:
    return int(session.scalar(stmt) or 0)


def _work(session: Session, project_id: int | None, kind: RunKind, config: Any) -> Estimate:
    if kind in (RunKind.sft, RunKind.reward):
        n = training_examples(session, project_id, kind, [Split.train]) if project_id else 0
        steps = math.ceil(n / config.batch_size) * config.epochs
        seen = n * config.epochs
        if config.max_steps and config.max_steps < steps:
            steps, seen = config.max_steps, min(seen, config.max_steps * config.batch_size)
        what = UNITS[kind]
        return Estimate(
            f"{steps:,} optimizer steps: {config.epochs} epoch(s) over {n:,} {what} "
            f"({seen:,} {what} seen, batches of {config.batch_size})",
            seen,
        )
    if kind == RunKind.ppo:
        steps = config.total_episodes // config.rollout_batch_size
        episodes = steps * config.rollout_batch_size
        return Estimate(
            f"{steps:,} PPO steps of {config.rollout_batch_size} episodes ({episodes:,} episodes, up to "
            f"{episodes * config.max_new_tokens:,} sampled tokens, {config.ppo_epochs} epoch(s) each)",
            episodes,
        )
    split = Split(config.split)
    stmt = select(func.count(Prompt.id)).where(Prompt.project_id == project_id, Prompt.split == split)
    if kind == RunKind.generate and config.new_prompts_only:
        stmt = stmt.where(Prompt.id.not_in(select(Task.prompt_id).where(Task.kind == TaskKind.ranking)))
    prompts = _count(session, stmt)
    limit = config.limit if kind == RunKind.generate else config.num_prompts
    prompts = min(prompts, limit) if limit else prompts
    if kind == RunKind.generate:
        project = session.get(Project, project_id) if project_id else None
        k = config.k or (project.k if project else 4)
        answers = prompts * k
        return Estimate(
            f"{answers:,} answers: {k} per prompt for {prompts:,} {split.value} prompts "
            f"(up to {config.max_new_tokens} tokens each)",
            answers,
        )
    return Estimate(f"{2 * prompts:,} answers: both models on {prompts:,} {split.value} prompts", 2 * prompts)


def _pace(session: Session, kind: RunKind) -> tuple[float, TrainingRun] | None:
    """Seconds per unit of work of the newest succeeded run of this kind."""
    run = session.scalar(
        select(TrainingRun)
        .where(
            TrainingRun.kind == kind,
            TrainingRun.status == RunStatus.succeeded,
            TrainingRun.started_at.is_not(None),
            TrainingRun.finished_at.is_not(None),
        )
        .order_by(TrainingRun.finished_at.desc())
        .limit(1)
    )
    if run is None or run.started_at is None or run.finished_at is None:
        return None
    summary, counts = run.summary or {}, (run.dataset_snapshot or {}).get("counts", {})
    config = run.config or {}
    if kind in (RunKind.sft, RunKind.reward):
        n = counts.get("sft_train" if kind == RunKind.sft else "rankings_train", 0)
        units = min(n * config.get("epochs", 1), summary.get("steps", 0) * config.get("batch_size", 1))
    elif kind == RunKind.ppo:
        units = summary.get("episodes", 0)
    elif kind == RunKind.generate:
        units = summary.get("completions", 0)
    else:
        units = 2 * summary.get("prompts", 0)
    seconds = (run.finished_at - run.started_at).total_seconds()
    return (seconds / units, run) if units and seconds > 0 else None
