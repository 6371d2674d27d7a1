"""Training runs: create, list, cancel, and the worker's side (claim, heartbeat, progress, metrics,
finish, reap). No torch here: the web app records a run and a worker process picks it up.

Run state machine (TrainingRun.status):

    queued ──claim──> running ──finish──> succeeded
      │                  ├──fail──────> failed      (error: message + short traceback)
      │                  ├──reap──────> failed      (no heartbeat for settings.worker_stale_s: "worker vanished")
      │                  └──stop──────> cancelled   (cancel requested, or the worker got SIGTERM)
      └──cancel──> cancelled (at once)

- `cancel_run` on a running run only sets `cancel_requested`; the worker sees it at its next
  heartbeat and stops at a safe point within seconds. succeeded/failed/cancelled are final: cancelling
  them is a 409.
- A run whose worker vanished or was stopped (SIGTERM) is queued again while it has attempts left,
  unless a cancel was requested: then it ends cancelled (the admin's cancel wins over a retry).
- Only the worker that claimed a run (worker_id) may move it on; a run reaped while its worker was
  stuck stays failed when that worker comes back (its finish is refused and it drops the run).
- Claiming uses SELECT ... FOR UPDATE SKIP LOCKED on Postgres, and the writer lock of
  `app.db.lock_writes` on SQLite, so two workers never claim the same run."""

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.db import atomic, lock_writes, skip_locked, utcnow
from app.models import (
    Comparison,
    ComparisonChoice,
    Demonstration,
    ModelKind,
    ModelVersion,
    Project,
    Prompt,
    Ranking,
    ReviewStatus,
    RunKind,
    RunMetric,
    RunStatus,
    Split,
    Task,
    TrainingRun,
    User,
)
from app.services import Conflict, NotFound, ServiceError, projects, registry, stats, tasks
from runconfig import DataFilter, config_from_dict, config_to_dict, data_filter_from_dict

FINAL = (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled)
POLICY_KINDS = (ModelKind.base, ModelKind.sft, ModelKind.ppo)

# Per run kind: the accepted kinds of each input model version, in order, and how many are required.
INPUT_MODELS: dict[RunKind, tuple[list[tuple[ModelKind, ...]], int]] = {
    RunKind.sft: ([(ModelKind.base, ModelKind.sft)], 0),
    RunKind.reward: ([(ModelKind.sft, ModelKind.base)], 0),
    RunKind.generate: ([POLICY_KINDS], 0),
    RunKind.ppo: ([(ModelKind.sft, ModelKind.base), (ModelKind.reward,)], 2),
    RunKind.evaluate: ([POLICY_KINDS, POLICY_KINDS, (ModelKind.reward,)], 2),
}
INPUT_NAMES = {
    RunKind.sft: ["the model to fine-tune"],
    RunKind.reward: ["the SFT (or base) model to start from"],
    RunKind.generate: ["the model to sample from"],
    RunKind.ppo: ["the SFT policy", "the reward model"],
    RunKind.evaluate: ["the candidate", "the baseline", "the reward model for an automatic win rate"],
}


def data_filter_of(run: TrainingRun) -> DataFilter:
    """The run's data selection, typed: labelers to leave out, a minimum agreement in percent
    (labelers below it on shared ranking tasks are left out too, resolved when the run is created
    and listed in `below_agreement`), and the training and validation splits. The row keeps JSON
    with only the keys given (`DataFilter.stored()`), so rows of any age load."""
    return DataFilter.model_validate(run.data_filter or {})


# ---- the admin's side ---------------------------------------------------------------------------


