"""Review of submissions (issue 16), on SQLite and Postgres: an admin's decision on a demonstration,
ranking or comparison (reason required to reject, reversible, who and when), rejected ones left out
of snapshots and exports, the labeler's history, flags (retire / dismiss), disagreements (one more
labeler, gold from an answer), and the JSON API with its errors."""

import re

from sqlalchemy import select

from app.models import (
    Comparison,
    Completion,
    Demonstration,
    Project,
    Ranking,
    ReviewStatus,
    Role,
    Skip,
    SkipReason,
    SubmissionRevision,
    Task,
)
from app.services import accounts, exports, review, submissions, tasks
from runconfig import DataFilter
from tests.conftest import PASSWORD, csrf_of, login
from tests.worker_helpers import add_demonstrations, add_ranking, make_prompts
from worker.snapshots import snapshot_demonstrations

HTMX = {"HX-Request": "true"}


def _project(session, name="Review") -> Project:
    project = Project(name=name, k=2, overlap=1)
    session.add(project)
    session.flush()
    return project


def _decide(client, kind: str, sub_id: int, decision: str, reason: str = "", htmx: bool = True, revision=1):
    data = {"decision": decision, "reason": reason, "csrf_token": csrf_of(client, "/admin"), "back": "/admin"}
    if revision is not None:
        data["revision"] = revision
    return client.post(f"/admin/review/{kind}/{sub_id}", data=data, headers=HTMX if htmx else {})


def test_a_rejected_demonstration_leaves_training_and_exports_and_the_labeler_sees_why(
    session, admin_client, make_user, app
):
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    demos = add_demonstrations(session, project, [("Say hi", "Hi!"), ("Count to 3", "1 2 3\n4 5 6")], labeler)
    session.commit()

    page = admin_client.get(f"/admin/projects/{project.id}/review")
    assert page.status_code == 200 and "2 pending" in page.text
    assert "1 2 3\n4 5 6" in page.text, "the demonstration is shown whole, with its line breaks"

    refused = _decide(admin_client, "demonstration", demos[1].id, "rejected")
    assert refused.status_code == 200 and "Say why it is rejected" in refused.text
    card = _decide(admin_client, "demonstration", demos[1].id, "rejected", "Counts past 3.")
    assert card.status_code == 200 and 'data-review="rejected"' in card.text and "admin@example.com" in card.text
    session.expire_all()
    rejected = session.get(Demonstration, demos[1].id)
    assert rejected.review == ReviewStatus.rejected and rejected.review_reason == "Counts past 3."
    assert rejected.reviewed_by_id == admin_client.user.id and rejected.reviewed_at is not None

    train, valid, snap = snapshot_demonstrations(session, project.id, DataFilter(valid_splits=["train"]))
    assert demos[1].id not in snap.rows["demonstrations"] and snap.counts["demonstrations_rejected"] == 1
    assert "Left out 1 demonstration(s) an admin rejected." in snap.notes
    rows = list(exports.sft_rows(session, exports.ExportFilter(project.id)))
    assert [r["completion"] for r in rows] == ["Hi!"]

    # The labeler's history: the answer whole, the decision and its reason.
    admin_client.cookies.clear()
    assert login(admin_client, labeler.email, PASSWORD).status_code == 303
    history = admin_client.get("/label/history").text
    assert "Counts past 3." in history and "rejected" in history and "1 2 3\n4 5 6" in history
    assert "not reviewed" in history


def test_a_decision_can_be_undone_and_a_plain_form_post_redirects(session, admin_client, make_user):
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi!")], labeler)
    session.commit()
    done = _decide(admin_client, "demonstration", demo.id, "accepted", htmx=False)
    assert done.status_code == 303
    session.expire_all()
    assert session.get(Demonstration, demo.id).review == ReviewStatus.accepted
    assert 'data-review="pending"' in _decide(admin_client, "demonstration", demo.id, "pending").text
    session.expire_all()
    undone = session.get(Demonstration, demo.id)
    assert undone.review == ReviewStatus.pending and undone.reviewed_by_id is None and undone.review_reason == ""
    assert _decide(admin_client, "demonstration", 999999, "accepted").status_code == 404
    assert _decide(admin_client, "nonsense", demo.id, "accepted").status_code == 404


