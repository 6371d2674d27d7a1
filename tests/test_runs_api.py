"""The runs / model-versions API: bearer auth, admin-only writes, and clear 4xx answers to bad input."""

import pytest

from app.models import ModelKind, ModelVersion, Role, RunStatus, Split
from app.services import accounts, runs
from tests.worker_helpers import make_project, make_prompts, queue_raw


@pytest.fixture
def api(client, session):
    admin = accounts.create_user(session, "admin@example.com", None, role=Role.admin)
    labeler = accounts.create_user(session, "labeler@example.com", None, role=Role.labeler)
    project = make_project(session)
    make_prompts(session, project, ["Say hi", "Say bye"])
    make_prompts(session, project, ["Held out"], Split.test)
    tokens = {
        "admin": accounts.create_api_token(session, admin),
        "labeler": accounts.create_api_token(session, labeler),
    }
    session.commit()
    client.project = project
    client.headers_for = lambda who: {"Authorization": f"Bearer {tokens[who]}"}
    return client


def test_admin_creates_reads_and_cancels_a_run(api, session):
    admin = api.headers_for("admin")
    response = api.post(
        "/api/v1/runs",
        headers=admin,
        json={"project_id": api.project.id, "kind": "generate", "config": {"k": 3, "max_new_tokens": 16}},
    )
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["status"] == "queued" and run["config"]["k"] == 3 and run["config"]["top_p"] == 1.0
    (base_id,) = run["input_model_ids"]  # the default model, registered as a base version
    base = api.get(f"/api/v1/model-versions/{base_id}", headers=admin).json()
    assert base["kind"] == "base" and base["source"] == "smollm2-135m-instruct" and base["lineage"] == [base_id]

    runs.record_metrics(session, run["id"], 3, {"loss": 0.5})
    session.commit()
    read = api.get(f"/api/v1/runs/{run['id']}", headers=admin)
    assert read.status_code == 200 and read.json()["latest_metrics"] == {"loss": {"step": 3, "value": 0.5}}
    assert api.get(f"/api/v1/runs/{run['id']}/metrics?name=loss", headers=admin).json() == [
        {"step": 3, "name": "loss", "value": 0.5}
    ]
    listed = api.get(f"/api/v1/runs?project_id={api.project.id}&status=queued", headers=admin).json()
    assert [r["id"] for r in listed] == [run["id"]]

    cancelled = api.post(f"/api/v1/runs/{run['id']}/cancel", headers=admin)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/runs/{run['id']}/cancel", headers=admin)
    assert again.status_code == 409
    assert again.json()["detail"] == f"Run {run['id']} already cancelled; only queued or running runs can be cancelled."


def test_running_run_cancel_is_a_request(api, session):
    run = queue_raw(session, api.project, "generate")
    run.status = RunStatus.running
    session.commit()
    body = api.post(f"/api/v1/runs/{run.id}/cancel", headers=api.headers_for("admin")).json()
    assert body["status"] == "running" and body["cancel_requested"] is True


