"""Admin pages: start runs (a form per kind from runconfig, with data filters), watch them
live (htmx polling, SVG plots), cancel; the model registry with its lineage graph and evaluations."""

import dataclasses
import typing
from functools import cache
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from pydantic import BeforeValidator, ConfigDict, Field

from app.deps import AdminUser, SessionDep, SessionRoute, SettingsDep, verify_csrf
from app.models import ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun
from app.services import ServiceError, accounts, estimates, evaluation, projects, registry, runs
from app.web.admin_charts import MODEL_COLORS, headline_metrics, line_chart, lineage_graph
from app.web.params import BackForm, Id, IdFilter, IdPath, IdsQuery
from app.web.render import flash, redirect, refused, render
from runconfig import PRESET_TITLES, PRESETS, RUN_CONFIGS

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)
KIND_TITLES = {
    "sft": "Supervised fine-tuning on demonstrations",
    "reward": "Reward model on rankings",
    "ppo": "PPO against the reward model",
    "generate": "Generate outputs → ranking tasks",
    "evaluate": "Evaluate two models (A/B tasks)",
}
PLOT_FIRST = ["train_loss", "loss", "valid_loss", "accuracy", "valid_accuracy", "reward", "kl", "win_rate"]
"""Metrics plotted first on a run page (the ones an admin looks at); the others follow by name."""


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


Percent = Annotated[float, Field(ge=0, le=100)]

DEFAULTS = "defaults"
"""The run form's settings as the run kind's config model sets them (a preset name for the links)."""
MAX_POINTS = 400
"""Points per plotted metric; longer series are thinned evenly (the last point is always kept)."""


# ---------------------------------------------------------------- run forms from runconfig


@dataclasses.dataclass
class ConfigField:
    name: str
    type: str
    default: typing.Any
    doc: str


@cache
def config_fields(kind: str) -> tuple[str, list[ConfigField]]:
    """The run kind's description and its settings, with the docs written under each field."""
    cls = RUN_CONFIGS[kind]
    fields = [
        ConfigField(
            name,
            getattr(info.annotation, "__name__", str(info.annotation)),
            info.default,
            " ".join((info.description or "").split()),
        )
        for name, info in cls.model_fields.items()
    ]
    return " ".join((cls.__doc__ or "").split()), fields


class RunForm(BackForm):
    """The run form: fixed fields typed here; the kind's settings come as `cfg_<name>` fields, typed by
    the kind's config model (runconfig), so they are extra fields read by `config()`."""

    model_config = ConfigDict(extra="allow")

    kind: str = ""
    project_id: Id | None = None
    model_0: str = ""
    model_1: str = ""
    model_2: str = ""
    splits: list[str] = []
    exclude: list[Id] = []
    min_agreement: float | None = None

    def check_kind(self) -> str:
        if self.kind not in KIND_TITLES:
            raise ServiceError(f"Unknown run kind {self.kind!r}.")
        return self.kind

    def setting(self, name: str) -> str:
        value = (self.model_extra or {}).get(f"cfg_{name}", "")
        return value.strip() if isinstance(value, str) else ""

    def config(self) -> dict[str, typing.Any]:
        """Only the settings the admin changed from the defaults, typed as the config model says."""
        values: dict[str, typing.Any] = {}
        problems: list[str] = []
        for f in config_fields(self.check_kind())[1]:
            value: bool | int | float | str
            raw = self.setting(f.name)
            if f.type == "bool":
                value = raw == "on"
            elif raw == "":
                continue
            else:
                try:
                    value = int(raw) if f.type == "int" else float(raw) if f.type == "float" else raw
                except ValueError:
                    what = "a whole number" if f.type == "int" else "a number"
                    problems.append(f"{f.name} must be {what}; got {raw!r}.")
                    continue
            if value != f.default:
                values[f.name] = value
        if problems:
            raise ServiceError(" ".join(problems), status_code=422)
        return values

    def model_ids(self) -> list[int]:
        ids = []
        for value in (self.model_0, self.model_1, self.model_2):
            if value.isdecimal() and len(value) < 10:
                ids.append(int(value))
            elif value and value != "default":
                raise ServiceError("Pick a model version from the list.")
        return ids

    def data_filter(self) -> dict[str, typing.Any]:
        data_filter: dict[str, typing.Any] = {"exclude_labelers": sorted(set(self.exclude))} if self.exclude else {}
        if self.min_agreement is not None:
            data_filter["min_agreement"] = self.min_agreement
        if self.splits and self.splits != ["train"]:
            data_filter["splits"] = self.splits
        return data_filter

    def shown(self) -> dict[str, typing.Any]:
        """The values as the form shows them again (templates/admin/run_new.html)."""
        return {**self.model_dump(exclude={"exclude"}), "exclude": [str(u) for u in self.exclude]}


