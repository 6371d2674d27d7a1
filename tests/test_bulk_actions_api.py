"""The admin's bulk actions through the JSON API (issue 28), on SQLite and Postgres: withdrawing the
open tasks of an ended run or of a model version, accepting review items as read (those revised or
decided since skipped and counted), and a run's progress inside a step. Each answers in JSON, with a
4xx and a `detail` for a bad id, a run that makes no tasks or still runs, an archived project, a
labeler's token, no token, or a browser login without a token (the API takes bearer tokens only,
so a cookie alone, which a forged cross-site form would carry, does nothing)."""

import pytest

from app.models import Demonstration, Ranking, ReviewStatus, Role, RunKind, RunStatus, Task, TrainingRun
from app.services import accounts, projects, registry, review, submissions
from tests.conftest import login
from tests.labeling import make_labelers, make_project, make_prompts
from tests.test_bulk_actions import _ranking
from tests.worker_helpers import add_demonstrations


@pytest.fixture
def api(client, session):
    admin = accounts.create_user(session, "admin@example.com", None, role=Role.admin)
    labeler = accounts.create_user(session, "labeler@example.com", None, role=Role.labeler)
    tokens = {
        "admin": accounts.create_api_token(session, admin),
        "labeler": accounts.create_api_token(session, labeler),
    }
    session.commit()
    client.admin = admin
    client.as_ = lambda who: {"Authorization": f"Bearer {tokens[who]}"}
    return client


def _run(session, project, kind=RunKind.generate, status=RunStatus.cancelled) -> TrainingRun:
    run = TrainingRun(project_id=project.id, kind=kind, status=status, config={}, input_model_ids=[])
    session.add(run)
    session.flush()
    return run


def _answer(session, task, labeler) -> None:
    """A labeler's ranking of the (overlap 2) task, still open: withdrawing closes it, keeping this."""
    ids = [o.completion_id for o in task.outputs]
    session.add(Ranking(task_id=task.id, user_id=labeler.id, order=[[i] for i in ids], display_order=ids))
    task.done_count += 1
    session.flush()


def _status(session, task_id: int) -> str | None:
    session.expire_all()
    task = session.get(Task, task_id)
    return task.status.value if task else None


@pytest.fixture
def made(session, api):
    """A cancelled generate run with an unanswered and an answered open task, and an open task of
    another run."""
    project = make_project(session, overlap=2, k=2)
    (ann,) = make_labelers(session, 1)
    p1, p2, p3 = make_prompts(session, project, ["one", "two", "three"])
    run = _run(session, project)
    fresh, answered = _ranking(session, project, p1, run), _ranking(session, project, p2, run)
    elsewhere = _ranking(session, project, p3, _run(session, project, status=RunStatus.succeeded))
    _answer(session, answered, ann)
    session.commit()
    return project, run, {"fresh": fresh.id, "answered": answered.id, "elsewhere": elsewhere.id}


# -- withdrawing a run's open tasks -----------------------------------------------------------------


def test_the_api_withdraws_a_runs_open_tasks(session, api, made):
    project, run, t = made
    url = f"/api/v1/runs/{run.id}/withdraw-tasks"
    done = api.post(url, headers=api.as_("admin"))
    assert done.status_code == 200, done.text
    assert done.json() == {"withdrawn": 2, "deleted": 1, "closed": 1}
    assert _status(session, t["fresh"]) is None, "nobody had answered it: deleted"
    assert _status(session, t["answered"]) == "closed"
    assert session.query(Ranking).filter_by(task_id=t["answered"]).count() == 1, "the answer is kept"
    assert _status(session, t["elsewhere"]) == "open", "another run's task is untouched"
    again = api.post(url, headers=api.as_("admin"))
    assert again.status_code == 200 and again.json() == {"withdrawn": 0, "deleted": 0, "closed": 0}


