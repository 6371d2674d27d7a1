"""Admin pages: the data overview (counts, targets, submissions over time) and exports."""

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from app.deps import AdminUser, SessionDep, verify_csrf
from app.models import TaskKind
from app.services import ServiceError, exports, projects, stats
from app.web.admin_charts import KIND_COLORS, stacked_bars
from app.web.params import IdPath
from app.web.render import render

router = APIRouter(prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False)
KINDS = [k.value for k in TaskKind]


def _project_id(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


@router.get("/data")
def data_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project: str | None = None,
    days: Annotated[int, Query(ge=1, le=3650)] = 30,
    fresh: bool = False,
):
    days = min(max(days, 7), 365)
    pid = _project_id(project)
    overview = stats.data_overview(session, days=days, project_id=pid, fresh=fresh)
    chart = stacked_bars(overview.per_day, kinds=KINDS)
    total = sum(sum(c.values()) for _, c in overview.per_day)
    return render(
        request,
        "admin/data.html",
        {
            "o": overview,
            "chart": chart,
            "kinds": KINDS,
            "colors": KIND_COLORS,
            "days": days,
            "project_id": pid,
            "period_total": total,
            "export_kinds": exports.KINDS,
        },
    )


@router.get("/projects/{project_id}/export/{kind}")
def export_download(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    kind: str,
    split: str = "train",
    exclude: str = "",
    format: str = "plain",
):
    project = projects.get_project(session, project_id)
    try:
        excluded = [int(x) for x in exclude.replace(" ", "").split(",") if x]
    except ValueError:
        raise ServiceError("Leave out labelers by their ids, separated by commas (e.g. 3,7).") from None
    f = exports.ExportFilter(project.id, list(exports.SPLITS) if split == "all" else [split], excluded, format)
    exports.check(session, kind, f)
    maker = request.app.state.sessionmaker

    def body():
        # A session of its own: the request's session is closed before the stream is sent.
        with maker() as s:
            yield from exports.jsonl_lines(s, kind, f)

    name = exports.filename(project, kind, f)
    return StreamingResponse(
        body(), media_type="application/x-ndjson", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/projects/{project_id}/exports")
def exports_page(request: Request, session: SessionDep, user: AdminUser, project_id: IdPath):
    project = projects.get_project(session, project_id)
    labelers = [row.user for row in stats.labeler_figures(session, project.id) if row.total]
    return render(
        request,
        "admin/exports.html",
        {"project": project, "kinds": exports.KINDS, "labelers": labelers, "formats": exports.FORMATS},
    )
