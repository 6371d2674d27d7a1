"""Labeler-written prompts (issue 18, InstructGPT §3.2), on SQLite and Postgres: a labeler writes
plain, few-shot and user-based prompts (bad input refused with a reason); an admin sets targets and
use cases, sees near-duplicates, accepts (edited) or rejects; accepting creates the Prompt with its
demonstration task; the JSON API and the pages do the same."""

from sqlalchemy import select

from app.models import Project, ProjectMember, Prompt, PromptCategory, ReviewStatus, Role, Split, Task, TaskKind
from app.services import ServiceError, accounts, written_prompts
from tests.conftest import csrf_of, login
from tests.worker_helpers import make_prompts

FEW_SHOT = "Translate to French.\n\nQuery: cat\nResponse: chat\n\nQuery: dog\nResponse: chien\n\nQuery: bird\nResponse:"


def _project(session, name="Writing", targets=True) -> Project:
    project = Project(name=name, k=2, overlap=1)
    session.add(project)
    session.flush()
    if targets:
        written_prompts.set_settings(
            session, project.id, targets={"kind": {"few_shot": 2}, "category": {"generation": 1}}, cases=["Email help"]
        )
    return project


def _refused(fn, *args, **kwargs) -> str:
    try:
        fn(*args, **kwargs)
    except ServiceError as exc:
        assert 400 <= exc.status_code < 500
        return exc.message
    raise AssertionError("not refused")


def bearer(session, user) -> dict[str, str]:
    token = accounts.create_api_token(session, user)
    session.commit()
    return {"Authorization": f"Bearer {token}"}


def test_accepting_creates_the_prompt_with_its_demonstration_task_and_records_who(session, make_user):
    labeler, admin = make_user("w@example.com"), make_user("a@example.com", Role.admin)
    project = _project(session)
    row = written_prompts.write(
        session, labeler, project.id, kind="few_shot", text=FEW_SHOT, category="generation", has_pii=True
    )
    assert row.status == ReviewStatus.pending and row.has_pii
    assert session.scalar(select(Prompt).where(Prompt.project_id == project.id)) is None, "nothing before review"

    edited = FEW_SHOT.replace("bird", "horse")
    done = written_prompts.accept(session, admin, project.id, row.id, text=edited, category="rewrite")
    assert done.status == ReviewStatus.accepted and done.edited and done.reviewed_by_id == admin.id
    assert done.reviewed_at is not None
    prompt = session.get(Prompt, done.prompt_id)
    assert prompt.text == edited and prompt.category == PromptCategory.rewrite and prompt.split == Split.train
    assert prompt.source == written_prompts.SOURCE and prompt.pii == "other" and prompt.meta["kind"] == "few_shot"
    task = session.scalar(select(Task).where(Task.prompt_id == prompt.id))
    assert task is not None and task.kind == TaskKind.demonstration and task.required == project.overlap
    assert "already" in _refused(written_prompts.accept, session, admin, project.id, row.id)

    progress = {
        (p.group, p.name): (p.target, p.written, p.accepted) for p in written_prompts.progress(session, project)
    }
    assert progress[("kind", "few_shot")] == (2, 1, 1) and progress[("category", "rewrite")] == (0, 1, 1)
    assert progress[("category", "generation")] == (1, 0, 0)


def test_bad_input_is_refused_with_a_reason(session, make_user):
    labeler = make_user("w@example.com")
    project = _project(session)
    ok = {"kind": "plain", "text": "Write a haiku about rain.", "category": "generation"}
    for change, words in (
        ({"text": "   "}, "empty"),
        ({"text": "a\x00b"}, "NUL"),
        ({"text": "x" * (written_prompts.MAX_TEXT_CHARS + 1)}, "longer"),
        ({"kind": "poem"}, "Unknown kind"),
        ({"category": "cooking"}, "Unknown category"),
        ({"kind": "user_based", "use_case": "Tax advice"}, "use cases"),
        ({"kind": "few_shot"}, "Query:/Response: pairs"),
        ({"kind": "few_shot", "text": written_prompts.FEW_SHOT_TEMPLATE}, "Query:/Response: pairs"),
    ):
        assert words in _refused(written_prompts.write, session, labeler, project.id, **{**ok, **change}), change
    other = _project(session, "No writing", targets=False)
    assert "no written prompts" in _refused(written_prompts.write, session, labeler, other.id, **ok)
    closed = _project(session, "Members")
    closed.members_only = True
    assert "members only" in _refused(written_prompts.write, session, labeler, closed.id, **ok)
    session.add(ProjectMember(project_id=closed.id, user_id=labeler.id))
    assert written_prompts.write(session, labeler, closed.id, **ok).id
    used = written_prompts.write(session, labeler, project.id, **{**ok, "kind": "user_based", "use_case": "Email help"})
    assert used.use_case == "Email help"
    assert [p.id for p in written_prompts.open_projects(session, labeler)] == [closed.id, project.id]