def _model_choices(session, project_id: int | None) -> list[ModelVersion]:
    return (
        registry.list_versions(session, project_id=project_id, limit=200)
        if project_id
        else registry.list_versions(session, limit=200)
    )


def _run_form(
    request,
    session,
    settings,
    kind: str,
    *,
    project_id=None,
    form=None,
    error=None,
    status_code=200,
    preset_models=None,
    preset="",
):
    if kind not in KIND_TITLES:
        kind = "sft"
    doc, fields = config_fields(kind)
    all_projects = projects.project_choices(session)
    if project_id is None and all_projects:
        project_id = all_projects[0].id
    accepted, required = runs.INPUT_MODELS[RunKind(kind)]
    versions = _model_choices(session, project_id)
    slots = [
        {"name": name, "index": i, "required": i < required, "choices": [v for v in versions if v.kind in accepted[i]]}
        for i, name in enumerate(runs.INPUT_NAMES[RunKind(kind)][: len(accepted)])
    ]
    form = form or RunForm(kind=kind, splits=["train"])
    for i, chosen in enumerate((preset_models or [])[: len(slots)]):
        if not getattr(form, f"model_{i}"):
            setattr(form, f"model_{i}", str(chosen))
    for i in range(required):  # a required model's list shows its first choice: the run (and its estimate) takes it
        first = next((v for v in versions if v.kind in accepted[i]), None)
        if first is not None and not getattr(form, f"model_{i}"):
            setattr(form, f"model_{i}", str(first.id))
    labelers = sorted(accounts.list_users(session), key=lambda u: u.email)
    return render(
        request,
        "admin/run_new.html",
        {
            "estimate": _estimate(session, settings, project_id, kind, form),
            "presets": PRESET_TITLES,
            "preset": preset,
            "no_gpu": not estimates.gpu_present(),
            "cpu_bf16": estimates.cpu_has_bf16(),
            "keep": _kept_query(kind, project_id, form),
            "kind": kind,
            "kinds": KIND_TITLES,
            "doc": doc,
            "fields": fields,
            "projects": all_projects,
            "project_id": project_id,
            "slots": slots,
            "labelers": labelers,
            "form": form.shown(),
            "error": error,
            "default_model": settings.default_model,
        },
        status_code=status_code,
    )


def _kept_query(kind: str, project_id: int | None, form: RunForm) -> str:
    """What a preset link keeps of the form: the kind, project, models and data filter (a preset
    changes the settings only)."""
    pairs: list[tuple[str, str]] = [("kind", kind)]
    if project_id:
        pairs.append(("project", str(project_id)))
    pairs += [(f"model_{i}", m) for i, m in enumerate((form.model_0, form.model_1, form.model_2)) if m]
    pairs += [("splits", s) for s in form.splits]
    pairs += [("exclude", str(u)) for u in form.exclude]
    if form.min_agreement is not None:
        pairs.append(("min_agreement", f"{form.min_agreement:g}"))
    return urlencode(pairs)


def _estimate(session: SessionDep, settings, project_id: int | None, kind: str, form: RunForm | None):
    """What the run in the form will do and about how long it takes; None when the form's settings
    are not valid yet (the form says why on submit)."""
    try:
        config = form.config() if form else {}
        ids = form.model_ids() if form else []
        optional_first = runs.INPUT_MODELS[RunKind(kind)][1] == 0  # else the run must name its models
        default = settings.default_model if optional_first else ""
        return estimates.estimate_run(session, project_id, kind, config, input_model_ids=ids, default_model=default)
    except ServiceError:
        return None


@router.post("/runs/estimate")
def run_estimate(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, form: Annotated[RunForm, Form()]
):
    """htmx: the estimate again as the admin changes the form."""
    estimate = _estimate(session, settings, form.project_id, form.check_kind(), form)
    return render(request, "admin/_run_estimate.html", {"estimate": estimate})


