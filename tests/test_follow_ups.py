"""Labelers grow conversations (issue 25, Open-Assistant's prompter replies), on SQLite and Postgres:
after an admin accepts a demonstration, a labeler writes the user's next turn; accepted like a
written prompt, it becomes a prompt one turn deeper with its demonstration task, up to the project's
follow_up_turns; what can't be continued is refused saying why."""

import pytest
from sqlalchemy import select

from app import conversation
from app.models import Demonstration, Prompt, ReviewStatus, Role, Task, TaskKind
from app.services import ServiceError, review, written_prompts
from tests.conftest import csrf_of, login
from tests.worker_helpers import add_demonstrations, make_project


def _refused(fn, *args, **kwargs) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        fn(*args, **kwargs)
    assert 400 <= info.value.status_code < 500
    return info.value


def _setup(session, make_user, turns=3):
    labeler, writer = make_user("demo@example.com"), make_user("writer@example.com")
    admin = make_user("admin@example.com", Role.admin)
    project = make_project(session, "Chat")
    written_prompts.set_settings(session, project.id, targets={}, cases=[], follow_up_turns=turns)
    (demo,) = add_demonstrations(
        session, project, [("What is a prime number?", "A number with two divisors.")], labeler
    )
    return project, demo, labeler, writer, admin


def test_a_follow_up_becomes_a_prompt_one_turn_deeper_with_its_demonstration_task(session, make_user):
    project, demo, _, writer, admin = _setup(session, make_user)
    assert written_prompts.follow_up_candidates(session, writer, project) == [], "only accepted demonstrations"
    review.decide(session, admin, "demonstration", demo.id, "accepted")
    assert written_prompts.follow_up_candidates(session, writer, project) == [demo]

    row = written_prompts.write_follow_up(session, writer, project.id, demo.id, text="  Is 1 one of them?\r\n")
    assert (
        row.kind == written_prompts.FOLLOW_UP and row.status == ReviewStatus.pending and row.text == "Is 1 one of them?"
    )
    assert written_prompts.follow_up_candidates(session, writer, project) == [], "one follow-up per labeler and answer"
    assert (
        "already" in _refused(written_prompts.write_follow_up, session, writer, project.id, demo.id, text="x").message
    )

    done = written_prompts.accept(session, admin, project.id, row.id)
    prompt = session.get(Prompt, done.prompt_id)
    assert prompt.messages == [
        {"role": "user", "content": "What is a prime number?"},
        {"role": "assistant", "content": "A number with two divisors."},
        {"role": "user", "content": "Is 1 one of them?"},
    ]
    assert prompt.text == conversation.render(prompt.messages) and prompt.prefix_hash is None
    assert prompt.content_hash == conversation.content_hash(prompt.messages)
    assert prompt.meta["follows_demonstration_id"] == demo.id and prompt.meta["follows_prompt_id"] == demo.prompt_id
    task = session.scalar(select(Task).where(Task.prompt_id == prompt.id))
    assert task is not None and task.kind == TaskKind.demonstration
    # The same conversation again (another labeler wrote the same turn) is refused, not duplicated.
    other = make_user("other@example.com")
    again = written_prompts.write_follow_up(session, other, project.id, demo.id, text="Is 1 one of them?")
    assert "same conversation" in _refused(written_prompts.accept, session, admin, project.id, again.id).message


def test_conversations_stop_growing_at_the_projects_depth(session, make_user):
    project, demo, labeler, writer, admin = _setup(session, make_user, turns=2)
    review.decide(session, admin, "demonstration", demo.id, "accepted")
    row = written_prompts.write_follow_up(session, writer, project.id, demo.id, text="And 2?")
    deeper = session.get(Prompt, written_prompts.accept(session, admin, project.id, row.id).prompt_id)
    task = session.scalar(select(Task).where(Task.prompt_id == deeper.id))
    answer = Demonstration(task_id=task.id, prompt_id=deeper.id, user_id=labeler.id, text="2 is prime.")
    session.add(answer)
    session.flush()
    review.decide(session, admin, "demonstration", answer.id, "accepted")
    assert conversation.turns(deeper.messages) == 2
    assert written_prompts.follow_up_candidates(session, make_user("third@example.com"), project) == [demo]
    message = _refused(written_prompts.write_follow_up, session, writer, project.id, answer.id, text="And 3?").message
    assert "2 user turns already" in message


def test_what_cant_be_continued_is_refused_saying_why(session, make_user):
    project, demo, _, writer, admin = _setup(session, make_user)
    assert (
        "accepted" in _refused(written_prompts.write_follow_up, session, writer, project.id, demo.id, text="x").message
    )
    review.decide(session, admin, "demonstration", demo.id, "accepted")
    assert "empty" in _refused(written_prompts.write_follow_up, session, writer, project.id, demo.id, text=" ").message
    assert _refused(written_prompts.write_follow_up, session, writer, project.id, 10**6, text="x").status_code == 404
    row = written_prompts.write_follow_up(session, writer, project.id, demo.id, text="Why?")
    review.decide(session, admin, "demonstration", demo.id, "rejected", "wrong")  # the answer changed its status
    assert "no longer accepted" in _refused(written_prompts.accept, session, admin, project.id, row.id).message
    written_prompts.set_settings(session, project.id, targets={}, cases=[], follow_up_turns=0)
    assert _refused(written_prompts.write_follow_up, session, writer, project.id, demo.id, text="x").status_code == 409
    assert (
        "2 to 20"
        in _refused(written_prompts.set_settings, session, project.id, targets={}, cases=[], follow_up_turns=1).message
    )


def test_the_pages_grow_a_conversation(client, session, make_user):
    project, demo, _, writer, admin = _setup(session, make_user)
    review.decide(session, admin, "demonstration", demo.id, "accepted")
    session.commit()
    login(client, "writer@example.com")
    home = client.get("/label")
    assert "Continue conversations" in home.text and f"/label/follow-up/{project.id}" in home.text
    page = client.get(f"/label/follow-up/{project.id}")
    assert (
        page.status_code == 200
        and "A number with two divisors." in page.text
        and "User turn 2 of at most 3" in page.text
    )
    token = csrf_of(client, f"/label/follow-up/{project.id}")
    empty = client.post(
        f"/label/follow-up/{project.id}", data={"csrf_token": token, "demonstration_id": demo.id, "text": "  "}
    )
    assert empty.status_code == 422 and "The next turn is empty" in empty.text
    sent = client.post(
        f"/label/follow-up/{project.id}",
        data={"csrf_token": token, "demonstration_id": demo.id, "text": "Is 1 prime?"},
        follow_redirects=True,
    )
    assert "sent for review" in sent.text and "No conversation to continue" in sent.text
    client.post("/logout", data={"csrf_token": token})
    login(client, "admin@example.com")
    listing = client.get(f"/admin/projects/{project.id}/written")
    assert "Follow-up" in listing.text and "The conversation it continues (2 messages)" in listing.text