def test_near_duplicates_are_pointed_out_and_rejects_need_a_reason(session, make_user):
    labeler, admin = make_user("w@example.com"), make_user("a@example.com", Role.admin)
    project = _project(session)
    row = written_prompts.write(
        session, labeler, project.id, kind="plain", text="summarize this ARTICLE about bees.", category="summarization"
    )
    # Imported after it was written (the write itself would have been told: see the next test).
    (existing,) = make_prompts(session, project, ["Summarize   this article about bees."])
    existing.prefix_hash = written_prompts.intake.prefix_hash(existing.text)
    session.commit()  # (a refused decision rolls back its whole step, as a request would)
    assert written_prompts.near_duplicates(session, project.id, [row]) == {row.id: existing.id}
    assert f"Prompt {existing.id}" in _refused(written_prompts.accept, session, admin, project.id, row.id)
    assert "Say why" in _refused(written_prompts.reject, session, admin, project.id, row.id, "  ")
    done = written_prompts.reject(session, admin, project.id, row.id, "Already have it.")
    assert (
        done.status == ReviewStatus.rejected and done.reason == "Already have it." and done.reviewed_by_id == admin.id
    )
    assert [r.id for r in written_prompts.own(session, labeler, project.id)] == [row.id]
    assert "Unknown kind" in _refused(
        written_prompts.set_settings, session, project.id, targets={"kind": {"x": 1}}, cases=[]
    )
    assert "whole number" in _refused(
        written_prompts.set_settings, session, project.id, targets={"kind": {"plain": -1}}, cases=[]
    )


def test_a_labeler_writing_a_prompt_the_project_has_is_told_at_once(session, client, make_user):
    labeler, other = make_user("w@example.com"), make_user("v@example.com")
    project = _project(session)
    (existing,) = make_prompts(session, project, ["Summarize   this article about bees."])
    existing.prefix_hash = written_prompts.intake.prefix_hash(existing.text)
    plain = {"kind": "plain", "category": "summarization"}
    told = _refused(
        written_prompts.write, session, labeler, project.id, text="summarize this ARTICLE about bees.", **plain
    )
    assert "already has this prompt" in told
    written_prompts.write(session, labeler, project.id, text="Explain how bees dance.", **plain)
    told = _refused(written_prompts.write, session, other, project.id, text="Explain how bees dance.", **plain)
    assert "waits for review" in told
    assert written_prompts.write(session, other, project.id, text="Explain how ants talk.", **plain).id
    session.commit()

    login(client, labeler.email)  # the page: told, with the text kept to change it
    form = {"csrf_token": csrf_of(client, f"/label/write/{project.id}"), **plain}
    page = client.post(f"/label/write/{project.id}", data={**form, "text": "Summarize this article about bees."})
    assert page.status_code == 422 and "already has this prompt" in page.text and "about bees.</textarea>" in page.text


