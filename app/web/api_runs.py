"""JSON API for training runs, the model registry and evaluation results (bearer tokens), for
admins (a labeler's pages show none of it).

    POST /api/v1/runs                          admin: queue a run       201
    GET  /api/v1/runs?project_id&status&kind   list runs
    GET  /api/v1/runs/{id}                     a run with its latest metrics
    POST /api/v1/runs/{id}/cancel              admin: cancel            200 | 409 when already finished
    POST /api/v1/runs/{id}/withdraw-tasks      admin: withdraw the open tasks an ended generate/evaluate run made
    GET  /api/v1/runs/{id}/metrics?name&since_step
    GET  /api/v1/runs/{id}/evaluation          win rates of an evaluate run (labelers, reward model)
    GET  /api/v1/run-configs                   every run kind's settings with their defaults
    GET  /api/v1/model-versions?project_id&kind
    GET  /api/v1/model-versions/{id}           a version with its lineage
    POST /api/v1/model-versions                admin: register a base model (hub id, folder, default)
    POST /api/v1/model-versions/{id}/withdraw-tasks   admin: withdraw the open tasks showing its outputs

Thin handlers: the rules live in app.services.runs, registry and evaluation."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.deps import ApiAdmin, SessionDep, SessionRoute, SettingsDep
from app.models import ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun
from app.services import evaluation, registry, runs, tasks
from app.web.params import DB_INT_MAX, Id, IdPath, IdQuery
from runconfig import RUN_CONFIGS

router = APIRouter(route_class=SessionRoute, prefix="/api/v1", tags=["runs"])


# -- schemas ----------------------------------------------------------------------------------


class RunIn(BaseModel):
    project_id: Id
    kind: RunKind
    config: dict[str, Any] = Field(default_factory=dict, description="Settings of the run kind; see /run-configs.")
    max_attempts: int = Field(
        3, ge=1, le=10, description="Attempts before the run fails when its worker vanishes or is stopped."
    )
    input_model_ids: list[Id] = Field(
        default_factory=list,
        max_length=3,
        description=(
            "sft/reward/generate: [model] (empty: the default model); ppo: [sft, reward]; "
            "evaluate: [candidate, baseline] or [candidate, baseline, reward]."
        ),
    )
    data_filter: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "exclude_labelers: [user ids]; min_agreement: a percentage (labelers below it on shared ranking tasks "
            "are left out too); splits: training splits (default [train]); valid_splits (default [valid])."
        ),
    )


class RunOut(BaseModel):
    id: int
    project_id: int | None
    kind: RunKind
    status: RunStatus
    config: dict[str, Any]
    input_model_ids: list[int]
    data_filter: dict[str, Any]
    dataset_snapshot: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker_id: str | None
    heartbeat_at: datetime | None
    progress_step: int
    progress_total: int
    progress_partial: float | None = Field(
        description="Work done beyond progress_step, in steps (PPO: the share of the step's rollout and epochs "
        "done); null when the run reports whole steps only."
    )
    cancel_requested: bool
    error: str | None
    summary: dict[str, Any]
    phase: str | None = Field(description="What the worker is doing now (loading models, rolling out, ...).")
    elapsed_s: float | None = Field(description="Seconds the current attempt has run.")
    eta_s: float | None = Field(description="Estimated seconds left, from the current attempt's pace.")
    attempts: int = Field(description="How many times a worker has claimed the run.")
    max_attempts: int
    attempt_log: list[dict[str, Any]] = Field(description="Per attempt: worker, started_at, ended_at, outcome.")
    model_version_ids: list[int] = Field(description="Model versions this run produced.")
    latest_metrics: dict[str, dict[str, float]] | None = None


class MetricOut(BaseModel):
    step: int
    name: str
    value: float


class VersionIn(BaseModel):
    source: str = Field(description="A hub id (org/name), a local folder the worker can read, or the default's name.")
    name: str = ""
    project_id: Id | None = None


class VersionOut(BaseModel):
    id: int
    name: str
    kind: ModelKind
    project_id: int | None
    source: str
    artifact_path: str | None
    parent_ids: list[int]
    run_id: int | None
    metrics: dict[str, Any]
    created_at: datetime
    lineage: list[int] | None = Field(default=None, description="This version and its ancestors, nearest first.")


def _run_out(run: TrainingRun, produced: list[int], latest: dict[str, dict[str, float]] | None = None) -> RunOut:
    return RunOut(
        id=run.id,
        project_id=run.project_id,
        kind=run.kind,
        status=run.status,
        config=run.config or {},
        input_model_ids=run.input_model_ids or [],
        data_filter=run.data_filter or {},
        dataset_snapshot=run.dataset_snapshot,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        worker_id=run.worker_id,
        heartbeat_at=run.heartbeat_at,
        progress_step=run.progress_step,
        progress_total=run.progress_total,
        progress_partial=run.progress_partial,
        cancel_requested=run.cancel_requested,
        error=run.error,
        summary=run.summary or {},
        model_version_ids=produced,
        latest_metrics=latest,
        phase=run.phase,
        **runs.timing(run),
        attempts=run.attempts,
        max_attempts=run.max_attempts,
        attempt_log=run.attempt_log or [],
    )


def _runs_out(session: SessionDep, listed: list[TrainingRun]) -> list[RunOut]:
    produced = runs.produced_version_ids(session, [run.id for run in listed])
    return [_run_out(run, produced[run.id]) for run in listed]


def _one_run_out(session: SessionDep, run: TrainingRun, *, with_metrics: bool = False) -> RunOut:
    latest = runs.latest_metrics(session, run.id) if with_metrics else None
    return _run_out(run, runs.produced_version_ids(session, [run.id])[run.id], latest)


def _version_out(version: ModelVersion, lineage: list[int] | None = None) -> VersionOut:
    return VersionOut(
        id=version.id,
        name=version.name,
        kind=version.kind,
        project_id=version.project_id,
        source=version.source,
        artifact_path=version.artifact_path,
        parent_ids=version.parent_ids or [],
        run_id=version.run_id,
        metrics=version.metrics or {},
        created_at=version.created_at,
        lineage=lineage,
    )


# -- runs ---------------------------------------------------------------------------------------


@router.post("/runs", response_model=RunOut, status_code=201)
def create_run(body: RunIn, session: SessionDep, settings: SettingsDep, user: ApiAdmin):
    run = runs.create_run(
        session,
        project_id=body.project_id,
        kind=body.kind.value,
        config=body.config,
        input_model_ids=body.input_model_ids,
        data_filter=body.data_filter,
        created_by=user,
        default_model=settings.default_model,
        max_attempts=body.max_attempts,
    )
    return _one_run_out(session, run)


@router.get("/runs", response_model=list[RunOut])
def list_runs(
    session: SessionDep,
    user: ApiAdmin,
    project_id: IdQuery = None,
    status: RunStatus | None = None,
    kind: RunKind | None = None,
    limit: int = Query(100, ge=1, le=500),
):
    return _runs_out(session, runs.list_runs(session, project_id=project_id, status=status, kind=kind, limit=limit))


@router.get("/runs/{run_id}", response_model=RunOut)
def read_run(run_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _one_run_out(session, runs.get_run(session, run_id), with_metrics=True)


@router.delete("/runs/{run_id}", status_code=204)
def delete_run(run_id: IdPath, session: SessionDep, user: ApiAdmin) -> None:
    """Deletes an ended run's record and metrics (409 while it runs, or while models it made exist)."""
    runs.delete_run(session, run_id)


