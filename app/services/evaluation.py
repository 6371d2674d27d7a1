"""Win rates of an `evaluate` run: the labelers' A/B choices and the reward model's automatic one.

The win rate is the candidate's share of comparisons, a tie counting half for each side. Its 95%
confidence interval is Wilson's score interval on that share (with ties as half-successes), which
stays inside [0, 1] and behaves at small n and at 0 % or 100 %, unlike the normal approximation."""

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Comparison, ComparisonChoice, Completion, RunKind, Task, TaskKind, TaskStatus, TrainingRun
from app.services import ServiceError
from app.services.runs import get_run

Z95 = 1.959963984540054


def wilson_interval(score: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for `score` successes in `n` trials (score may be fractional: ties)."""
    if n <= 0:
        return 0.0, 1.0
    p = score / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(wins: int, losses: int, ties: int) -> dict[str, Any]:
    n = wins + losses + ties
    score = wins + 0.5 * ties
    low, high = wilson_interval(score, n)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": ties,
        "win_rate": score / n if n else None,
        "ci95": [low, high] if n else None,
    }


def labeler_win_rate(session: Session, run_id: int) -> dict[str, Any]:
    """The candidate's win rate over the baseline in the labelers' comparisons of this run's tasks."""
    run = get_run(session, run_id)
    if run.kind != RunKind.evaluate:
        raise ServiceError(f"Run {run.id} is a {run.kind.value} run; win rates come from evaluate runs.")
    return labeler_win_rates(session, [run])[run.id]


def labeler_win_rates(session: Session, runs: list[TrainingRun]) -> dict[int, dict[str, Any]]:
    """Labeler win rates (with their 95% interval) of several evaluate runs, in three queries."""
    runs = [r for r in runs if len(r.input_model_ids or []) >= 2]
    if not runs:
        return {}
    ids = [r.id for r in runs]
    rows = session.execute(
        select(Task.source_run_id, Comparison.a_completion_id, Comparison.b_completion_id, Comparison.choice)
        .join(Task, Task.id == Comparison.task_id)
        .where(Task.source_run_id.in_(ids), Task.kind == TaskKind.comparison)
    ).all()
    completions = {c for _, a, b, _ in rows for c in (a, b)}
    model_of = (
        dict(
            session.execute(
                select(Completion.id, Completion.model_version_id).where(Completion.id.in_(completions))
            ).all()
        )
        if completions
        else {}
    )
    tally = {rid: [0, 0, 0] for rid in ids}  # wins, losses, ties
    pair = {r.id: (r.input_model_ids[0], r.input_model_ids[1]) for r in runs}
    for rid, a, b, choice in rows:
        if rid is None:  # not selected (source_run_id IN ids); the column itself is nullable
            continue
        if choice == ComparisonChoice.tie:
            tally[rid][2] += 1
            continue
        chosen = model_of.get(a if choice == ComparisonChoice.a else b)
        if chosen == pair[rid][0]:
            tally[rid][0] += 1
        elif chosen == pair[rid][1]:
            tally[rid][1] += 1
    counts: dict[int, dict[TaskStatus, int]] = defaultdict(dict)
    for run_id, status, n in session.execute(
        select(Task.source_run_id, Task.status, func.count())
        .where(Task.source_run_id.in_(ids), Task.kind == TaskKind.comparison)
        .group_by(Task.source_run_id, Task.status)
    ):
        if run_id is not None:
            counts[run_id][status] = n
    return {
        rid: {
            **win_rate(*tally[rid]),
            "candidate_model_id": pair[rid][0],
            "baseline_model_id": pair[rid][1],
            "tasks": sum(counts[rid].values()),
            "tasks_closed": counts[rid].get(TaskStatus.closed, 0),
        }
        for rid in ids
    }


def recent_evaluations(session: Session, limit: int = 10) -> list[tuple[TrainingRun, dict[str, Any]]]:
    """The newest evaluate runs with their labeler win rates (the Models page)."""
    done = list(
        session.scalars(
            select(TrainingRun).where(TrainingRun.kind == RunKind.evaluate).order_by(TrainingRun.id.desc()).limit(limit)
        )
    )
    reports = labeler_win_rates(session, done)
    return [(run, reports[run.id]) for run in done if run.id in reports]


def evaluation_report(session: Session, run_id: int) -> dict[str, Any]:
    """What the dashboard and the API show for an evaluate run."""
    run = get_run(session, run_id)
    return {
        "run_id": run.id,
        "status": run.status.value,
        "labelers": labeler_win_rate(session, run_id),
        "reward_model": (run.summary or {}).get("reward_model"),
    }