def test_the_api_writes_lists_reviews_and_refuses_bad_input(session, client, make_user):
    admin, labeler = make_user("admin@example.com", Role.admin), make_user("w@example.com")
    project = _project(session, targets=False)
    session.commit()
    a, w = bearer(session, admin), bearer(session, labeler)
    base = f"/api/v1/projects/{project.id}"
    body = {"kind": "few_shot", "text": FEW_SHOT, "category": "generation"}
    assert client.post(f"{base}/written-prompts", json=body, headers=w).status_code == 409, "no targets yet"
    settings = {"targets": {"kind": {"few_shot": 3}}, "use_cases": ["Email help", " ", "Email help"]}
    assert client.put(f"{base}/written-prompt-settings", json=settings, headers=w).status_code == 403
    r = client.put(f"{base}/written-prompt-settings", json=settings, headers=a)
    assert r.status_code == 200 and r.json() == {
        "targets": {"kind": {"few_shot": 3}, "category": {}},
        "use_cases": ["Email help"],
    }
    bad = client.put(f"{base}/written-prompt-settings", json={"targets": {"nope": {}}}, headers=a)
    assert bad.status_code == 422 and "per 'kind'" in bad.json()["detail"]

    created = client.post(f"{base}/written-prompts", json=body, headers=w)
    assert created.status_code == 201 and created.json()["status"] == "pending"
    for bad_body, status in (
        ({**body, "text": ""}, 422),
        ({**body, "text": "a\x00b"}, 422),
        ({**body, "category": "x"}, 422),
        ({**body, "kind": "x"}, 422),
        ({"text": "no kind"}, 422),
    ):
        r = client.post(f"{base}/written-prompts", json=bad_body, headers=w)
        assert r.status_code == status and "detail" in r.json(), (bad_body, r.text)
    assert client.post("/api/v1/projects/999999/written-prompts", json=body, headers=w).status_code == 404

    listed = client.get(f"{base}/written-prompts", headers=a)
    assert listed.status_code == 200 and [i["author"] for i in listed.json()] == ["w@example.com"]
    assert client.get(f"{base}/written-prompts", headers=w).status_code == 403
    wid = created.json()["id"]
    assert client.post(f"{base}/written-prompts/{wid}/reject", json={"reason": ""}, headers=a).status_code == 422
    ok = client.post(f"{base}/written-prompts/{wid}/accept", json={"category": "open_qa"}, headers=a)
    assert ok.status_code == 200 and ok.json()["status"] == "accepted" and ok.json()["reviewed_by"] == admin.email
    assert ok.json()["edited"] and ok.json()["prompt_id"]
    assert client.post(f"{base}/written-prompts/{wid}/accept", json={}, headers=a).status_code == 409
    assert client.post(f"{base}/written-prompts/999999/accept", json={}, headers=a).status_code == 404
    mine = client.get(f"{base}/written-prompts/mine", headers=w).json()
    assert [(m["id"], m["status"], m["category"]) for m in mine] == [(wid, "accepted", "open_qa")]


def test_the_pages_write_and_review(session, client, make_user):
    admin, labeler = make_user("admin@example.com", Role.admin), make_user("w@example.com")
    project = _project(session)
    session.commit()
    login(client, labeler.email)
    home = client.get("/label")
    assert f'href="/label/write/{project.id}"' in home.text
    page = client.get(f"/label/write/{project.id}?kind=few_shot")
    assert page.status_code == 200 and "Query:" in page.text and 'data-testid="guidelines"' in page.text
    token = csrf_of(client, f"/label/write/{project.id}")
    form = {"csrf_token": token, "kind": "plain", "text": "", "category": "generation"}
    refused = client.post(f"/label/write/{project.id}", data=form)
    assert refused.status_code == 422 and "is empty" in refused.text
    refused = client.post(f"/label/write/{project.id}", data={**form, "text": "Hi", "category": "nope"})
    assert refused.status_code == 422 and "Unknown category" in refused.text
    sent = client.post(f"/label/write/{project.id}", data={**form, "text": "Plan a picnic.", "has_pii": "on"})
    assert sent.status_code == 303
    assert "Plan a picnic." in client.get(f"/label/write/{project.id}").text
    other = _project(session, "No writing", targets=False)
    session.commit()
    assert client.get(f"/label/write/{other.id}").status_code == 409
    assert client.post(f"/label/write/{other.id}", data={**form, "text": "Hi"}).status_code == 409

    client.cookies.clear()
    login(client, admin.email)
    review = client.get(f"/admin/projects/{project.id}/written")
    assert review.status_code == 200 and "Plan a picnic." in review.text and "w@example.com" in review.text
    assert "contains personal information" in review.text
    (row,) = written_prompts.listing(session, project.id)
    token = csrf_of(client, f"/admin/projects/{project.id}/written")
    url = f"/admin/projects/{project.id}/written/{row.id}"
    client.post(
        f"{url}/accept", data={"csrf_token": token, "text": "Plan a picnic for six.", "category": "brainstorming"}
    )
    session.expire_all()
    prompt = session.scalar(select(Prompt).where(Prompt.project_id == project.id))
    assert prompt.text == "Plan a picnic for six." and prompt.category == PromptCategory.brainstorming
    settings = {"csrf_token": token, "kind_few_shot": "5", "use_cases": "Email help\nTrip planning"}
    assert client.post(f"/admin/projects/{project.id}/written/settings", data=settings).status_code == 303
    session.expire_all()
    assert session.get(Project, project.id).written_use_cases == ["Email help", "Trip planning"]
    bad = client.post(f"/admin/projects/{project.id}/written/settings", data={**settings, "kind_plain": "x"})
    assert bad.status_code == 303 and "whole number" in client.get(f"/admin/projects/{project.id}/written").text