@router.post("/runs/{run_id}/cancel", response_model=RunOut)
def cancel_run(run_id: IdPath, session: SessionDep, user: ApiAdmin):
    return _one_run_out(session, runs.cancel_run(session, run_id, by=user))


class WithdrawnOut(BaseModel):
    withdrawn: int = Field(description="Open tasks taken out of the labelers' queues: deleted + closed.")
    deleted: int = Field(description="Nobody had answered them: deleted, with their leases and drafts.")
    closed: int = Field(description="They had answers or an open flag: closed, what was submitted kept.")


def _withdrawn_out(withdrawn: tasks.Withdrawn) -> WithdrawnOut:
    return WithdrawnOut(withdrawn=withdrawn.total, deleted=withdrawn.deleted, closed=withdrawn.closed)


@router.post("/runs/{run_id}/withdraw-tasks", response_model=WithdrawnOut)
def withdraw_run_tasks(run_id: IdPath, session: SessionDep, user: ApiAdmin):
    """Withdraws the open tasks an ended generate or evaluate run made, as the run page's button
    does: 409 while the run may still make tasks (cancel it first) or on an archived project, 400 for
    a run of a kind that makes no tasks."""
    return _withdrawn_out(runs.withdraw_run_tasks(session, run_id))


@router.get("/runs/{run_id}/metrics", response_model=list[MetricOut])
def run_metrics(
    run_id: IdPath,
    session: SessionDep,
    user: ApiAdmin,
    name: str | None = None,
    since_step: Annotated[int | None, Query(ge=0, le=DB_INT_MAX)] = None,
    limit: int = Query(10000, ge=1, le=100000),
):
    rows = runs.metrics(session, run_id, name=name, since_step=since_step, limit=limit)
    return [MetricOut(step=m.step, name=m.name, value=m.value) for m in rows]