@pytest.mark.parametrize(
    "body, status, detail",
    [
        ({"project_id": 1, "kind": "distill"}, 422, "Invalid request."),
        ({"kind": "generate"}, 422, "Invalid request."),
        ({"project_id": 999, "kind": "generate"}, 404, "Project 999 does not exist."),
        (
            {"project_id": 1, "kind": "generate", "config": {"k": 12}},
            422,
            "Invalid generate config: k must be 0 (the project's K) or between 2 and 9, got 12.",
        ),
        (
            {"project_id": 1, "kind": "generate", "config": {"top_k": 5}},
            422,
            "Invalid generate config: Unknown setting 'top_k'",
        ),
        ({"project_id": 1, "kind": "generate", "config": ["k"]}, 422, "Invalid request."),
        ({"project_id": 1, "kind": "sft"}, 400, "Project 'Counting' has no accepted demonstrations"),
        ({"project_id": 1, "kind": "ppo", "input_model_ids": [77]}, 400, "A ppo run takes 2..2 input model versions"),
        (
            {"project_id": 1, "kind": "evaluate", "input_model_ids": [77, 78]},
            404,
            "Model version 77 (the candidate) does not exist.",
        ),
    ],
)
def test_create_run_bad_input(api, body, status, detail):
    response = api.post("/api/v1/runs", headers=api.headers_for("admin"), json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"].startswith(detail)


def test_auth_and_roles(api):
    body = {"project_id": api.project.id, "kind": "generate"}
    assert api.post("/api/v1/runs", json=body).status_code == 401
    assert api.post("/api/v1/runs", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    refused = api.post("/api/v1/runs", json=body, headers=api.headers_for("labeler"))
    assert refused.status_code == 403 and refused.json()["detail"] == "This endpoint is for admins."
    assert api.post("/api/v1/runs/1/cancel", headers=api.headers_for("labeler")).status_code == 403
    assert (
        api.post("/api/v1/model-versions", json={"source": "org/m"}, headers=api.headers_for("labeler")).status_code
        == 403
    )
    assert (
        api.get("/api/v1/runs", headers=api.headers_for("labeler")).status_code == 403
    )  # a labeler's pages show no runs


def test_not_found_and_wrong_kind(api, session):
    admin = api.headers_for("admin")
    for path in (
        "/api/v1/runs/999",
        "/api/v1/runs/999/metrics",
        "/api/v1/runs/999/evaluation",
        "/api/v1/model-versions/999",
    ):
        response = api.get(path, headers=admin)
        assert response.status_code == 404 and response.json()["detail"] in (
            "Run 999 does not exist.",
            "Model version 999 does not exist.",
        ), path
    assert api.post("/api/v1/runs/999/cancel", headers=admin).status_code == 404
    run = queue_raw(session, api.project, "sft")
    session.commit()
    wrong = api.get(f"/api/v1/runs/{run.id}/evaluation", headers=admin)
    assert wrong.status_code == 400 and "win rates come from evaluate runs" in wrong.json()["detail"]
    assert api.get("/api/v1/runs?status=paused", headers=admin).status_code == 422


def test_model_versions_register_list_and_lineage(api, session):
    admin = api.headers_for("admin")
    created = api.post("/api/v1/model-versions", headers=admin, json={"source": "org/base", "name": "Base"})
    assert created.status_code == 201 and created.json()["kind"] == "base" and created.json()["name"] == "Base"
    base_id = created.json()["id"]
    child = ModelVersion(
        name="sft",
        kind=ModelKind.sft,
        source="/a/run-1",
        artifact_path="/a/run-1",
        parent_ids=[base_id],
        project_id=api.project.id,
        metrics={"valid_loss": 1.5},
    )
    session.add(child)
    session.commit()
    read = api.get(f"/api/v1/model-versions/{child.id}", headers=admin).json()
    assert read["lineage"] == [child.id, base_id] and read["metrics"] == {"valid_loss": 1.5}
    listed = api.get(f"/api/v1/model-versions?project_id={api.project.id}&kind=sft", headers=admin).json()
    assert [v["id"] for v in listed] == [child.id]
    blank = api.post("/api/v1/model-versions", headers=admin, json={"source": "   "})
    assert blank.status_code == 400 and "needs a source" in blank.json()["detail"]
    assert api.post("/api/v1/model-versions", headers=admin, json={"source": "x", "project_id": 999}).status_code == 404
    configs = api.get("/api/v1/run-configs", headers=admin).json()
    assert {"sft", "reward", "ppo", "generate", "evaluate"} <= set(configs) and configs["evaluate"]["split"] == "test"


def test_evaluation_results_for_an_evaluate_run(api, session):
    a = ModelVersion(name="a", kind=ModelKind.sft, source="a", parent_ids=[], metrics={})
    b = ModelVersion(name="b", kind=ModelKind.base, source="b", parent_ids=[], metrics={})
    session.add_all([a, b])
    session.flush()
    run = queue_raw(session, api.project, "evaluate", input_model_ids=[a.id, b.id])
    run.summary = {"reward_model": {"n": 2, "win_rate": 1.0}}
    session.commit()
    body = api.get(f"/api/v1/runs/{run.id}/evaluation", headers=api.headers_for("admin")).json()
    assert body["labelers"]["n"] == 0 and body["labelers"]["win_rate"] is None
    assert body["reward_model"] == {"n": 2, "win_rate": 1.0}