def test_withdrawing_a_runs_tasks_refuses_with_a_json_reason(session, api, made):
    project, run, t = made
    admin, url = api.as_("admin"), f"/api/v1/runs/{run.id}/withdraw-tasks"
    run.status = RunStatus.running
    sft = _run(session, project, kind=RunKind.sft, status=RunStatus.succeeded)
    session.commit()

    still_running = api.post(url, headers=admin)
    assert still_running.status_code == 409
    assert still_running.json() == {
        "detail": f"Run #{run.id} is running and may still make tasks: cancel it first, then withdraw."
    }
    wrong_kind = api.post(f"/api/v1/runs/{sft.id}/withdraw-tasks", headers=admin)
    assert wrong_kind.status_code == 400
    assert wrong_kind.json() == {"detail": f"Run {sft.id} is a sft run; only generate and evaluate runs make tasks."}
    missing = api.post("/api/v1/runs/999999/withdraw-tasks", headers=admin)
    assert missing.status_code == 404 and missing.json() == {"detail": "Run 999999 does not exist."}
    for bad in ("0", "x", str(2**31)):
        r = api.post(f"/api/v1/runs/{bad}/withdraw-tasks", headers=admin)
        assert r.status_code == 422 and r.json()["detail"] == "Invalid request.", bad

    run.status = RunStatus.failed
    session.commit()
    assert api.post(url, headers=api.as_("labeler")).status_code == 403
    assert api.post(url).status_code == 401
    projects.set_archived(session, project.id, True)
    session.commit()
    archived = api.post(url, headers=admin)
    assert archived.status_code == 409 and "archived" in archived.json()["detail"]
    assert [_status(session, i) for i in t.values()] == ["open", "open", "open"], "nothing was withdrawn"


def test_a_browser_login_alone_does_not_withdraw(session, api, made, make_user):
    """No CSRF token is asked of the API because a cookie never signs an API call: an admin's
    browser session, which a cross-site form would ride on, gets 401 and changes nothing."""
    _, run, t = made
    make_user("web-admin@example.com", Role.admin)
    assert login(api, "web-admin@example.com").status_code == 303
    r = api.post(f"/api/v1/runs/{run.id}/withdraw-tasks")
    assert r.status_code == 401 and "Bearer" in r.json()["detail"]
    assert _status(session, t["fresh"]) == "open"


# -- withdrawing a model version's open tasks --------------------------------------------------------


def test_the_api_withdraws_a_model_versions_open_tasks(session, api):
    project = make_project(session, overlap=2, k=2)
    (ann,) = make_labelers(session, 1)
    bad, good = (registry.register_base(session, f"/models/{n}").id for n in ("bad", "good"))
    p1, p2, p3 = make_prompts(session, project, ["a", "b", "c"])
    fresh, answered, other = (
        _ranking(session, project, p1, version=bad),
        _ranking(session, project, p2, version=bad),
        _ranking(session, project, p3, version=good),
    )
    _answer(session, answered, ann)
    session.commit()
    fresh, answered, other = fresh.id, answered.id, other.id
    url = f"/api/v1/model-versions/{bad}/withdraw-tasks"

    assert api.post(url, headers=api.as_("labeler")).status_code == 403
    assert api.post(url).status_code == 401
    missing = api.post("/api/v1/model-versions/999999/withdraw-tasks", headers=api.as_("admin"))
    assert missing.status_code == 404 and "999999" in missing.json()["detail"]
    assert api.post("/api/v1/model-versions/0/withdraw-tasks", headers=api.as_("admin")).status_code == 422
    projects.set_archived(session, project.id, True)
    session.commit()
    archived = api.post(url, headers=api.as_("admin"))
    assert archived.status_code == 409 and "archived" in archived.json()["detail"]
    assert [_status(session, i) for i in (fresh, answered)] == ["open", "open"]

    projects.set_archived(session, project.id, False)
    session.commit()
    done = api.post(url, headers=api.as_("admin"))
    assert done.status_code == 200 and done.json() == {"withdrawn": 2, "deleted": 1, "closed": 1}
    assert [_status(session, i) for i in (fresh, answered, other)] == [None, "closed", "open"]


# -- accepting review items as read ----------------------------------------------------------------