def test_rankings_show_as_the_labeler_saw_them_and_rejected_ones_leave_the_reward_snapshot(
    session, admin_client, make_user
):
    from worker.snapshots import snapshot_rankings

    alice = make_user("alice@example.com", Role.labeler)
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Pick the best"])
    ranking = add_ranking(session, project, prompt, ["first answer", "second answer"], [[1], [0]], alice)
    ranking.display_order = list(reversed(ranking.display_order))
    ranking.ratings = {str(ranking.order[0][0]): {"likert": 6, "flags": []}}
    (other,) = make_prompts(session, project, ["Pick again"])
    kept = add_ranking(session, project, other, ["x", "y"], [[0], [1]], alice)
    session.commit()
    page = admin_client.get(f"/admin/projects/{project.id}/review?kind=ranking").text
    card = page[page.index(f'id="review-ranking-{ranking.id}"') :]
    # Shown as A = the second answer (the labeler's order), ranked 1, with its Likert rating.
    assert re.search(r"<strong>A</strong>\s*· rank 1\s*· Likert 6/7\s*</div>second answer", card), card[:1500]
    assert _decide(admin_client, "ranking", ranking.id, "rejected", "Random order.").status_code == 200
    _, _, snap = snapshot_rankings(session, project.id, DataFilter(valid_splits=["train"]))
    assert snap.rows["rankings"] == [kept.id] and snap.counts["rankings_rejected"] == 1


def bearer(session, user) -> dict[str, str]:
    token = accounts.create_api_token(session, user)
    session.commit()
    return {"Authorization": f"Bearer {token}"}


def test_the_api_reviews_and_refuses_bad_decisions(session, client, make_user):
    admin = make_user("admin@example.com", Role.admin)
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi!")], labeler)
    session.commit()
    headers = bearer(session, admin)
    listed = client.get(f"/api/v1/projects/{project.id}/review", headers=headers)
    assert listed.status_code == 200
    body = listed.json()
    assert body["counts"]["pending"] == 1 and body["items"][0]["text"] == "Hi!" and body["next_after"] is None
    ok = client.post(
        "/api/v1/reviews",
        json={"kind": "demonstration", "submission_id": demo.id, "decision": "rejected", "reason": "Too short."},
        headers=headers,
    )
    assert ok.status_code == 200 and ok.json()["review"] == "rejected" and ok.json()["reviewed_by"] == admin.email
    for bad, status in (
        ({"kind": "demonstration", "submission_id": demo.id, "decision": "rejected"}, 400),
        ({"kind": "demonstration", "submission_id": demo.id, "decision": "rejected", "reason": "a\x00b"}, 400),
        ({"kind": "demonstration", "submission_id": demo.id, "decision": "maybe"}, 422),
        ({"kind": "demonstration", "submission_id": 999999, "decision": "accepted"}, 404),
        ({"kind": "demonstration", "submission_id": demo.id, "decision": "rejected", "reason": "x" * 2001}, 400),
    ):
        r = client.post("/api/v1/reviews", json=bad, headers=headers)
        assert r.status_code == status and "detail" in r.json(), (bad, r.text)
    assert client.post("/api/v1/reviews", json=bad, headers=bearer(session, labeler)).status_code == 403
    session.expire_all()
    assert session.get(Demonstration, demo.id).review_reason == "Too short.", "a refused decision changed nothing"