def create_run(
    session: Session,
    *,
    project_id: int | None,
    kind: str,
    config: dict[str, Any] | None = None,
    input_model_ids: list[int] | None = None,
    data_filter: dict[str, Any] | None = None,
    created_by: User | None = None,
    default_model: str = "",
    max_attempts: int = 3,
) -> TrainingRun:
    """Validates everything a worker would otherwise fail on late, then queues the run.

    With no input model, sft/reward/generate start from the config's `model` (when the kind has
    one) or `default_model`, registered as a base version, so the run always records its inputs."""
    try:
        run_kind = RunKind(kind)
    except ValueError:
        raise ServiceError(f"Unknown run kind {kind!r}; use one of {', '.join(k.value for k in RunKind)}.") from None
    if project_id is None:
        raise ServiceError("A run needs a project: its data comes from the project's prompts and labels.")
    if not 1 <= max_attempts <= 10:
        raise ServiceError(f"max_attempts must be between 1 and 10, got {max_attempts}.")
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"Project {project_id} does not exist.")
    projects.check_writable(project)
    try:
        parsed = config_from_dict(run_kind.value, config or {})
    except ValueError as exc:
        raise ServiceError(f"Invalid {run_kind.value} config: {exc}", status_code=422) from None
    selection = _check_data_filter(session, data_filter or {})
    selection = _apply_min_agreement(session, project.id, _apply_left_out(session, selection))
    ids = _check_input_models(
        session, run_kind, list(input_model_ids or []), project_id, getattr(parsed, "model", "") or default_model
    )
    _check_data(session, project, run_kind, parsed, selection)
    run = TrainingRun(
        project_id=project.id,
        kind=run_kind,
        config=config_to_dict(parsed),
        input_model_ids=ids,
        data_filter=selection.stored(),
        created_by_id=created_by.id if created_by else None,
        status=RunStatus.queued,
        summary={},
        max_attempts=max_attempts,
    )
    session.add(run)
    session.flush()
    return run


def _check_input_models(session: Session, kind: RunKind, ids: list[Any], project_id: int, fallback: str) -> list[int]:
    accepted, required = INPUT_MODELS[kind]
    names = INPUT_NAMES[kind]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ServiceError("input_model_ids must be a list of model version ids (integers).")
    if len(ids) > len(accepted) or len(ids) < required:
        wanted = ", ".join(names[: len(accepted)])
        raise ServiceError(
            f"A {kind.value} run takes {required}..{len(accepted)} input model versions ({wanted}); got {len(ids)}."
        )
    if not ids:
        if not fallback:
            raise ServiceError(f"A {kind.value} run needs {names[0]}: give input_model_ids or a model.")
        ids = [registry.register_base(session, fallback).id]
    for position, version_id in enumerate(ids):
        version = session.get(ModelVersion, version_id)
        if version is None:
            raise NotFound(f"Model version {version_id} ({names[position]}) does not exist.")
        if version.deleted_at is not None:
            raise ServiceError(f"Model version {version_id} ({names[position]}) was deleted; choose another one.")
        if version.kind not in accepted[position]:
            allowed = " or ".join(k.value for k in accepted[position])
            raise ServiceError(
                f"Model version {version_id} is a {version.kind.value} model, but {names[position]} "
                f"of a {kind.value} run must be {allowed}."
            )
        if version.project_id not in (None, project_id):
            raise ServiceError(
                f"Model version {version_id} belongs to project {version.project_id}, not to project {project_id}."
            )
    if kind == RunKind.evaluate and ids[0] == ids[1]:
        raise ServiceError(
            "An evaluation compares two different model versions; the candidate and the baseline are the same."
        )
    return ids


def _check_data_filter(session: Session, data_filter: Any) -> DataFilter:
    try:
        selection = data_filter_from_dict(data_filter)
    except ValueError as exc:
        raise ServiceError(str(exc)) from None
    excluded = selection.exclude_labelers
    missing = set(excluded) - set(session.scalars(select(User.id).where(User.id.in_(excluded))))
    if missing:
        raise ServiceError(f"data_filter.exclude_labelers names unknown users: {sorted(missing)}.")
    return selection


def _apply_left_out(session: Session, selection: DataFilter) -> DataFilter:
    """Labelers an admin left out of training (Labelers page) join exclude_labelers; who they were is
    kept with the run (`left_out_by_admin`)."""
    left_out = sorted(session.scalars(select(User.id).where(User.left_out_of_training)))
    if not left_out:
        return selection
    excluded = sorted(set(selection.exclude_labelers) | set(left_out))
    return selection.model_copy(update={"exclude_labelers": excluded, "left_out_by_admin": left_out})


