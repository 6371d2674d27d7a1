"""Admin pages: the data overview (counts, targets, submissions over time, the category mix, a
project's prompts with their category and PII flags) and exports."""

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import StreamingResponse

from app.deps import AdminUser, SessionDep, SessionRoute, verify_csrf
from app.models import PromptCategory, TaskKind
from app.services import ServiceError, exports, projects, stats
from app.web.admin_charts import KIND_COLORS, stacked_bars
from app.web.params import IdFilter, IdPath
from app.web.render import flash, redirect, render

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)
KINDS = [k.value for k in TaskKind]


@router.get("/data")
def data_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project: IdFilter = None,
    days: Annotated[int, Query(ge=1, le=3650)] = 30,
    fresh: bool = False,
    category: str = "",
    pii: bool = False,
    before: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
):
    days = min(max(days, 7), 365)
    pid = project
    category = category if category == "none" or category in PromptCategory.__members__ else ""
    overview = stats.data_overview(session, days=days, project_id=pid, fresh=fresh)
    chart = stacked_bars(overview.per_day, kinds=KINDS)
    total = sum(sum(c.values()) for _, c in overview.per_day)
    shown = [p.id for p in overview.projects if not pid or p.id == pid]
    listed = (
        projects.list_prompts(
            session, pid, category=category or None, pii=pii, after=before, limit=PROMPTS_SHOWN + 1, newest_first=True
        )
        if pid and any(p.id == pid for p in overview.projects)
        else []
    )
    filters = {"project": pid or "", "days": days, "category": category, "pii": str(pii).lower()}
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
            "mixes": stats.category_mix(session, shown),
            "categories": [c.value for c in PromptCategory],
            "category": category,
            "pii": pii,
            "prompts": listed[:PROMPTS_SHOWN],
            "older": listed[PROMPTS_SHOWN - 1].id if len(listed) > PROMPTS_SHOWN else None,
            "here": "/admin/data?" + urlencode(filters),
        },
    )


PROMPTS_SHOWN = 50


@router.post("/projects/{project_id}/prompts/{prompt_id}/category")
def set_prompt_category(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    prompt_id: IdPath,
    category: Annotated[str, Form()] = "",
    back: Annotated[str, Form()] = "",
):
    if category and category not in PromptCategory.__members__:
        raise ServiceError(f"Unknown category {category!r}; choose one of {', '.join(PromptCategory)}.")
    projects.set_category(session, project_id, prompt_id, PromptCategory(category) if category else None)
    flash(request, f"Prompt {prompt_id}: {category or 'uncategorized'}.", "success")
    return redirect(back if back.startswith("/admin/") else f"/admin/data?project={project_id}")


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
    name = exports.filename(project, kind, f)
    return StreamingResponse(
        exports.stream_lines(request.app.state.engine, kind, f),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
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