def test_flags_are_listed_and_retiring_the_prompt_retires_its_open_tasks(session, admin_client, make_user):
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    prompts = make_prompts(session, project, ["My card is 4111 1111 1111 1111", "Fine prompt"])
    flagged, fine = tasks.create_demonstration_tasks(session, project, prompts)
    session.add_all(
        [
            Skip(task_id=flagged.id, user_id=labeler.id, reason=SkipReason.pii, note="card number"),
            Skip(task_id=fine.id, user_id=labeler.id, reason=SkipReason.nonsense, note=""),
        ]
    )
    session.commit()
    page = admin_client.get(f"/admin/projects/{project.id}/flags").text
    assert "card number" in page and "4111 1111 1111 1111" in page and "Fine prompt" in page
    skip_ids = {s.task_id: s.id for s in session.scalars(select(Skip))}
    token = csrf_of(admin_client, "/admin")
    r = admin_client.post(
        f"/admin/projects/{project.id}/flags/{skip_ids[flagged.id]}/retire", data={"csrf_token": token}
    )
    assert r.status_code == 303
    r = admin_client.post(f"/admin/projects/{project.id}/flags/{skip_ids[fine.id]}/dismiss", data={"csrf_token": token})
    assert r.status_code == 303
    session.expire_all()
    assert session.get(Task, flagged.id).status.value == "retired" and session.get(Task, fine.id).status.value == "open"
    assert review.open_flags(session, project.id) == []
    assert "No open flags." in admin_client.get(f"/admin/projects/{project.id}/flags").text
    other = _project(session, "Other")
    session.commit()
    missing = admin_client.post(
        f"/admin/projects/{other.id}/flags/{skip_ids[fine.id]}/retire", data={"csrf_token": token}
    )
    assert missing.status_code == 404, "a flag of another project is not this project's"


def test_disagreements_show_side_by_side_and_one_more_labeler_reopens_the_task(session, admin_client, make_user):
    alice, bob = make_user("alice@example.com", Role.labeler), make_user("bob@example.com", Role.labeler)
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Which is better?"])
    first = add_ranking(session, project, prompt, ["red", "blue"], [[0], [1]], alice)
    task = session.get(Task, first.task_id)
    second = Ranking(
        task_id=task.id, user_id=bob.id, order=list(reversed(first.order)), display_order=first.display_order
    )
    session.add(second)
    task.done_count, task.required, task.status = 2, 2, task.status.closed
    session.commit()

    low = admin_client.get(f"/admin/projects/{project.id}/review?kind=ranking&status=all&agreement_below=50").text
    assert f"review-ranking-{first.id}" in low and f"review-ranking-{second.id}" in low
    nobody = admin_client.get(f"/admin/projects/{project.id}/review?kind=ranking&agreement_below=50&labeler=999").text
    assert "Nothing to review" in nobody
    page = admin_client.get(f"/admin/projects/{project.id}/disagreements").text
    assert f"Task #{task.id}" in page and "0% agreement" in page
    assert "alice@example.com" in page and "bob@example.com" in page
    api = admin_client.get(
        f"/api/v1/projects/{project.id}/disagreements", headers=bearer(session, admin_client.user)
    ).json()
    assert [(d["task_id"], d["agreement"], len(d["items"])) for d in api] == [(task.id, 0.0, 2)]
    token = csrf_of(admin_client, "/admin")
    assert admin_client.post(f"/admin/tasks/{task.id}/more-labels", data={"csrf_token": token}).status_code == 303
    session.expire_all()
    task = session.get(Task, task.id)
    assert task.required == 3 and task.status.value == "open"
    r = admin_client.post(f"/admin/review/ranking/{second.id}/gold", data={"csrf_token": token})
    assert r.status_code == 303
    session.expire_all()
    assert session.get(Task, task.id).gold == {"order": second.order}
    # A rejected answer no longer counts: the task agrees with itself and leaves the page.
    assert _decide(admin_client, "ranking", second.id, "rejected", "Backwards.").status_code == 200
    assert f"Task #{task.id}" not in admin_client.get(f"/admin/projects/{project.id}/disagreements").text


def test_comparisons_show_a_and_b_as_shown_with_the_reason(session, admin_client, make_user):
    alice = make_user("alice@example.com", Role.labeler)
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Compare these"])
    a, b = Completion(prompt_id=prompt.id, text="answer one"), Completion(prompt_id=prompt.id, text="answer two")
    session.add_all([a, b])
    session.flush()
    task = tasks.create_comparison_task(session, project, prompt, a.id, b.id)
    session.add(
        Comparison(
            task_id=task.id, user_id=alice.id, a_completion_id=b.id, b_completion_id=a.id, choice="a", reason="clearer"
        )
    )
    session.commit()
    page = admin_client.get(f"/admin/projects/{project.id}/review?kind=comparison").text
    assert re.search(r"<strong>A</strong>\s*· <strong>chosen</strong>\s*</div>answer two", page), page[-3000:]
    assert "reason: clearer" in page


