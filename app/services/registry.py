"""The model registry: every model the loop knows, where its weights are, and where it came from.

A base version points at a hub id, a local folder or the embedded default; every trained
version (sft, reward, ppo) points at its artifact folder and lists its parent versions, the
run that made it and the run's final metrics, so `lineage()` walks back to the base model
and each run's dataset snapshot names the rows it used."""

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import after_commit, utcnow
from app.models import DatabaseIdentity, ModelKind, ModelVersion, Project, RunStatus, TrainingRun
from app.services import Conflict, NotFound, ServiceError
from app.validation import text_problem


def get_version(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise NotFound(f"Model version {version_id} does not exist.")
    return version


def versions_by_id(session: Session, ids: list[int]) -> dict[int, ModelVersion]:
    return {v.id: v for v in session.scalars(select(ModelVersion).where(ModelVersion.id.in_(ids)))} if ids else {}


def produced_by(session: Session, run_id: int) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).where(ModelVersion.run_id == run_id).order_by(ModelVersion.id)))


def children(session: Session, version_id: int, *, scan: int = 2000) -> list[ModelVersion]:
    """Versions trained from this one (among the oldest `scan` versions: parent ids are a JSON list)."""
    return [
        v
        for v in session.scalars(select(ModelVersion).order_by(ModelVersion.id).limit(scan))
        if version_id in (v.parent_ids or [])
    ]


def list_versions(
    session: Session, *, project_id: int | None = None, kind: ModelKind | None = None, limit: int = 200
) -> list[ModelVersion]:
    stmt = select(ModelVersion).where(ModelVersion.deleted_at.is_(None)).order_by(ModelVersion.id.desc()).limit(limit)
    if project_id is not None:
        # Base versions are shared by every project (project_id None).
        stmt = stmt.where((ModelVersion.project_id == project_id) | ModelVersion.project_id.is_(None))
    if kind is not None:
        stmt = stmt.where(ModelVersion.kind == kind)
    return list(session.scalars(stmt))


def register_base(session: Session, source: str, *, name: str = "", project_id: int | None = None) -> ModelVersion:
    """The base version for a hub id, a local folder or the embedded default's name.

    Registering the same source twice returns the existing version. Whether the source can be
    loaded is checked by the worker (the web app has no model hub access and no torch)."""
    source = source.strip()
    if not source:
        raise ServiceError(
            "A base model needs a source: a hub id (org/name), a local folder, or the default model's name."
        )
    if len(source) > 500:
        raise ServiceError("The model source is longer than 500 characters.")
    for field, value in (("source", source), ("name", name)):
        if problem := text_problem(value):
            raise ServiceError(f"The model {field} {problem}.", status_code=422)
    if project_id is not None and session.get(Project, project_id) is None:
        raise NotFound(f"Project {project_id} does not exist.")
    existing = session.scalar(
        select(ModelVersion)
        .where(
            ModelVersion.kind == ModelKind.base,
            ModelVersion.source == source,
            ModelVersion.deleted_at.is_(None),
            (ModelVersion.project_id == project_id) if project_id is not None else ModelVersion.project_id.is_(None),
        )
        .order_by(ModelVersion.id)
        .limit(1)
    )
    if existing is not None:
        return existing
    version = ModelVersion(
        name=(name.strip() or _short_name(source))[:200],
        kind=ModelKind.base,
        project_id=project_id,
        source=source,
        parent_ids=[],
        metrics={},
    )
    session.add(version)
    session.flush()
    return version


def register_trained(
    session: Session,
    *,
    kind: ModelKind,
    run: TrainingRun,
    artifact_path: Path,
    parent_ids: list[int],
    metrics: dict[str, Any],
    name: str = "",
) -> ModelVersion:
    """A version a run produced: its artifact folder, its parents, its run and final metrics."""
    if kind == ModelKind.base:
        raise ServiceError("Trained versions are sft, reward or ppo; use register_base for base models.")
    for parent_id in parent_ids:
        get_version(session, parent_id)
    version = ModelVersion(
        name=(name or f"{kind.value}-run{run.id}")[:200],
        kind=kind,
        project_id=run.project_id,
        source=str(artifact_path),
        artifact_path=str(artifact_path),
        parent_ids=list(parent_ids),
        run_id=run.id,
        metrics=_plain_metrics(metrics),
    )
    session.add(version)
    session.flush()
    return version