@router.get("/runs/new")
def new_run_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: AdminUser,
    kind: str = "sft",
    project: IdFilter = None,
    model: IdFilter = None,
    models: IdsQuery = [],  # noqa: B006 - FastAPI copies the default
    model_0: str = "",
    model_1: str = "",
    model_2: str = "",
    splits: Annotated[list[str], Query()] = [],  # noqa: B006
    exclude: Annotated[list[Id], Query()] = [],  # noqa: B006
    min_agreement: Annotated[Percent | None, BeforeValidator(_blank_is_none), Query()] = None,
    preset: str = "",
    clone: IdFilter = None,
):
    """The run form. A preset fills the settings only: the model(s), project and data filter of the
    link (or of the form it was clicked in) stay. With no preset asked for, a machine without a GPU
    starts from the CPU preset, one with a GPU from the defaults."""
    if clone is not None:  # "Run again / Retry with these settings"
        run = runs.get_run(session, clone)
        return _run_form(request, session, settings, run.kind.value, project_id=run.project_id, form=_form_of_run(run))
    if kind not in KIND_TITLES:
        kind = "sft"
    chosen = (models or ([model] if model else []))[:3]
    pid = project
    if pid is None and chosen:
        version = registry.versions_by_id(session, chosen).get(chosen[0])
        pid = version.project_id if version else None
    if preset not in PRESETS and preset != DEFAULTS:
        preset = "cpu" if not estimates.gpu_present() else DEFAULTS
    # The preset's settings as if the admin had typed them (the form shows them, changeable).
    values = PRESETS.get(preset, {}).get(kind, {})
    fields = {f.name: values.get(f.name, f.default) for f in config_fields(kind)[1]}
    if fields.get("precision") == "bf16" and not estimates.cpu_has_bf16():  # (only the CPU presets say bf16)
        fields["precision"] = "fp32"  # emulated bf16 is about 10x slower (runconfig's note on the presets)
    form = RunForm(
        kind=kind,
        splits=[s for s in splits if s in ("train", "valid", "test")] or ["train"],
        exclude=exclude,
        min_agreement=min_agreement,
        model_0=model_0,
        model_1=model_1,
        model_2=model_2,
        **_settings_fields(fields),
    )
    return _run_form(request, session, settings, kind, project_id=pid, form=form, preset_models=chosen, preset=preset)


def _settings_fields(config: dict[str, typing.Any]) -> dict[str, str]:
    """Settings as the run form's `cfg_` fields (a ticked checkbox sends "on", an unticked one nothing)."""
    return {f"cfg_{name}": "on" if v is True else str(v) for name, v in config.items() if v is not False}


def _form_of_run(run: TrainingRun) -> RunForm:
    """A run's settings as the run form's fields, to queue it again (changeable first)."""
    selection = runs.data_filter_of(run)
    models = {f"model_{i}": str(m) for i, m in enumerate(run.input_model_ids or [])}
    return RunForm(
        kind=run.kind.value,
        splits=list(selection.splits or ["train"]),
        exclude=list(selection.exclude_labelers or []),
        min_agreement=selection.min_agreement,
        **models,
        **_settings_fields(run.config or {}),
    )


@router.post("/runs")
def create_run(
    request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, form: Annotated[RunForm, Form()]
):
    try:
        run = runs.create_run(
            session,
            project_id=form.project_id,
            kind=form.check_kind(),
            config=form.config(),
            input_model_ids=form.model_ids(),
            data_filter=form.data_filter(),
            created_by=user,
            default_model=settings.default_model,
        )
    except ServiceError as exc:
        return _run_form(
            request,
            session,
            settings,
            form.kind,
            project_id=form.project_id,
            form=form,
            error=exc.message,
            status_code=exc.status_code,
        )
    selection = runs.data_filter_of(run)
    low = selection.below_agreement
    note = (
        ""
        if selection.min_agreement is None
        else f" Left out {len(low)} labeler{'s' * (len(low) != 1)} below {selection.min_agreement:g}% agreement."
    )
    flash(request, f"Run #{run.id} ({run.kind.value}) is queued; a worker will pick it up.{note}", "success")
    return redirect(f"/admin/runs/{run.id}")


# ---------------------------------------------------------------- run list and run page


@router.get("/runs")
def runs_page(
    request: Request, session: SessionDep, user: AdminUser, project: IdFilter = None, status: str = "", kind: str = ""
):
    pid = project
    st = RunStatus(status) if status in RunStatus.__members__ else None
    rk = RunKind(kind) if kind in RunKind.__members__ else None
    listed = runs.list_runs(session, project_id=pid, status=st, kind=rk, limit=100)
    names = projects.project_names(session)
    return render(
        request,
        "admin/runs.html",
        {
            "runs": listed,
            "counts": runs.status_counts(session),
            "project_names": names,
            "projects": names,
            "project_id": pid,
            "status": status,
            "kind": kind,
            "kinds": KIND_TITLES,
        },
    )