def test_a_labeler_revises_a_demonstration_until_it_is_reviewed_and_runs_record_the_revision(
    session, admin_client, make_user
):
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi")], labeler)
    session.commit()
    writer = admin_client  # the same browser, signed in as the labeler
    writer.cookies.clear()
    assert login(writer, labeler.email, PASSWORD).status_code == 303
    assert "Revise" in writer.get("/label/history").text
    token = csrf_of(writer, f"/label/demonstrations/{demo.id}/revise")
    r = writer.post(f"/label/demonstrations/{demo.id}/revise", data={"text": "Hello there!", "csrf_token": token})
    assert r.status_code == 303
    empty = writer.post(f"/label/demonstrations/{demo.id}/revise", data={"text": "  ", "csrf_token": token})
    assert empty.status_code == 400 and "empty" in empty.text
    session.expire_all()
    revised = session.get(Demonstration, demo.id)
    assert (revised.text, revised.revision) == ("Hello there!", 2)
    (earlier,) = session.scalars(select(SubmissionRevision))
    assert (earlier.kind.value, earlier.submission_id, earlier.revision, earlier.answer) == (
        "demonstration",
        demo.id,
        1,
        {"text": "Hi"},
    )
    _, _, snap = snapshot_demonstrations(session, project.id, DataFilter(valid_splits=["train"]))
    assert snap.record()["revisions"] == {"demonstrations": {str(demo.id): 2}}
    assert snap.manifest[0][-1] == "Hello there!"

    other = make_user("other@example.com", Role.labeler)
    assert review.decide(session, other, "demonstration", demo.id, "accepted") is not None  # (any user object)
    refused = writer.post(f"/label/demonstrations/{demo.id}/revise", data={"text": "Too late", "csrf_token": token})
    assert refused.status_code == 409 and "can no longer be revised" in refused.text
    assert "Revise</a>" not in writer.get("/label/history").text
    assert writer.get("/label/demonstrations/999999/revise").status_code == 404


def test_labelers_page_shows_acceptance_and_leaves_a_labeler_out_of_new_runs(session, admin_client, make_user):
    from app.services import runs

    good, sloppy = make_user("good@example.com", Role.labeler), make_user("sloppy@example.com", Role.labeler)
    project = _project(session)
    add_demonstrations(session, project, [("Say hi", "Hi!")], good)
    demos = add_demonstrations(session, project, [("A", "x"), ("B", "y"), ("C", "z")], sloppy)
    session.commit()
    for demo, decision in zip(demos, ("rejected", "rejected", "accepted"), strict=True):
        review.decide(session, admin_client.user, "demonstration", demo.id, decision, "meh")
    page = admin_client.get(f"/admin/labelers?project={project.id}").text
    row = page[page.index("sloppy@example.com") :]
    assert "33.3%" in row[:3000] and "of 3 reviewed" in row[:3000]

    token = csrf_of(admin_client, "/admin")
    r = admin_client.post(f"/admin/labelers/{sloppy.id}/training", data={"csrf_token": token, "left_out": "1"})
    assert r.status_code == 303
    run = runs.create_run(session, project_id=project.id, kind="sft", config={}, default_model="tiny")
    assert sloppy.id in run.data_filter["exclude_labelers"] and run.data_filter["left_out_by_admin"] == [sloppy.id]
    session.commit()
    assert "left out" in admin_client.get("/admin/labelers").text
    r = admin_client.post(f"/admin/labelers/{sloppy.id}/training", data={"csrf_token": token, "left_out": "0"})
    assert r.status_code == 303
    later = runs.create_run(session, project_id=project.id, kind="sft", config={}, default_model="tiny")
    assert "left_out_by_admin" not in later.data_filter and sloppy.id not in later.data_filter.get(
        "exclude_labelers", []
    )
    assert run.data_filter["exclude_labelers"] == [sloppy.id], "a run keeps the data it was made with"