def test_the_api_accepts_the_items_as_read_and_counts_the_skipped(session, api, make_user):
    labeler = make_user("w@example.com", Role.labeler)
    other_admin = make_user("b@example.com", Role.admin)
    project, elsewhere = make_project(session, name="One"), make_project(session, name="Two")
    demos = add_demonstrations(session, project, [(f"Prompt {i}", f"Answer {i}") for i in range(4)], labeler)
    (foreign,) = add_demonstrations(session, elsewhere, [("Other", "Other answer")], labeler)
    session.commit()
    url = f"/api/v1/projects/{project.id}/review/accept"
    # What the admin read: the queue through the API, with each item's revision.
    read = api.get(f"/api/v1/projects/{project.id}/review?kind=demonstration", headers=api.as_("admin")).json()
    items = [{"submission_id": i["submission_id"], "revision": i["revision"]} for i in read["items"]]
    assert sorted(items, key=lambda i: i["submission_id"]) == [{"submission_id": d.id, "revision": 1} for d in demos]
    items.append({"submission_id": foreign.id, "revision": 1})
    submissions.revise_demonstration(session, labeler, demos[1].id, "Answer 1, now rude")
    review.decide(session, other_admin, "demonstration", demos[2].id, "rejected", "No.", revision=1)
    session.commit()

    done = api.post(url, headers=api.as_("admin"), json={"kind": "demonstration", "items": items})
    assert done.status_code == 200, done.text
    assert done.json() == {"accepted": 2, "revised": 1, "decided": 2}  # the other project's one: not here
    session.expire_all()
    status = {d.id: session.get(Demonstration, d.id).review for d in [*demos, foreign]}
    assert status == {
        demos[0].id: ReviewStatus.accepted,
        demos[1].id: ReviewStatus.pending,
        demos[2].id: ReviewStatus.rejected,
        demos[3].id: ReviewStatus.accepted,
        foreign.id: ReviewStatus.pending,
    }
    assert session.get(Demonstration, demos[0].id).reviewed_by_id == api.admin.id
    # Read again at its new revision, the revised one is accepted.
    again = [{"submission_id": demos[1].id, "revision": 2}]
    r = api.post(url, headers=api.as_("admin"), json={"kind": "demonstration", "items": again})
    assert r.json() == {"accepted": 1, "revised": 0, "decided": 0}


def test_accepting_items_refuses_with_a_json_reason(session, api, make_user):
    labeler = make_user("w@example.com", Role.labeler)
    project = make_project(session)
    (demo,) = add_demonstrations(session, project, [("Prompt", "Answer")], labeler)
    session.commit()
    url, admin = f"/api/v1/projects/{project.id}/review/accept", api.as_("admin")
    one = {"kind": "demonstration", "items": [{"submission_id": demo.id, "revision": 1}]}

    empty = api.post(url, headers=admin, json={"kind": "demonstration", "items": []})
    assert empty.status_code == 400 and empty.json() == {"detail": "No pending items were shown, so none was accepted."}
    too_many = [{"submission_id": i, "revision": 1} for i in range(1, review.MAX_SHOWN + 2)]
    for body in (
        {"kind": "nonsense", "items": one["items"]},
        {"kind": "demonstration", "items": [{"submission_id": demo.id, "revision": 0}]},
        {"kind": "demonstration", "items": [{"submission_id": demo.id}]},
        {"kind": "demonstration", "items": too_many},
        {"items": one["items"]},
    ):
        bad = api.post(url, headers=admin, json=body)
        assert bad.status_code == 422 and bad.json()["detail"] == "Invalid request.", body
    missing = api.post("/api/v1/projects/999999/review/accept", headers=admin, json=one)
    assert missing.status_code == 404 and missing.json() == {"detail": "There is no project 999999."}
    assert api.post(url, headers=api.as_("labeler"), json=one).status_code == 403
    assert api.post(url, json=one).status_code == 401
    projects.set_archived(session, project.id, True)
    session.commit()
    archived = api.post(url, headers=admin, json=one)
    assert archived.status_code == 409 and "archived" in archived.json()["detail"]
    session.expire_all()
    assert session.get(Demonstration, demo.id).review == ReviewStatus.pending, "nothing was accepted"


# -- progress inside a step -------------------------------------------------------------------------


def test_the_run_json_carries_the_progress_inside_a_step(session, api):
    project = make_project(session)
    run = _run(session, project, kind=RunKind.ppo, status=RunStatus.running)
    run.progress_step, run.progress_total, run.progress_partial = 1, 4, 0.25
    whole = _run(session, project, kind=RunKind.sft, status=RunStatus.succeeded)
    session.commit()
    read = api.get(f"/api/v1/runs/{run.id}", headers=api.as_("admin")).json()
    assert (read["progress_step"], read["progress_total"], read["progress_partial"]) == (1, 4, 0.25)
    listed = {r["id"]: r["progress_partial"] for r in api.get("/api/v1/runs", headers=api.as_("admin")).json()}
    assert listed == {run.id: 0.25, whole.id: None}