def _apply_min_agreement(session: Session, project_id: int, selection: DataFilter) -> DataFilter:
    """Labelers whose agreement with the others on shared ranking tasks is below min_agreement are
    left out like the excluded ones; who they were is kept with the run (`below_agreement`)."""
    if selection.min_agreement is None:
        return selection
    threshold = selection.min_agreement / 100
    per_labeler = stats.ranking_agreement(session, project_id).per_labeler
    low = sorted(uid for uid, s in per_labeler.items() if s.rate is not None and s.rate < threshold)
    excluded = sorted(set(selection.exclude_labelers) | set(low))
    return selection.model_copy(update={"exclude_labelers": excluded, "below_agreement": low})


def training_examples(
    session: Session, project_id: int, kind: RunKind, splits: list[Split], excluded: list[int] | None = None
) -> int:
    """Accepted demonstrations (sft) or rankings (reward) on these splits of the project, leaving
    out the excluded labelers."""
    if kind == RunKind.sft:
        stmt = (
            select(func.count(Demonstration.id))
            .join(Prompt, Prompt.id == Demonstration.prompt_id)
            .where(
                Prompt.project_id == project_id,
                Prompt.split.in_(splits),
                Demonstration.review != ReviewStatus.rejected,
            )
        )
        if excluded:
            stmt = stmt.where(Demonstration.user_id.not_in(excluded))
    else:
        stmt = (
            select(func.count(Ranking.id))
            .join(Task, Task.id == Ranking.task_id)
            .join(Prompt, Prompt.id == Task.prompt_id)
            .where(Task.project_id == project_id, Prompt.split.in_(splits), Ranking.review != ReviewStatus.rejected)
        )
        if excluded:
            stmt = stmt.where(Ranking.user_id.not_in(excluded))
        # Imported pairs (hh-rlhf, TRL preference files) train a reward model too (worker.snapshots).
        pairs = (
            select(func.count(Comparison.id))
            .join(Task, Task.id == Comparison.task_id)
            .join(Prompt, Prompt.id == Task.prompt_id)
            .where(
                Task.project_id == project_id,
                Prompt.split.in_(splits),
                Comparison.user_id.is_(None),
                Comparison.choice != ComparisonChoice.tie,
                Comparison.review != ReviewStatus.rejected,
            )
        )
        return int(session.scalar(stmt) or 0) + int(session.scalar(pairs) or 0)
    return int(session.scalar(stmt) or 0)


def _check_data(session: Session, project: Project, kind: RunKind, config: Any, selection: DataFilter) -> None:
    """Refuses a run that would find no data (the worker re-checks on its snapshot)."""
    excluded = selection.exclude_labelers
    splits = [Split(s) for s in selection.splits]
    if kind == RunKind.sft:
        if not training_examples(session, project.id, kind, splits, excluded):
            raise ServiceError(
                f"Project {project.name!r} has no accepted demonstrations on the "
                f"{'/'.join(splits)} prompts yet: collect demonstrations before an SFT run."
            )
    elif kind == RunKind.reward:
        if not training_examples(session, project.id, kind, splits, excluded):
            raise ServiceError(
                f"Project {project.name!r} has no rankings or imported pairs on the {'/'.join(splits)} prompts yet: "
                "run `generate` and collect rankings before a reward run."
            )
    else:
        split = Split(getattr(config, "split", "train")) if kind != RunKind.ppo else None
        stmt = select(func.count(Prompt.id)).where(Prompt.project_id == project.id)
        stmt = stmt.where(Prompt.split == split) if split else stmt.where(Prompt.split.in_(splits))
        if not session.scalar(stmt):
            where = split.value if split else "/".join(splits)
            raise ServiceError(
                f"Project {project.name!r} has no {where} prompts: import prompts before a {kind.value} run."
            )


def find_run(session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def get_run(session: Session, run_id: int) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"Run {run_id} does not exist.")
    return run