def test_a_labeler_revises_a_ranking_and_a_comparison_in_their_task_screens(session, client, make_user):
    from worker.snapshots import snapshot_rankings

    alice = make_user("alice@example.com", Role.labeler)
    project = _project(session)
    (prompt,) = make_prompts(session, project, ["Pick one"])
    ranking = add_ranking(session, project, prompt, ["first", "second"], [[0], [1]], alice)
    a, b = ranking.display_order
    ranking.ratings = {str(a): {"likert": 6, "flags": []}, str(b): {"likert": 3, "flags": []}}
    (other,) = make_prompts(session, project, ["Compare"])
    x, y = Completion(prompt_id=other.id, text="x"), Completion(prompt_id=other.id, text="y")
    session.add_all([x, y])
    session.flush()
    task = tasks.create_comparison_task(session, project, other, x.id, y.id)
    comparison = Comparison(task_id=task.id, user_id=alice.id, a_completion_id=x.id, b_completion_id=y.id, choice="a")
    session.add(comparison)
    session.commit()
    assert login(client, alice.email, PASSWORD).status_code == 303

    page = client.get(f"/label/rankings/{ranking.id}/revise")
    assert page.status_code == 200 and "Save the revision" in page.text and "Skip or flag" not in page.text
    token = csrf_of(client, f"/label/rankings/{ranking.id}/revise")
    form = {"csrf_token": token, f"place_{a}": "2", f"place_{b}": "1", f"likert_{a}": "2", f"likert_{b}": "7"}
    unrated = client.post(f"/label/rankings/{ranking.id}/revise", data={**form, f"likert_{b}": ""})
    assert unrated.status_code == 400 and "Rate every output" in unrated.text
    assert client.post(f"/label/rankings/{ranking.id}/revise", data=form).status_code == 303
    session.expire_all()
    revised = session.get(Ranking, ranking.id)
    assert revised.order == [[b], [a]] and revised.revision == 2
    _, _, snap = snapshot_rankings(session, project.id, DataFilter(valid_splits=["train"]))
    assert snap.record()["revisions"] == {"rankings": {str(ranking.id): 2}}

    data = {"csrf_token": token, "choice": "tie", "reason": "Both fine."}
    assert client.post(f"/label/comparisons/{comparison.id}/revise", data=data).status_code == 303
    session.expire_all()
    assert session.get(Comparison, comparison.id).choice.value == "tie"
    kept = {(r.kind.value, r.revision): r.answer for r in session.scalars(select(SubmissionRevision))}
    assert kept[("comparison", 1)] == {"choice": "a", "reason": ""}
    assert kept[("ranking", 1)]["order"] == [[a], [b]]
    assert client.get("/label/nonsense/1/revise").status_code == 404
    assert client.get(f"/label/rankings/{ranking.id + 100}/revise").status_code == 404


