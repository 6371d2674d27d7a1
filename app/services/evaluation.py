"""Win rates of an `evaluate` run: the labelers' A/B choices and the reward model's automatic one.

The win rate is the candidate's share of comparisons, a tie counting half for each side. Two
identical answers are a tie whatever was chosen between them (a labeler forced to pick, or a score
difference of rounding), and how many there were is reported; so are the identical answers an
evaluate run never posed as tasks (each prompt as many ties as a posed prompt got judgements). The 95% interval is a percentile
bootstrap over prompts: whole prompts are resampled with all their comparisons, so several labelers
judging one prompt count as the one prompt they are (their judgements of it are not independent)
and don't narrow the interval as more prompts would. The labelers' figure and the reward model's
are computed and shown apart, never pooled."""

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Comparison, ComparisonChoice, Completion, RunKind, Task, TaskKind, TaskStatus, TrainingRun
from app.services import ServiceError
from app.services.runs import get_run

BOOTSTRAP_SAMPLES = 2000
_BOOTSTRAP_CHUNK = 250  # resamples drawn at once: bounds the index matrix at 250 x prompts


def clustered_interval(outcomes: Sequence[tuple[Hashable, float]], *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0):
    """95% percentile-bootstrap interval of the mean score, resampling whole prompts (the first item
    of each outcome) with replacement; (0, 1) with fewer than two prompts, where there is nothing
    to resample. Seeded, so a page shows the same interval on every load."""
    totals: dict[Hashable, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for prompt, score in outcomes:
        totals[prompt][0] += score
        totals[prompt][1] += 1
    if len(totals) < 2:
        return 0.0, 1.0
    sums, counts = np.array(list(totals.values())).T
    rng = np.random.default_rng(seed)
    rates = []
    for start in range(0, samples, _BOOTSTRAP_CHUNK):
        picks = rng.integers(0, len(sums), size=(min(_BOOTSTRAP_CHUNK, samples - start), len(sums)))
        rates.append(sums[picks].sum(axis=1) / counts[picks].sum(axis=1))
    low, high = np.quantile(np.concatenate(rates), [0.025, 0.975])
    return float(low), float(high)


def win_rate(outcomes: Sequence[tuple[Hashable, float]], *, identical: int = 0) -> dict[str, Any]:
    """outcomes: (prompt, score) for each comparison, score 1 when the candidate won, 0 when it lost,
    0.5 for a tie; `identical` of the ties were identical answers."""
    n = len(outcomes)
    wins = sum(1 for _, score in outcomes if score == 1)
    losses = sum(1 for _, score in outcomes if score == 0)
    low, high = clustered_interval(outcomes)
    return {
        "n": n,
        "wins": wins,
        "losses": losses,
        "ties": n - wins - losses,
        "identical": identical,
        "prompts": len({prompt for prompt, _ in outcomes}),
        "win_rate": sum(score for _, score in outcomes) / n if n else None,
        "ci95": [low, high] if n else None,
    }


def unposed_ties(run: TrainingRun, judged: Sequence[tuple[Hashable, float]]) -> list[tuple[Hashable, float]]:
    """The identical answers an evaluate run did not pose (nothing to choose between them) as ties,
    each prompt as many times as the posed prompts were judged on average; none before labelers
    have judged anything, so an unjudged run shows no figure."""
    prompts = len({prompt for prompt, _ in judged})
    if not prompts:
        return []
    summary = run.summary or {}
    unposed = summary.get("identical_prompt_ids") or [
        ("identical", i) for i in range(summary.get("identical_answers", 0))
    ]
    per_prompt = max(1, round(len(judged) / prompts))
    return [(prompt, 0.5) for prompt in unposed for _ in range(per_prompt)]


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
        select(
            Task.source_run_id,
            Task.prompt_id,
            Comparison.a_completion_id,
            Comparison.b_completion_id,
            Comparison.choice,
        )
        .join(Task, Task.id == Comparison.task_id)
        .where(Task.source_run_id.in_(ids), Task.kind == TaskKind.comparison)
    ).all()
    completions = {c for _, _, a, b, _ in rows for c in (a, b)}
    shown = (
        {
            cid: (model_id, text.strip())
            for cid, model_id, text in session.execute(
                select(Completion.id, Completion.model_version_id, Completion.text).where(
                    Completion.id.in_(completions)
                )
            )
        }
        if completions
        else {}
    )
    outcomes: dict[int, list[tuple[Hashable, float]]] = {rid: [] for rid in ids}
    identical = dict.fromkeys(ids, 0)
    pair = {r.id: (r.input_model_ids[0], r.input_model_ids[1]) for r in runs}
    for rid, prompt_id, a, b, choice in rows:
        if rid is None:  # not selected (source_run_id IN ids); the column itself is nullable
            continue
        if shown[a][1] == shown[b][1]:
            identical[rid] += 1
            outcomes[rid].append((prompt_id, 0.5))
            continue
        if choice == ComparisonChoice.tie:
            outcomes[rid].append((prompt_id, 0.5))
            continue
        chosen = shown[a if choice == ComparisonChoice.a else b][0]
        if chosen == pair[rid][0]:
            outcomes[rid].append((prompt_id, 1.0))
        elif chosen == pair[rid][1]:
            outcomes[rid].append((prompt_id, 0.0))
    for r in runs:
        ties = unposed_ties(r, outcomes[r.id])
        outcomes[r.id] += ties
        identical[r.id] += len(ties)
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
            **win_rate(outcomes[rid], identical=identical[rid]),
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