def list_runs(
    session: Session,
    *,
    project_id: int | None = None,
    status: RunStatus | None = None,
    kind: RunKind | None = None,
    limit: int = 100,
) -> list[TrainingRun]:
    stmt = select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)
    if project_id is not None:
        stmt = stmt.where(TrainingRun.project_id == project_id)
    if status is not None:
        stmt = stmt.where(TrainingRun.status == status)
    if kind is not None:
        stmt = stmt.where(TrainingRun.kind == kind)
    return list(session.scalars(stmt))


def status_counts(session: Session) -> dict[str, int]:
    """How many runs are in each status (every status named, zeros included)."""
    counts = dict(session.execute(select(TrainingRun.status, func.count()).group_by(TrainingRun.status)).all())
    return {status.value: counts.get(status, 0) for status in RunStatus}


def timing(run: TrainingRun, now: datetime | None = None) -> dict[str, float | None]:
    """Seconds this attempt has run, and an estimate of the seconds left from its pace so far, the
    part of a step done counted (None until some work is done). The pace is taken from when the
    work began (record_progress), so the models' loading does not count as work; until the work
    has moved on from there, from the attempt's start."""
    if run.status != RunStatus.running or not run.attempt_log:
        return {"elapsed_s": None, "eta_s": None}
    attempt = run.attempt_log[-1]
    now = now or utcnow()
    elapsed = (now - datetime.fromisoformat(attempt["started_at"])).total_seconds()
    position = run.progress_step + (run.progress_partial or 0.0)
    left = run.progress_total - position
    since, done = elapsed, position - int(attempt.get("from_step", 0))
    if "work_started_at" in attempt and position > attempt.get("work_from", position):
        since = (now - datetime.fromisoformat(attempt["work_started_at"])).total_seconds()
        done = position - attempt["work_from"]
    eta = since / done * left if done > 0 and run.progress_total else None
    return {"elapsed_s": elapsed, "eta_s": eta}


def produced_version_ids(session: Session, run_ids: list[int]) -> dict[int, list[int]]:
    """The model versions each run produced, for many runs in one query."""
    produced: dict[int, list[int]] = {run_id: [] for run_id in run_ids}
    if run_ids:
        for version_id, run_id in session.execute(
            select(ModelVersion.id, ModelVersion.run_id)
            .where(ModelVersion.run_id.in_(run_ids))
            .order_by(ModelVersion.id)
        ):
            produced[run_id or 0].append(version_id)
    return produced


def metric_series(session: Session, run_id: int, *, max_points: int) -> dict[str, list[tuple[float, float]]]:
    """Every metric of a run as (step, value) points; longer series are thinned evenly to max_points
    (the last point is always kept)."""
    rows = session.execute(
        select(RunMetric.name, RunMetric.step, RunMetric.value)
        .where(RunMetric.run_id == run_id)
        .order_by(RunMetric.name, RunMetric.step, RunMetric.id)
    )
    series: dict[str, list[tuple[float, float]]] = {}
    for name, step, value in rows:
        series.setdefault(name, []).append((step, value))
    for name, points in series.items():
        if len(points) > max_points:
            stride = len(points) / max_points
            series[name] = [points[int(i * stride)] for i in range(max_points)] + [points[-1]]
    return series