def test_a_decision_never_lands_on_a_revision_the_admin_did_not_see(session, client, admin_client, make_user):
    """Issue 27, finding 2: the labeler revises after the admin opened the review page; the admin's
    decision names the revision read and is refused (409) with the answer as it is now."""
    labeler = make_user("writer@example.com", Role.labeler)
    project = _project(session)
    page_demo, api_demo, old_client_demo = add_demonstrations(
        session, project, [("Say hi", "Hi"), ("Say bye", "Bye"), ("Say yes", "Yes")], labeler
    )
    session.commit()
    page = admin_client.get(f"/admin/projects/{project.id}/review").text
    assert 'name="revision" value="1"' in page, "the card's form carries the revision shown"
    submissions.revise_demonstration(session, labeler, page_demo.id, "Hi, and a rude word")
    submissions.revise_demonstration(session, labeler, api_demo.id, "Bye, and a rude word")

    # The page (htmx): 409, the card again with the new text, its new revision and why.
    stale = _decide(admin_client, "demonstration", page_demo.id, "accepted", revision=1)
    assert stale.status_code == 409 and "Hi, and a rude word" in stale.text, stale.text[-2000:]
    assert 'name="revision" value="2"' in stale.text and "revised demonstration" in stale.text
    assert 'data-review="pending"' in stale.text
    # Without JavaScript: back to the queue (which shows revision 2) with the message.
    plain = _decide(admin_client, "demonstration", page_demo.id, "accepted", htmx=False, revision=1)
    assert plain.status_code == 303
    assert "revised demonstration" in admin_client.get(plain.headers["location"]).text
    # A form that names no revision (a page from before) decides nothing either.
    bare = _decide(admin_client, "demonstration", page_demo.id, "accepted", revision=None)
    assert "reload it" in bare.text and 'data-review="pending"' in bare.text
    session.expire_all()
    assert session.get(Demonstration, page_demo.id).review == ReviewStatus.pending, "nothing was decided"
    ok = _decide(admin_client, "demonstration", page_demo.id, "accepted", revision=2)
    assert ok.status_code == 200 and 'data-review="accepted"' in ok.text

    # The API: the queue names each item's revision; a stale one is 409 with the current revision and text.
    headers = bearer(session, admin_client.user)
    listed = client.get(f"/api/v1/projects/{project.id}/review", headers=headers).json()["items"]
    assert {i["submission_id"]: i["revision"] for i in listed} == {api_demo.id: 2, old_client_demo.id: 1}
    body = {"kind": "demonstration", "submission_id": api_demo.id, "decision": "accepted", "revision": 1}
    r = client.post("/api/v1/reviews", json=body, headers=headers)
    assert r.status_code == 409, r.text
    conflict = r.json()
    assert conflict["revision"] == 2 and conflict["item"]["text"] == "Bye, and a rude word"
    assert conflict["item"]["review"] == "pending" and "revision 1" in conflict["detail"]
    session.expire_all()
    assert session.get(Demonstration, api_demo.id).review == ReviewStatus.pending
    assert client.post("/api/v1/reviews", json=body | {"revision": 2}, headers=headers).json()["review"] == "accepted"
    # Optional for older clients: without it the decision applies to what is current.
    old = {"kind": "demonstration", "submission_id": old_client_demo.id, "decision": "accepted"}
    assert client.post("/api/v1/reviews", json=old, headers=headers).status_code == 200
    schema = client.get("/openapi.json").json()
    assert "409" in schema["paths"]["/api/v1/reviews"]["post"]["responses"]


def test_a_rejected_answer_is_fixed_and_goes_back_to_review(session, admin_client, make_user):
    # Issue 28: a rejected answer could not be fixed (Revise only while pending) and the home page
    # never said anything was rejected.
    labeler = make_user("fixer@example.com", Role.labeler)
    project = _project(session)
    (demo,) = add_demonstrations(session, project, [("Say hi", "Hi")], labeler)
    session.commit()
    review.decide(session, admin_client.user, "demonstration", demo.id, "rejected", "Greet properly.")
    writer = admin_client
    writer.cookies.clear()
    assert login(writer, labeler.email, PASSWORD).status_code == 303
    home = writer.get("/label").text
    assert "rejected 1 of your answers" in home
    assert "Fix and resubmit</a>" in writer.get("/label/history").text
    page = writer.get(f"/label/demonstrations/{demo.id}/revise").text
    assert "Greet properly." in page and "Send it back for review" in page
    token = csrf_of(writer, f"/label/demonstrations/{demo.id}/revise")
    same = writer.post(f"/label/demonstrations/{demo.id}/revise", data={"text": "Hi", "csrf_token": token})
    assert same.status_code in (400, 422) and "change it" in same.text
    fixed = writer.post(
        f"/label/demonstrations/{demo.id}/revise", data={"text": "Hello, nice to meet you!", "csrf_token": token}
    )
    assert fixed.status_code == 303
    session.expire_all()
    now = session.get(Demonstration, demo.id)
    assert (now.text, now.revision, now.review, now.review_reason) == (
        "Hello, nice to meet you!",
        2,
        ReviewStatus.pending,
        "",
    )
    (earlier,) = session.scalars(select(SubmissionRevision).where(SubmissionRevision.submission_id == demo.id))
    assert earlier.answer == {"text": "Hi", "rejected_because": "Greet properly."}
    assert "rejected" not in writer.get("/label").text.split("Your work", 1)[1][:400]
    # Back in the review queue, and decided on its new revision.
    assert review.decide(session, admin_client.user, "demonstration", demo.id, "accepted", revision=2) is not None
    refused = writer.post(f"/label/demonstrations/{demo.id}/revise", data={"text": "Again", "csrf_token": token})
    assert refused.status_code == 409 and "accepted" in refused.text
