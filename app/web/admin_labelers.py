"""Admin pages: labeler figures, agreement, gold tasks (and the task pages where gold is set)."""

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ConfigDict, field_validator

from app.deps import AdminUser, SessionDep, SessionRoute, verify_csrf
from app.models import TaskKind
from app.services import ServiceError, projects, review, stats, tasks
from app.web.params import BackForm, Id, IdFilter, IdPath, Page
from app.web.render import flash, redirect, refused, render

router = APIRouter(
    route_class=SessionRoute, prefix="/admin", dependencies=[Depends(verify_csrf)], include_in_schema=False
)
PAIRWISE_REFERENCE = 0.726  # InstructGPT: training labelers agreed on 72.6 ± 1.5 % of comparisons


@router.get("/labelers")
def labelers_page(
    request: Request, session: SessionDep, user: AdminUser, project: IdFilter = None, fresh: bool = False
):
    pid = project
    rows, agreement, as_of = stats.labelers_report(session, pid, fresh=fresh)
    names = {r.user.id: r.user.name or r.user.email for r in rows}
    pairs = sorted(agreement.per_pair.items(), key=lambda kv: -kv[1].comparable)[:30]
    return render(
        request,
        "admin/labelers.html",
        {
            "rows": rows,
            "agreement": agreement,
            "pairs": pairs,
            "names": names,
            "project_id": pid,
            "projects": projects.project_choices(session),
            "gold_tasks": stats.gold_tasks(session, pid, limit=20),
            "acceptance": review.acceptance(session, pid),
            "reference": PAIRWISE_REFERENCE,
            "as_of": as_of,
        },
    )


class TrainingForm(BackForm):
    left_out: bool = False  # "1": leave the labeler's data out of new runs, "0": use it again


@router.post("/labelers/{user_id}/training")
def leave_out(
    request: Request, session: SessionDep, user: AdminUser, user_id: IdPath, form: Annotated[TrainingForm, Form()]
):
    labeler = review.leave_out_of_training(session, user_id, form.left_out)
    who = labeler.name or labeler.email
    if form.left_out:
        flash(request, f"{who}'s data is left out of every run created from now on.", "success")
    else:
        flash(request, f"{who}'s data is used again in new runs.", "success")
    return redirect(form.back_or("/admin/labelers"))


@router.get("/projects/{project_id}/tasks")
def tasks_page(
    request: Request,
    session: SessionDep,
    user: AdminUser,
    project_id: IdPath,
    kind: str = "",
    shared: bool = False,
    source: str = "",
    q: str = "",
    run: IdFilter = None,
    page: Page = 1,
):
    project = projects.get_project(session, project_id)
    text = tasks.search_text(q)  # too long: 400, said on the error page
    f = tasks.TaskFilter(
        kind=TaskKind(kind) if kind in TaskKind.__members__ else None,
        shared_only=shared,
        source=source if source in ("labelers", "imported") else "",
        text=text,
        run_id=run,
    )
    listed = tasks.tasks_page(session, project.id, f, offset=(page - 1) * 50, limit=51)
    shown = listed[:50]
    query = {"kind": kind, "shared": str(shared).lower(), "source": f.source, "q": text, "run": run or ""}
    return render(
        request,
        "admin/tasks.html",
        {
            "project": project,
            "tasks": shown,
            "sources": tasks.sources(session, shown),
            "more": len(listed) > 50,
            "f": f,
            "kind": kind,
            "shared": shared,
            "page": page,
            "query": urlencode(query),
        },
    )


@router.get("/tasks/{task_id}")
def task_page(request: Request, session: SessionDep, user: AdminUser, task_id: IdPath, error: str | None = None):
    task = tasks.get_task(session, task_id)
    subs = tasks.task_submissions(session, task)
    gold = task.gold if isinstance(task.gold, dict) else {}
    gold_rank = stats.ranks_of(gold["order"]) if "order" in gold else {}
    scores = {}
    for sub, _labeler in subs:
        if task.kind == TaskKind.ranking and gold_rank:
            scores[sub.id] = stats.gold_score_ranking(sub.order, gold)
    return render(
        request,
        "admin/task.html",
        {
            "task": task,
            "subs": subs,
            "items": review.items(session, task.kind, [sub for sub, _ in subs]),
            "gold_rank": gold_rank,
            "scores": scores,
            "error": error,
        },
        status_code=400 if error else 200,
    )


@router.post("/tasks/{task_id}/delete")
def delete_task(request: Request, session: SessionDep, user: AdminUser, task_id: IdPath):
    project_id = tasks.get_task(session, task_id).project_id
    try:
        tasks.delete_task(session, task_id)
    except ServiceError as exc:
        return refused(request, exc, f"/admin/tasks/{task_id}")
    flash(request, f"Task #{task_id} deleted.", "success")
    return redirect(f"/admin/projects/{project_id}/tasks")


class GoldForm(BackForm):
    """A task's gold answer: `clear` removes it; a ranking's `rank_{output id}` (1 = best, equal
    ranks tie); a comparison's `winner`, an output's id or "tie"."""

    model_config = ConfigDict(extra="allow")

    clear: bool = False
    winner: Id | None = None  # None: a tie (or none picked)

    @field_validator("winner", mode="before")
    @classmethod
    def _tie(cls, value: object) -> object:
        return None if value == "tie" else value

    def order(self, output_ids: list[int]) -> list[list[int]]:
        """The order the ranks give, or ServiceError unless every output has a rank from 1 to n."""
        extra = self.model_extra or {}
        ranks: dict[int, int] = {}
        for cid in output_ids:
            value = extra.get(f"rank_{cid}")
            try:
                rank = int(value) if isinstance(value, str) else 0
            except ValueError:
                rank = 0
            if not 1 <= rank <= len(output_ids):
                raise ServiceError(f"Give every output a rank from 1 to {len(output_ids)}.")
            ranks[cid] = rank
        return [[cid for cid, r in ranks.items() if r == level] for level in sorted(set(ranks.values()))]


@router.post("/tasks/{task_id}/gold")
def set_gold(
    request: Request, session: SessionDep, user: AdminUser, task_id: IdPath, form: Annotated[GoldForm, Form()]
):
    task = tasks.get_task(session, task_id)
    try:
        if form.clear:
            review.set_gold(session, task, None)
            flash(request, "Gold answer removed.")
        elif task.kind == TaskKind.ranking:
            # One rank number per output (1 = best); equal numbers are ties.
            order = form.order([out.completion_id for out in task.outputs])
            review.set_gold(session, task, {"order": order})
            flash(request, "Gold order saved; labelers' accuracy on it shows on the Labelers page.", "success")
        else:
            review.set_gold(session, task, {"winner": form.winner})
            flash(request, "Gold answer saved.", "success")
    except ServiceError as exc:  # set_gold checks before it writes: nothing is pending
        response = task_page(request, session, user, task_id, error=exc.message)
        response.status_code = max(response.status_code, exc.status_code)  # 409: an archived project
        return response
    return redirect(f"/admin/tasks/{task.id}")