@atomic
def cancel_run(session: Session, run_id: int, *, by: User | None = None) -> TrainingRun:
    """queued -> cancelled at once; running -> cancel_requested (the worker stops within seconds).

    The row is locked and read afresh (FOR UPDATE on Postgres, the writer lock on SQLite): a worker
    claiming the run at the same moment must not have its 'running' overwritten with 'cancelled'."""
    run = session.get(TrainingRun, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise NotFound(f"Run {run_id} does not exist.")
    if run.status == RunStatus.queued:
        run.status = RunStatus.cancelled
        run.finished_at = utcnow()
        run.error = f"Cancelled{f' by {by.email}' if by else ''} before a worker started it."
    elif run.status == RunStatus.running:
        run.cancel_requested = True
    else:
        raise Conflict(f"Run {run.id} already {run.status.value}; only queued or running runs can be cancelled.")
    return run


def metrics(
    session: Session, run_id: int, *, name: str | None = None, since_step: int | None = None, limit: int = 10000
) -> list[RunMetric]:
    get_run(session, run_id)
    stmt = select(RunMetric).where(RunMetric.run_id == run_id).order_by(RunMetric.step, RunMetric.id).limit(limit)
    if name is not None:
        stmt = stmt.where(RunMetric.name == name)
    if since_step is not None:
        stmt = stmt.where(RunMetric.step > since_step)
    return list(session.scalars(stmt))


def latest_metrics(session: Session, run_id: int) -> dict[str, dict[str, float]]:
    """The last value of every metric of a run: {name: {"step": s, "value": v}}."""
    last = (
        select(RunMetric.name, func.max(RunMetric.step).label("step"))
        .where(RunMetric.run_id == run_id)
        .group_by(RunMetric.name)
        .subquery()
    )
    rows = session.execute(
        select(RunMetric.name, RunMetric.step, RunMetric.value)
        .join(last, (RunMetric.name == last.c.name) & (RunMetric.step == last.c.step))
        .where(RunMetric.run_id == run_id)
        .order_by(RunMetric.id)
    ).all()
    return {name: {"step": step, "value": value} for name, step, value in rows}


# ---- the worker's side --------------------------------------------------------------------------


def claim_next_run(session: Session, worker_id: str) -> TrainingRun | None:
    """The oldest queued run, now running for this worker; None when the queue is empty.

    Commit right away: on Postgres the row lock of SKIP LOCKED lets other workers pass over this
    run, on SQLite the writer lock (`lock_writes`) serializes claims."""
    lock_writes(session)
    stmt = skip_locked(
        select(TrainingRun)
        .where(TrainingRun.status == RunStatus.queued)
        .order_by(TrainingRun.created_at, TrainingRun.id)
        .limit(1),
        session,
    )
    run = session.scalar(stmt)
    if run is None:
        return None
    now = utcnow()
    run.status = RunStatus.running
    run.worker_id = worker_id[:200]
    run.started_at = run.started_at or now
    run.heartbeat_at = now
    run.attempts += 1
    entry = {
        "attempt": run.attempts,
        "worker": run.worker_id,
        "started_at": now.isoformat(timespec="seconds"),
        "from_step": run.progress_step,
    }
    run.phase, run.progress_partial = "starting", None
    run.attempt_log = [*(run.attempt_log or []), entry]
    session.flush()
    return run


def start_attempt_at(session: Session, run_id: int, worker_id: str, step: int | None) -> bool:
    """The attempt goes on from the checkpoint of `step` (None: from the start, no checkpoint). The
    previous attempt may have gone beyond its newest checkpoint before it died: those steps are done
    again, so their metrics are dropped (else each appears twice) and the attempt log names the step
    it really goes on from, not the last one reported. False when the run is not this worker's."""
    run = _owned(session, run_id, worker_id)
    if run is None:
        return False
    start = step or 0
    redone = delete(RunMetric).where(RunMetric.run_id == run_id)
    if step is not None:  # the checkpoint's own step was recorded before it was saved
        redone = redone.where(RunMetric.step > step)
    session.execute(redone)
    log = [dict(entry) for entry in run.attempt_log or []]
    if log and "ended_at" not in log[-1]:
        log[-1]["from_step"] = start
        run.attempt_log = log
    run.progress_step = start
    return True


def _owned(session: Session, run_id: int, worker_id: str) -> TrainingRun | None:
    run = session.get(TrainingRun, run_id)
    if run is None or run.status != RunStatus.running or run.worker_id != worker_id:
        return None
    return run


def heartbeat(session: Session, run_id: int, worker_id: str) -> str:
    """Marks the worker alive. Returns "ok", "cancel" (an admin asked to stop) or "lost" (the run is
    no longer this worker's: reaped, deleted, or finished elsewhere)."""
    run = _owned(session, run_id, worker_id)
    if run is None:
        return "lost"
    run.heartbeat_at = utcnow()
    return "cancel" if run.cancel_requested else "ok"


def record_progress(
    session: Session,
    run_id: int,
    worker_id: str,
    step: int,
    total: int,
    phase: str | None = None,
    partial: float | None = None,
) -> bool:
    """The run's steps done of `total`, what it does now, and `partial`: work done beyond `step`, in
    steps (None: whole steps only). The first progress with a total in an attempt marks where its
    work began (after loading the models), which the time left is paced from."""
    run = _owned(session, run_id, worker_id)
    if run is None:
        return False
    run.progress_step = int(step)
    run.progress_total = int(total)
    run.progress_partial = partial
    if phase is not None:
        run.phase = phase[:40]
    run.heartbeat_at = utcnow()
    attempt = (run.attempt_log or [{}])[-1]
    if total and "work_started_at" not in attempt and "ended_at" not in attempt and run.attempt_log:
        attempt = {**attempt, "work_started_at": run.heartbeat_at.isoformat(), "work_from": step + (partial or 0.0)}
        run.attempt_log = [*run.attempt_log[:-1], attempt]
    return True


def record_metrics(session: Session, run_id: int, step: int, values: dict[str, float]) -> int:
    """Bulk-inserts one RunMetric row per finite value; returns how many were written."""
    now = utcnow()
    rows = []
    for name, value in values.items():
        value = float(value)
        if value != value or abs(value) == float("inf"):
            continue  # NaN/inf: the algorithm raises TrainingDiverged; a metric row can't hold it portably
        rows.append({"run_id": run_id, "step": int(step), "name": str(name)[:100], "value": value, "created_at": now})
    if rows:
        session.execute(insert(RunMetric), rows)
    return len(rows)


def set_snapshot(session: Session, run_id: int, worker_id: str, snapshot: dict[str, Any]) -> None:
    run = _owned(session, run_id, worker_id)
    if run is not None:
        run.dataset_snapshot = snapshot


def finish_run(
    session: Session,
    run_id: int,
    worker_id: str,
    status: RunStatus,
    *,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """running -> succeeded / failed / cancelled, only for the worker that holds the run."""
    if status not in FINAL:
        raise ValueError(f"finish_run needs a final status, got {status}")
    run = _owned(session, run_id, worker_id)
    if run is None:
        return False
    _end_attempt(run, status.value)
    run.status = status
    run.phase, run.progress_partial = None, None
    run.finished_at = utcnow()
    run.heartbeat_at = run.finished_at
    if summary is not None:
        run.summary = summary
    if error is not None:
        run.error = error
    if status == RunStatus.succeeded and run.progress_total:
        run.progress_step = run.progress_total
    return True


def reap_stale_runs(session: Session, stale_s: float) -> dict[int, RunStatus]:
    """Every running run whose heartbeat is older than `stale_s` seconds: queued again while it has
    attempts left (the next worker resumes it from its newest checkpoint), else failed; cancelled
    when an admin asked to cancel it. Returns {run id: its new status}."""
    cutoff = utcnow() - timedelta(seconds=stale_s)
    stmt = skip_locked(
        select(TrainingRun).where(TrainingRun.status == RunStatus.running, TrainingRun.heartbeat_at < cutoff),
        session,
    )
    reaped = {}
    for run in session.scalars(stmt):
        why = (
            f"no heartbeat from worker {run.worker_id!r} since {run.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC "
            f"(more than {stale_s:g} s)"
        )
        reaped[run.id] = _retry_or_end(run, "worker vanished", why, RunStatus.failed)
    return reaped


def release_run(session: Session, run_id: int, worker_id: str, why: str) -> RunStatus | None:
    """The worker holding the run is shutting down (SIGTERM) before the run ended: the run is queued
    again while it has attempts left and no cancel was asked, else cancelled. None when the run is not
    this worker's."""
    run = _owned(session, run_id, worker_id)
    if run is None:
        return None
    return _retry_or_end(run, "worker stopped", why, RunStatus.cancelled)


RESUMABLE = (RunKind.sft, RunKind.reward, RunKind.ppo, RunKind.generate)
"""Run kinds that go on where an earlier attempt stopped: the trainings from their checkpoints,
`generate` with the prompts that have no ranking task yet (new_prompts_only, its default). An
`evaluate` run is not retried: a second attempt would pose the same comparisons again."""


def _retry_or_end(run: TrainingRun, outcome: str, why: str, final: RunStatus) -> RunStatus:
    _end_attempt(run, outcome)
    run.phase, run.progress_partial = None, None
    if run.cancel_requested:  # an admin's cancel wins: a run asked to stop is never queued again
        run.status, run.finished_at = RunStatus.cancelled, utcnow()
        run.error = (
            f"Cancelled: an admin asked to stop it, and then its attempt {run.attempts} ended: {outcome} ({why})."
        )
    elif run.kind in RESUMABLE and run.attempts < run.max_attempts:
        run.status, run.worker_id, run.heartbeat_at = RunStatus.queued, None, None
        run.error = (
            f"Attempt {run.attempts} of {run.max_attempts}: {outcome} ({why}). Queued again: the next "
            "attempt resumes from the newest checkpoint."
        )
    else:
        run.status, run.finished_at = final, utcnow()
        run.error = (
            f"Attempt {run.attempts} of {run.max_attempts}: {outcome} ({why}). No attempts left; start the run "
            "again to redo it."
        )
    return run.status


def _end_attempt(run: TrainingRun, outcome: str) -> None:
    """Closes the current entry of the run's attempt log."""
    log = [dict(entry) for entry in run.attempt_log or []]
    if log and "ended_at" not in log[-1]:
        log[-1].update(ended_at=utcnow().isoformat(timespec="seconds"), outcome=outcome)
        run.attempt_log = log


def delete_run(session: Session, run_id: int) -> TrainingRun:
    """Deletes an ended run's record (its metrics with it). Refused while it is queued or running, and
    while model versions it made exist (delete those first: the registry names their run)."""
    run = get_run(session, run_id)
    if run.status not in FINAL:
        raise Conflict(f"Run #{run_id} is {run.status.value}; cancel it first.")
    made = [v.id for v in registry.produced_by(session, run_id) if v.deleted_at is None]
    if made:
        raise Conflict(f"Run #{run_id} made model version(s) {made}; delete them first (their lineage names this run).")
    session.execute(delete(TrainingRun).where(TrainingRun.id == run_id).execution_options(synchronize_session=False))
    session.expunge(run)
    return run


# -- the tasks a run or a model version made ---------------------------------------------------------


def run_open_tasks(session: Session, run_id: int) -> tasks.OpenTasks:
    return tasks.open_tasks(session, tasks.of_run(run_id))


TASK_MAKING_KINDS = (RunKind.generate, RunKind.evaluate)
"""The run kinds that make tasks (the run page offers the withdrawal for these only)."""


@atomic
def withdraw_run_tasks(session: Session, run_id: int) -> tasks.Withdrawn:
    """Withdraws the open tasks an ended run made (a cancelled or failed generate run's earlier
    batches, an evaluation no longer wanted); refused while the run still makes tasks."""
    run = session.get(TrainingRun, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise NotFound(f"Run {run_id} does not exist.")
    if run.project_id is not None:
        projects.check_writable(projects.get_project(session, run.project_id))
    if run.kind not in TASK_MAKING_KINDS:
        raise ServiceError(f"Run {run.id} is a {run.kind.value} run; only generate and evaluate runs make tasks.")
    if run.status not in FINAL:
        raise Conflict(f"Run #{run_id} is {run.status.value} and may still make tasks: cancel it first, then withdraw.")
    return tasks.withdraw_open(session, tasks.of_run(run_id))


def version_open_tasks(session: Session, version_id: int) -> tasks.OpenTasks:
    return tasks.open_tasks(session, tasks.of_model_version(version_id))


@atomic
def withdraw_version_tasks(session: Session, version_id: int) -> tasks.Withdrawn:
    """Withdraws the open tasks that show an output of the model version (from whichever run)."""
    registry.get_version(session, version_id)
    return tasks.withdraw_open(session, tasks.of_model_version(version_id))