@router.get("/runs/{run_id}/evaluation")
def run_evaluation(run_id: IdPath, session: SessionDep, user: ApiAdmin) -> dict[str, Any]:
    return evaluation.evaluation_report(session, run_id)


@router.get("/run-configs")
def run_configs(user: ApiAdmin) -> dict[str, dict[str, Any]]:
    return {kind: cls().model_dump() for kind, cls in sorted(RUN_CONFIGS.items())}


# -- model versions -----------------------------------------------------------------------------


@router.get("/model-versions", response_model=list[VersionOut])
def list_versions(
    session: SessionDep,
    user: ApiAdmin,
    project_id: IdQuery = None,
    kind: ModelKind | None = None,
    limit: int = Query(200, ge=1, le=1000),
):
    return [_version_out(v) for v in registry.list_versions(session, project_id=project_id, kind=kind, limit=limit)]


@router.get("/model-versions/{version_id}", response_model=VersionOut)
def read_version(version_id: IdPath, session: SessionDep, user: ApiAdmin):
    chain = registry.lineage(session, version_id)
    return _version_out(chain[0], [v.id for v in chain])


@router.post("/model-versions/{version_id}/withdraw-tasks", response_model=WithdrawnOut)
def withdraw_version_tasks(version_id: IdPath, session: SessionDep, user: ApiAdmin):
    """Withdraws the open tasks that show an output of the model version (from whichever run), as the
    model page's button does; 409 when one of them is in an archived project."""
    return _withdrawn_out(runs.withdraw_version_tasks(session, version_id))


class DeletedOut(BaseModel):
    id: int
    tombstone: bool = Field(description="Kept as a deleted row because other versions or runs name it.")
    named_by: list[str]
    files_removed: bool


@router.delete("/model-versions/{version_id}", response_model=DeletedOut)
def delete_version(version_id: IdPath, session: SessionDep, settings: SettingsDep, user: ApiAdmin):
    """Deletes a model version and its files (409 while a queued or running run uses it)."""
    deleted = registry.delete_version(session, version_id, settings.artifacts_dir)
    return DeletedOut(
        id=version_id, tombstone=deleted.tombstone, named_by=deleted.named_by, files_removed=deleted.folder is not None
    )


@router.post("/model-versions", response_model=VersionOut, status_code=201)
def register_base(body: VersionIn, session: SessionDep, user: ApiAdmin):
    return _version_out(registry.register_base(session, body.source, name=body.name, project_id=body.project_id))