LABELER_LISTS = {
    "exclude_labelers": "left out",
    "left_out_by_admin": "of whom left out of training on the Labelers page",
    "below_agreement": "of whom below the minimum agreement",
}


def _data_filter_words(session: SessionDep, run: TrainingRun) -> list[tuple[str, str]]:
    """The run's data filter as the run page says it: labelers by name, not by id."""
    words: list[tuple[str, str]] = []
    for key, value in (run.data_filter or {}).items():
        if key in LABELER_LISTS and isinstance(value, list):
            names = []
            for user_id in value:
                try:
                    user = accounts.get_user(session, int(user_id))
                    names.append(user.name or user.email)
                except (ServiceError, TypeError, ValueError):
                    names.append(f"user #{user_id} (deleted)")
            words.append((LABELER_LISTS[key], ", ".join(names) or "nobody"))
        elif key == "min_agreement":
            words.append(("minimum agreement", f"{value:g}%" if isinstance(value, int | float) else str(value)))
        elif isinstance(value, list):
            words.append((key.replace("_", " "), ", ".join(map(str, value))))
        else:
            words.append((key.replace("_", " "), str(value)))
    return words


def _run_context(session: SessionDep, run: TrainingRun) -> dict:
    series = runs.metric_series(session, run.id, max_points=MAX_POINTS)
    first = {name: i for i, name in enumerate(PLOT_FIRST)}
    names = sorted(series, key=lambda n: (first.get(n, len(first)), n))
    charts = [(name, line_chart({name: series[name]}, label=name), series[name][-1][1]) for name in names]
    report = evaluation.labeler_win_rate(session, run.id) if run.kind == RunKind.evaluate else None
    final = run.status in runs.FINAL
    # Generate and evaluate runs make tasks; an ended one offers to withdraw those still open.
    makes_tasks = run.kind in runs.TASK_MAKING_KINDS and final
    return {
        "run": run,
        "timing": runs.timing(run),
        "charts": charts,
        "produced": registry.produced_by(session, run.id),
        "inputs": registry.versions_by_id(session, run.input_model_ids or []),
        "final": final,
        "report": report,
        "run_tasks": runs.run_open_tasks(session, run.id) if makes_tasks else None,
        "project": projects.get_project(session, run.project_id) if run.project_id else None,
        "data_filter": _data_filter_words(session, run),
    }


@router.get("/runs/{run_id}")
def run_page(request: Request, session: SessionDep, user: AdminUser, run_id: IdPath):
    run = runs.get_run(session, run_id)
    return render(request, "admin/run.html", _run_context(session, run))


@router.get("/runs/{run_id}/live")
def run_live(request: Request, session: SessionDep, user: AdminUser, run_id: IdPath):
    """htmx fragment polled every 2 s while the run is not final; the final fragment stops the polling."""
    run = runs.get_run(session, run_id)
    return render(request, "admin/_run_live.html", _run_context(session, run))


@router.post("/runs/{run_id}/delete")
def delete_run(request: Request, session: SessionDep, user: AdminUser, run_id: IdPath):
    try:
        runs.delete_run(session, run_id)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/runs/{run_id}")
    flash(request, f"Run #{run_id} deleted.", "success")
    return redirect("/admin/runs")


@router.post("/runs/{run_id}/cancel")
def cancel_run(request: Request, session: SessionDep, user: AdminUser, run_id: IdPath):
    try:
        run = runs.cancel_run(session, run_id, by=user)
    except ServiceError as exc:
        run = runs.get_run(session, run_id)
        return render(
            request, "admin/run.html", {**_run_context(session, run), "error": exc.message}, status_code=exc.status_code
        )
    flash(
        request,
        f"Run #{run.id} cancelled."
        if run.status == RunStatus.cancelled
        else f"Run #{run.id}: cancel requested; the worker stops at its next safe point.",
        "success",
    )
    return redirect(f"/admin/runs/{run.id}")


def _withdrawn_words(withdrawn) -> str:
    if not withdrawn.total:
        return "No open tasks to withdraw: nothing changed."
    parts = []
    if withdrawn.deleted:
        parts.append(f"{withdrawn.deleted} that nobody had answered deleted")
    if withdrawn.closed:
        parts.append(f"{withdrawn.closed} with answers or a flag closed, what was submitted kept")
    return f"Withdrew {withdrawn.total} open task(s) from the labelers' queues: {'; '.join(parts)}."


