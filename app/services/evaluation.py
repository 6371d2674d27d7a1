"""Win rates of an `evaluate` run: the labelers' A/B choices and the reward model's automatic one.

The win rate is the candidate's share of comparisons, a tie counting half for each side. Its 95%
confidence interval is Wilson's score interval on that share (with ties as half-successes), which
stays inside [0, 1] and behaves at small n and at 0 % or 100 %, unlike the normal approximation."""

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Comparison, ComparisonChoice, Completion, RunKind, Task, TaskKind, TaskStatus
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
    return {"n": n, "wins": wins, "losses": losses, "ties": ties,
            "win_rate": score / n if n else None, "ci95": [low, high] if n else None}


def labeler_win_rate(session: Session, run_id: int) -> dict[str, Any]:
    """The candidate's win rate over the baseline in the labelers' comparisons of this run's tasks."""
    run = get_run(session, run_id)
    if run.kind != RunKind.evaluate:
        raise ServiceError(f"Run {run.id} is a {run.kind.value} run; win rates come from evaluate runs.")
    candidate_id, baseline_id = run.input_model_ids[0], run.input_model_ids[1]
    rows = session.execute(
        select(Comparison.a_completion_id, Comparison.b_completion_id, Comparison.choice)
        .join(Task, Task.id == Comparison.task_id)
        .where(Task.source_run_id == run.id, Task.kind == TaskKind.comparison)
    ).all()
    ids = {cid for a, b, _ in rows for cid in (a, b)}
    model_of = dict(session.execute(select(Completion.id, Completion.model_version_id)
                                    .where(Completion.id.in_(ids))).all()) if ids else {}
    wins = losses = ties = 0
    for a, b, choice in rows:
        if choice == ComparisonChoice.tie:
            ties += 1
            continue
        chosen = a if choice == ComparisonChoice.a else b
        if model_of.get(chosen) == candidate_id:
            wins += 1
        elif model_of.get(chosen) == baseline_id:
            losses += 1
    counts = dict(session.execute(
        select(Task.status, func.count(Task.id))
        .where(Task.source_run_id == run.id, Task.kind == TaskKind.comparison).group_by(Task.status)
    ).all())
    return {**win_rate(wins, losses, ties), "candidate_model_id": candidate_id, "baseline_model_id": baseline_id,
            "tasks": sum(counts.values()), "tasks_closed": counts.get(TaskStatus.closed, 0)}


def evaluation_report(session: Session, run_id: int) -> dict[str, Any]:
    """What the dashboard and the API show for an evaluate run."""
    run = get_run(session, run_id)
    report = {"run_id": run.id, "status": run.status.value, "labelers": labeler_win_rate(session, run_id)}
    report["reward_model"] = (run.summary or {}).get("reward_model")
    return report