def lineage(session: Session, version_id: int) -> list[ModelVersion]:
    """The version and all its ancestors, nearest first (each once)."""
    seen: dict[int, ModelVersion] = {}
    frontier = [version_id]
    while frontier:
        current = frontier.pop(0)
        if current in seen:
            continue
        version = get_version(session, current)
        seen[current] = version
        frontier.extend(pid for pid in version.parent_ids if pid not in seen)
    return list(seen.values())


@dataclass
class Deleted:
    version_id: int
    tombstone: bool
    """Kept as a row (others name it) rather than removed."""
    folder: Path | None
    """This app's artifact folder of the version, to remove from disk once the deletion is committed."""
    named_by: list[str]


def delete_version(session: Session, version_id: int, artifacts_dir: Path) -> Deleted:
    """Deletes a model version. Refused while a queued or running run uses it. When other versions
    descend from it or runs used it, its row stays as a tombstone (lineage stays readable); else
    the row goes. Its files go too when they are this app's artifacts (a base model's own folder or
    hub id is not ours to remove), once the deletion has committed (`after_commit`): a rolled-back
    deletion leaves them."""
    version = get_version(session, version_id)
    if version.deleted_at is not None:
        raise Conflict(f"Model version {version_id} is already deleted.")
    runs_using = [
        r
        for r in session.scalars(select(TrainingRun).order_by(TrainingRun.id))
        if version_id in (r.input_model_ids or [])
    ]
    active = [r for r in runs_using if r.status in (RunStatus.queued, RunStatus.running)]
    if active:
        raise Conflict(
            f"Run #{active[0].id} ({active[0].status.value}) uses model version {version_id}; "
            "cancel it or wait for it to end, then delete the version."
        )
    named_by = [f"model version {v.id}" for v in children(session, version_id)] + [f"run #{r.id}" for r in runs_using]
    folder = _own_folder(version, artifacts_dir)
    if named_by:
        version.deleted_at, version.artifact_path = utcnow(), None
    else:
        session.delete(version)
    session.flush()
    if folder is not None:
        after_commit(session, lambda: shutil.rmtree(folder, ignore_errors=True))
    return Deleted(version_id, bool(named_by), folder, named_by)


def _own_folder(version: ModelVersion, artifacts_dir: Path) -> Path | None:
    if not version.artifact_path:
        return None
    folder, root = Path(version.artifact_path).resolve(), Path(artifacts_dir).resolve()
    return folder if folder != root and folder.is_relative_to(root) else None


def weights_location(version: ModelVersion) -> str:
    """What the worker loads: the artifact folder of a trained version, the source of a base one."""
    return version.artifact_path or version.source


def _short_name(source: str) -> str:
    return Path(source.rstrip("/")).name or source


def _plain_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe final metrics: numbers, strings, bools and nested plain values only."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, (bool, int, str)) or value is None:
            out[str(key)] = value
        elif isinstance(value, float):
            out[str(key)] = value if value == value and abs(value) != float("inf") else None
        elif isinstance(value, (list, tuple)) and all(isinstance(v, (int, float, str, bool)) for v in value):
            out[str(key)] = list(value)
        elif isinstance(value, dict):
            out[str(key)] = _plain_metrics(value)
        elif hasattr(value, "item"):  # a 0-d tensor or numpy scalar
            out[str(key)] = value.item()
    return out


def database_id(session: Session) -> str:
    """This database's random id (made on first use; see DatabaseIdentity)."""
    found = session.scalar(select(DatabaseIdentity.database_id).where(DatabaseIdentity.id == 1))
    if found is not None:
        return found
    try:
        with session.begin_nested():
            session.add(DatabaseIdentity(id=1, database_id=uuid.uuid4().hex))
    except IntegrityError:  # another process made it first
        pass
    return session.scalars(select(DatabaseIdentity.database_id).where(DatabaseIdentity.id == 1)).one()