@router.post("/runs/{run_id}/withdraw-tasks")
def withdraw_run_tasks(request: Request, session: SessionDep, user: AdminUser, run_id: IdPath):
    try:
        withdrawn = runs.withdraw_run_tasks(session, run_id)
    except ServiceError as exc:  # still running, or an archived project
        return refused(request, exc, f"/admin/runs/{run_id}")
    flash(request, f"Run #{run_id}: {_withdrawn_words(withdrawn)}", "success" if withdrawn.total else "info")
    return redirect(f"/admin/runs/{run_id}")


# ---------------------------------------------------------------- models

GRAPH_LATEST = 40
"""The lineage graph shows the newest versions and their parents; the table lists more."""


def _graph_versions(session: SessionDep, versions: list[ModelVersion]) -> list[ModelVersion]:
    shown = {v.id: v for v in versions[:GRAPH_LATEST]}
    missing = {p for v in shown.values() for p in (v.parent_ids or [])} - set(shown)
    shown.update(registry.versions_by_id(session, sorted(missing)))
    return list(shown.values())


@router.get("/models")
def models_page(request: Request, session: SessionDep, user: AdminUser, project: IdFilter = None):
    pid = project
    versions = _model_choices(session, pid)
    return render(
        request,
        "admin/models.html",
        {
            "versions": versions,
            "graph": lineage_graph(_graph_versions(session, versions)),
            "colors": MODEL_COLORS,
            "graph_limited": len(versions) > GRAPH_LATEST,
            "by_id": {v.id: v for v in versions},
            "evaluations": evaluation.recent_evaluations(session),
            "headline": headline_metrics,
            "projects": projects.project_choices(session),
            "project_id": pid,
        },
    )


@router.get("/models/{version_id}")
def model_page(request: Request, session: SessionDep, user: AdminUser, version_id: IdPath):
    version = registry.get_version(session, version_id)
    ancestors = registry.lineage(session, version.id)
    children = registry.children(session, version.id)
    family = {v.id: v for v in ancestors + children}
    others = [
        v
        for v in _model_choices(session, version.project_id)
        if v.id != version.id and v.kind in (ModelKind.base, ModelKind.sft, ModelKind.ppo)
    ]
    run = runs.find_run(session, version.run_id) if version.run_id else None
    version_tasks = runs.version_open_tasks(session, version.id)
    return render(
        request,
        "admin/model.html",
        {
            "version": version,
            "ancestors": ancestors,
            "children": children,
            "run": run,
            "others": others,
            "graph": lineage_graph(list(family.values()), highlight=version.id),
            "is_policy": version.kind in (ModelKind.base, ModelKind.sft, ModelKind.ppo),
            "version_tasks": version_tasks,
        },
    )


@router.post("/models/{version_id}/withdraw-tasks")
def withdraw_version_tasks(request: Request, session: SessionDep, user: AdminUser, version_id: IdPath):
    try:
        withdrawn = runs.withdraw_version_tasks(session, version_id)
    except ServiceError as exc:  # an archived project
        return refused(request, exc, f"/admin/models/{version_id}")
    flash(request, f"Model #{version_id}: {_withdrawn_words(withdrawn)}", "success" if withdrawn.total else "info")
    return redirect(f"/admin/models/{version_id}")


@router.post("/models/{version_id}/delete")
def delete_model(request: Request, session: SessionDep, settings: SettingsDep, user: AdminUser, version_id: IdPath):
    try:
        deleted = registry.delete_version(session, version_id, settings.artifacts_dir)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/models/{version_id}")
    kept = (
        f" It stays listed as deleted, because {', '.join(deleted.named_by[:5])} name it." if deleted.tombstone else ""
    )
    files = " Its files were removed from disk." if deleted.folder else ""
    flash(request, f"Model version {version_id} deleted.{files}{kept}", "success")
    return redirect(f"/admin/models/{version_id}" if deleted.tombstone else "/admin/models")


class BaseModelForm(BackForm):
    source: str = ""
    name: str = ""
    project_id: Id | None = None


@router.post("/models")
def register_model(request: Request, session: SessionDep, user: AdminUser, form: Annotated[BaseModelForm, Form()]):
    try:
        version = registry.register_base(session, form.source, name=form.name, project_id=form.project_id)
    except ServiceError as exc:
        return refused(request, exc, "/admin/models")
    flash(request, f"Base model #{version.id} “{version.name}” registered.", "success")
    return redirect(f"/admin/models/{version.id}")
