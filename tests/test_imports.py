"""Prompt imports: formats, preview, all-or-nothing, duplicates, splits, every bad file."""

import gzip
import json
import re

import pytest
from sqlalchemy import func, select

from app import conversation
from app.models import ImportJob, ImportJobStatus, Project, Prompt, Split, Task, TaskKind
from app.services import ServiceError, imports, projects
from tests.conftest import SHARED_DATA, csrf_of


@pytest.fixture
def project(session) -> Project:
    p = projects.create_project(session, projects.ProjectSettings(name="Imports"))
    session.commit()
    return p


def _count(session, model=Prompt):
    session.commit()  # end this session's read snapshot to see the app's writes
    return session.scalar(select(func.count()).select_from(model))


def _jsonl(*objs) -> bytes:
    return "\n".join(json.dumps(o) for o in objs).encode()


def test_jsonl_import_with_duplicates_and_splits(session, project):
    data = _jsonl(
        {"prompt": "Write a haiku"},
        {"text": "Explain DNS", "reference": "It maps names"},
        "Plain string prompt",
        {"prompt": "Write a haiku "},
        {"prompt": "Pinned", "split": "test"},
    )
    result = imports.run_import(session, project, data, filename="p.jsonl")
    session.commit()
    texts = {p.text: p for p in session.scalars(select(Prompt))}
    assert set(texts) == {"Write a haiku", "Explain DNS", "Plain string prompt", "Pinned"}
    assert result.preview.duplicates == [(4, 1)]
    assert texts["Explain DNS"].reference == "It maps names"
    assert texts["Pinned"].split == Split.test
    # The same prompt gets the same split on every import (hash-based).
    for p in texts.values():
        if p.text != "Pinned":
            assert p.split == imports.split_for(imports.content_hash(p.text), 0.1, 0.1)
    again = imports.preview_import(session, project, data, filename="p.jsonl")
    assert again.records == [] and again.existing == [1, 2, 3, 5]
    with pytest.raises(ServiceError, match="already in this project"):
        imports.run_import(session, project, data, filename="p.jsonl")


def test_a_small_import_keeps_a_prompt_in_train_and_makes_its_task(session, project):
    drawn = ["Question 10?", "Question 15?"]  # both drawn into test at 10% / 10%
    assert {imports.split_for(imports.content_hash(t), 0.1, 0.1) for t in drawn} == {Split.test}
    result = imports.run_import(session, project, _jsonl(*drawn), filename="two.jsonl", create_tasks=True)
    session.commit()
    splits = dict(session.execute(select(Prompt.text, Prompt.split)).tuples().all())
    assert splits == {"Question 10?": Split.train, "Question 15?": Split.test}
    assert result.tasks_created == 1 and _count(session, Task) == 1
    # Splits the file sets are the file's: nothing is moved.
    pinned = _jsonl({"prompt": "Held out 1", "split": "test"}, {"prompt": "Held out 2", "split": "valid"})
    assert imports.run_import(session, project, pinned, filename="pinned.jsonl", create_tasks=True).tasks_created == 0


def test_split_shares_are_close_to_asked_and_reproducible():
    hashes = [imports.content_hash(f"prompt {i}") for i in range(5000)]
    splits = [imports.split_for(h, 0.1, 0.2) for h in hashes]
    assert splits == [imports.split_for(h, 0.1, 0.2) for h in hashes]
    assert 0.17 < splits.count(Split.test) / 5000 < 0.23
    assert 0.07 < splits.count(Split.valid) / 5000 < 0.13


def test_csv_import_and_broken_row(session, project):
    ok = b'id,prompt,reference\n1,"Hello, world",Hi\n2,"Line one\nline two",\n'
    result = imports.run_import(session, project, ok, filename="p.csv")
    assert sorted(p.text for p in result.prompts) == ["Hello, world", "Line one\nline two"]
    assert {p.external_id for p in result.prompts} == {"1", "2"}
    bad = b"prompt,reference\nfine,x\ntoo,many,columns\n"
    preview = imports.preview_import(session, project, bad, filename="q.csv")
    assert [e.line for e in preview.errors] == [3]
    with pytest.raises(ServiceError, match="no prompt column"):
        imports.preview_import(session, project, b"question_text,answer\nx,y\n", filename="q.csv")


def test_broken_line_imports_nothing_and_reports_line_numbers(session, project):
    data = b'{"prompt": "one"}\n{"prompt": "two"\n{"prompt": "three"}\n{"nope": 1}\n{"prompt": 5}\n'
    with pytest.raises(ServiceError) as exc:
        imports.run_import(session, project, data, filename="x.jsonl", create_tasks=True)
    message = exc.value.message
    assert "Nothing was imported: 3 lines" in message
    assert (
        "line 2: broken JSON" in message
        and "line 4: no prompt field" in message
        and "line 5: field 'prompt'" in message
    )
    assert _count(session) == 0 and _count(session, Task) == 0


@pytest.mark.parametrize(
    "data,message",
    [
        (b"", "empty"),
        (b"  \n\n ", "empty"),
        ('{"prompt": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
        (b"This is a plain text file,\nnot prompts.", "not JSON Lines"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
        (gzip.compress(b""), "empty"),
        (b"\x1f\x8b\x08garbage", "can't be decompressed"),
    ],
)
def test_whole_file_problems(session, project, data, message):
    with pytest.raises(ServiceError, match=message):
        imports.preview_import(session, project, data, filename="x.jsonl")


def test_too_large(session, project):
    with pytest.raises(ServiceError, match="limit is") as exc:
        imports.preview_import(session, project, b'{"prompt": "x"}\n' * 100, filename="x.jsonl", max_bytes=1000)
    assert exc.value.status_code == 413


def test_wrong_named_format_is_reported_per_line(session, project):
    preview = imports.preview_import(session, project, _jsonl({"prompt": "x"}), fmt="hh-rlhf")
    assert preview.errors and "chosen" in preview.errors[0].message


def test_formats_inline(session, project):
    hh = {
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away.",
    }
    alpaca = [
        {"instruction": "Add", "input": "2+2", "output": "4"},
        {"instruction": "Greet", "input": "", "output": "Hi"},
    ]
    tree = {
        "message_tree_id": "t1",
        "tree_state": "ready_for_export",
        "prompt": {
            "message_id": "m",
            "role": "prompter",
            "text": "Root?",
            "replies": [
                {"role": "assistant", "text": "second", "rank": 1},
                {"role": "assistant", "text": "best", "rank": 0},
            ],
        },
    }
    p = imports.preview_import(session, project, _jsonl(hh, tree))
    assert [(r.text, r.reference) for r in p.records] == [("Hi there", None), ("Root?", "best")]
    assert p.records[0].meta == {"chosen": "Hello!", "rejected": "Go away."}
    p = imports.preview_import(session, project, json.dumps(alpaca).encode(), filename="alpaca.json")
    assert [(r.text, r.reference) for r in p.records] == [("Add\n\n2+2", "4"), ("Greet", "Hi")]


@pytest.mark.parametrize(
    "path,fmt,expected",
    [
        ("hh-rlhf/helpful-base/test-first1554.jsonl.gz", "hh-rlhf", 1554),
        ("alpaca-5k/alpaca_5000.json.gz", "alpaca", 5000),
        ("oasst-en-100/en_100_tree.jsonl.gz", "oasst", 480),  # one prompt per prompter message
        ("oasst-en-100/en_100_message.jsonl.gz", "auto", 480),
        ("gsm8k/train.jsonl.gz", "auto", 7473),
    ],
)
def test_real_files_parse(session, project, path, fmt, expected):
    file = SHARED_DATA / path
    if not file.exists():
        pytest.skip(f"{file} is absent (shared test data)")
    preview = imports.preview_import(
        session, project, file.read_bytes(), filename=file.name, fmt=fmt, max_bytes=imports.CLI_MAX_IMPORT_BYTES
    )
    assert not preview.errors
    assert len(preview.records) + len(preview.duplicates) == expected
    assert all(r.text for r in preview.records)


def test_real_oasst_import_with_tasks(session, project):
    file = SHARED_DATA / "oasst-en-100/en_100_tree.jsonl.gz"
    if not file.exists():
        pytest.skip(f"{file} is absent (shared test data)")
    result = imports.run_import(session, project, file.read_bytes(), filename=file.name, create_tasks=True)
    session.commit()
    train = session.scalar(select(func.count()).select_from(Prompt).where(Prompt.split == Split.train))
    assert _count(session) == 480 and result.tasks_created == train
    # The labelers' tasks are open; the trees' own feedback sits on closed tasks (test_imported_feedback).
    labelers = select(func.count()).select_from(Task).where(Task.kind == TaskKind.demonstration, Task.status == "open")
    assert session.scalar(labelers) == train


def _upload(client, project, data: bytes, name="p.jsonl", **form):
    token = csrf_of(client, f"/admin/projects/{project.id}/import")
    fields = {"csrf_token": token, "format": "auto", "valid_pct": "10", "test_pct": "10", **form}
    return client.post(f"/admin/projects/{project.id}/import/preview", data=fields, files={"file": (name, data)})


def test_upload_preview_then_confirm(admin_client, session, project):
    r = _upload(admin_client, project, _jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}))
    assert r.status_code == 200 and "Import 2 prompts" in r.text and "line 3 = line 1" in r.text
    assert _count(session) == 0  # a preview writes nothing
    token = re.search(r'name="token" value="([0-9a-f]+)"', r.text).group(1)
    fields = {
        "csrf_token": csrf_of(admin_client, "/admin/projects"),
        "token": token,
        "filename": "p.jsonl",
        "format": "auto",
        "valid_pct": "10",
        "test_pct": "10",
        "create_tasks": "on",
    }
    r = admin_client.post(f"/admin/projects/{project.id}/import", data=fields)
    assert r.status_code == 303
    assert _count(session) == 2
    assert "Imported 2 prompts" in admin_client.get(r.headers["location"]).text
    r = admin_client.post(f"/admin/projects/{project.id}/import", data=fields)  # the upload is used up
    assert r.status_code == 400 and "choose the file again" in r.text
    assert _count(session) == 2


@pytest.mark.parametrize(
    "data,name,status,message",
    [
        (b"", "e.jsonl", 400, "empty"),
        ("prompt\nna\u00efve\n".encode("utf-16"), "u.csv", 400, "not UTF-8"),
        (b"x" * (imports.MAX_IMPORT_BYTES + 1), "big.jsonl", 413, "the limit is 8.0 MB"),
        (b"<html><body>hello</body></html>", "page.html", 400, "not JSON Lines"),
        (b'{"prompt": "ok"}\n{"prompt": \n', "b.jsonl", 422, '<td class="num">2</td><td>broken JSON'),
    ],
)
def test_upload_bad_files_show_a_message(admin_client, session, project, data, name, status, message):
    r = _upload(admin_client, project, data, name=name)
    assert r.status_code == status
    assert message in r.text
    assert 'name="token"' not in r.text
    assert _count(session) == 0


def test_upload_without_file(admin_client, project):
    token = csrf_of(admin_client, f"/admin/projects/{project.id}/import")
    r = admin_client.post(
        f"/admin/projects/{project.id}/import/preview", data={"csrf_token": token}, files={"file": ("", b"")}
    )
    assert r.status_code == 400 and "Choose a file" in r.text


def _preview_token(client, project, data: bytes) -> dict:
    r = _upload(client, project, data)
    assert r.status_code == 200, r.text[:300]
    token = re.search(r'name="token" value="([0-9a-f]+)"', r.text).group(1)
    return {
        "csrf_token": csrf_of(client, "/admin/projects"),
        "token": token,
        "filename": "big.jsonl",
        "format": "auto",
        "valid_pct": "10",
        "test_pct": "10",
        "create_tasks": "on",
    }


def _wait_for_job(client, url: str, seconds: float = 60) -> str:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fragment = client.get(url, headers={"HX-Request": "true"}).text
        if "hx-trigger" not in fragment:  # no longer polling: finished
            return fragment
        time.sleep(0.1)
    raise AssertionError("the import did not finish")


def test_a_big_import_runs_in_the_background_in_chunks(admin_client, session, project, monkeypatch):
    monkeypatch.setattr(imports, "BACKGROUND_MIN_BYTES", 1000)
    monkeypatch.setattr(imports, "JOB_CHUNK", 50)
    data = _jsonl(*({"prompt": f"prompt number {i}"} for i in range(500)))
    r = admin_client.post(f"/admin/projects/{project.id}/import", data=_preview_token(admin_client, project, data))
    assert r.status_code == 303 and "/imports/" in r.headers["location"]  # the request returned at once
    page = admin_client.get(r.headers["location"])
    assert page.status_code == 200 and "Import into" in page.text
    done = _wait_for_job(admin_client, r.headers["location"])
    assert "Imported 500 prompts" in done and "demonstration tasks" in done
    assert _count(session) == 500
    job = session.scalar(select(ImportJob))
    assert job.status == ImportJobStatus.succeeded and job.done == job.total == 500
    assert session.scalar(select(func.count()).select_from(Prompt).where(Prompt.import_job_id == job.id)) == 500


def test_a_failed_background_import_leaves_nothing(admin_client, session, project, monkeypatch, engine):
    monkeypatch.setattr(imports, "BACKGROUND_MIN_BYTES", 1000)
    monkeypatch.setattr(imports, "JOB_CHUNK", 50)
    data = _jsonl(*({"prompt": f"prompt number {i}"} for i in range(300)))
    fields = _preview_token(admin_client, project, data)
    # Someone else imports prompt 200 while the job runs (after its own check of what exists): the
    # job's chunk with it can't be written.
    session.add(
        Prompt(
            project_id=project.id,
            text="prompt number 200",
            split=Split.train,
            content_hash=imports.content_hash("prompt number 200"),
        )
    )
    session.commit()
    monkeypatch.setattr(imports, "_existing_hashes", lambda *args: set())
    r = admin_client.post(f"/admin/projects/{project.id}/import", data=fields)
    done = _wait_for_job(admin_client, r.headers["location"])
    assert "imported by someone else at the same time" in done
    assert _count(session) == 1  # the chunks written before the clash were removed
    assert session.scalar(select(ImportJob)).status == ImportJobStatus.failed


def test_jobs_of_a_stopped_server_are_failed_and_undone(engine, session, project):
    job = imports.start_job(session, project, filename="x.jsonl", options={}, created_by=None)
    session.add(Prompt(project_id=project.id, text="half", content_hash="h" * 64, import_job_id=job.id))
    session.commit()
    assert imports.fail_unfinished_jobs(engine) == 1
    session.expire_all()
    assert _count(session) == 0 and "server stopped" in session.get(ImportJob, job.id).message


# ---------------------------------------------------------------- conversations


def _roles(messages) -> list[str]:
    return [m["role"] for m in messages]


def test_an_hh_rlhf_record_with_three_human_turns_is_five_messages(session, project):
    shared = (
        "\n\nHuman: What can I cook with lentils?"
        "\n\nAssistant: A dal, a soup or a salad."
        "\n\nHuman: Which is quickest?"
        "\n\nAssistant: The salad, with tinned lentils."
        "\n\nHuman: What goes in it?"
    )
    record = {
        "chosen": shared + "\n\nAssistant: Lentils, feta, red onion and a lemon dressing.",
        "rejected": shared + "\n\nAssistant: Lentils.",
    }
    result = imports.run_import(session, project, _jsonl(record), filename="hh.jsonl")
    session.commit()
    (prompt,) = session.scalars(select(Prompt))
    assert prompt.messages == [
        {"role": "user", "content": "What can I cook with lentils?"},
        {"role": "assistant", "content": "A dal, a soup or a salad."},
        {"role": "user", "content": "Which is quickest?"},
        {"role": "assistant", "content": "The salad, with tinned lentils."},
        {"role": "user", "content": "What goes in it?"},
    ]
    assert prompt.text == conversation.render(prompt.messages) and prompt.text.startswith("User: What can I")
    assert prompt.content_hash == conversation.content_hash(prompt.messages)
    assert prompt.meta == {"chosen": "Lentils, feta, red onion and a lemon dressing.", "rejected": "Lentils."}
    assert result.preview.formats_seen == {"hh-rlhf": 1}


def test_hh_rlhf_empty_and_doubled_turns_keep_every_word_and_alternate(session, project):
    # Both happen in the real test splits: "Assistant: " with nothing said (helpful-base line 121),
    # and a reply holding "Human:" without the blank line, then "Assistant:" again (line 356).
    empty = "\n\nHuman: Ideas for a gift?\n\nAssistant: \n\nHuman: Anything?"
    doubled = "\n\nHuman: Sharpen knives?\n\nAssistant: Use a stone.  Human: Thanks.\n\nAssistant: Anything else?\n\nHuman: No."
    records = [{"chosen": d + "\n\nAssistant: Yes.", "rejected": d + "\n\nAssistant: No."} for d in (empty, doubled)]
    preview = imports.preview_import(session, project, _jsonl(*records))
    assert not preview.errors
    assert preview.records[0].messages == [{"role": "user", "content": "Ideas for a gift?\n\nAnything?"}]
    assert preview.records[1].messages == [
        {"role": "user", "content": "Sharpen knives?"},
        {"role": "assistant", "content": "Use a stone.  Human: Thanks.\n\nAnything else?"},
        {"role": "user", "content": "No."},
    ]


def _tree(tree_id: str, root: dict) -> dict:
    return {"message_tree_id": tree_id, "tree_state": "ready_for_export", "prompt": root}


def _msg(mid: str, role: str, text: str, *replies, rank=None, deleted=False) -> dict:
    return {
        "message_id": mid,
        "role": role,
        "text": text,
        "lang": "en",
        "rank": rank,
        "deleted": deleted,
        "replies": list(replies),
    }


def test_an_oasst_tree_gives_a_prompt_per_prompter_message_with_its_thread(session, project):
    tree = _tree(
        "root",
        _msg(
            "root",
            "prompter",
            "Name a prime.",
            _msg(
                "a1",
                "assistant",
                "Seven.",
                _msg("p2", "prompter", "A bigger one?", _msg("a3", "assistant", "Eleven.", rank=0)),
                _msg("p2b", "prompter", "Why seven?", deleted=True),
                rank=0,
            ),
            _msg(
                "a1b",
                "assistant",
                "Nine.",
                _msg("p2c", "prompter", "Nine is not prime.", _msg("a3c", "assistant", "Right: 3 x 3.", rank=1)),
                rank=1,
            ),
            # A deleted reply: neither a reference nor a thread (its prompter reply goes with it).
            _msg("a1d", "assistant", "Deleted.", _msg("p2d", "prompter", "Under a deleted one."), deleted=True),
        ),
    )
    preview = imports.preview_import(session, project, _jsonl(tree), fmt="oasst")
    assert not preview.errors
    by_id = {r.external_id: r for r in preview.records}
    assert list(by_id) == ["root", "p2", "p2c"]  # depth first, in the file's order
    assert by_id["root"].messages == [{"role": "user", "content": "Name a prime."}]
    assert by_id["root"].reference == "Seven."  # rank 0; the deleted reply is no candidate
    assert by_id["p2"].messages == [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "A bigger one?"},
    ]
    assert by_id["p2"].reference == "Eleven."
    assert _roles(by_id["p2c"].messages) == ["user", "assistant", "user"]
    assert by_id["p2c"].messages[1]["content"] == "Nine." and by_id["p2c"].reference == "Right: 3 x 3."
    assert by_id["p2"].meta == {"lang": "en", "replies": 1, "message_tree_id": "root"}
    # A thread's deeper turns land in its opening's split: no thread straddles train and test.
    assert {r.split for r in preview.records} == {imports.split_for(imports.content_hash("Name a prime."), 0.1, 0.1)}
    result = imports.commit(session, project, preview, source="tree.jsonl")
    session.commit()
    stored = {p.external_id: p for p in result.prompts}
    assert stored["p2"].messages == by_id["p2"].messages and stored["p2"].text.endswith("User: A bigger one?")


def test_the_shared_oasst_trees_give_every_prompter_message_and_a_known_deep_thread(session, project):
    file = SHARED_DATA / "oasst-en-100/en_100_tree.jsonl.gz"
    if not file.exists():
        pytest.skip(f"{file} is absent (shared test data)")
    preview = imports.preview_import(session, project, file.read_bytes(), filename=file.name)
    # 1,167 messages: 480 prompter (none deleted), 687 assistant; 100 roots, 329 at depth 2, 51 at 4.
    assert not preview.errors and not preview.duplicates and len(preview.records) == 480
    depths = [len(r.messages) for r in preview.records]
    assert (depths.count(1), depths.count(3), depths.count(5)) == (100, 329, 51)
    # Tree 52 (line 52): FLC versus PID, five turns deep; the reference is its rank-0 reply.
    deep = next(r for r in preview.records if r.external_id == "4d54ba0c-e83e-4210-be10-d0f063a3d81e")
    assert deep.line == 52 and deep.meta["message_tree_id"] == "910da5c9-c388-4cc8-9ac8-65a0baeb7f7c"
    expected = [
        ("user", "What are some things that should be taken in account when designing software that uses act", 377),
        (
            "assistant",
            "When designing software that uses actuators and sensors to regulate airflow and pressure g",
            1979,
        ),
        ("user", "Tell me more about the FLC algorithm, and when it would be most useful.", 71),
        (
            "assistant",
            "Fuzzy logic control (FLC) is a type of control algorithm that uses fuzzy logic to control ",
            1712,
        ),
        ("user", "Show a comparison table of the pros and cons of FLC versus PID in the application of indus", 108),
    ]
    assert [(m["role"], m["content"][:90], len(m["content"])) for m in deep.messages] == [
        (role, start[:90], n) for role, start, n in expected
    ]
    assert deep.reference.startswith("Here's a comparison table of FLC (fuzzy logic controller) vs PID")
    # Its ancestors are prompts of their own: the root and the middle user turn.
    assert [r.messages for r in preview.records if r.external_id == "e5426185-8f6f-4e74-9d4b-da53bf0c704b"] == [
        deep.messages[:3]
    ]


def test_a_messages_file_keeps_the_system_message_and_the_other_fields(session, project):
    chat = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Spain?"},
    ]
    trl = {
        "prompt": [{"role": "user", "content": "Say hi."}],
        "completion": [{"role": "assistant", "content": "Hi."}],
    }
    data = _jsonl(
        {"messages": chat, "id": "c1", "split": "valid", "category": "open QA", "reference": "Madrid.", "app": "x"},
        trl,
    )
    result = imports.run_import(session, project, data, filename="chat.jsonl")
    session.commit()
    first, second = sorted(result.prompts, key=lambda p: p.id)
    assert first.messages == chat and first.external_id == "c1" and first.split == Split.valid
    assert first.reference == "Madrid." and first.meta == {"app": "x"} and first.category.value == "open_qa"
    assert (
        first.text == "System: You are terse.\n\nUser: Capital of France?\n\nAssistant: Paris.\n\nUser: And of Spain?"
    )
    assert second.messages == [{"role": "user", "content": "Say hi."}] and second.reference == "Hi."
    # A one-turn conversation is the same prompt as its text: a duplicate of it.
    again = imports.preview_import(session, project, _jsonl({"prompt": "Say hi."}, {"messages": chat[1:2]}))
    assert again.existing == [1] and [r.text for r in again.records] == ["Capital of France?"]
    assert imports.preview_import(session, project, _jsonl({"messages": chat}), fmt="messages").existing == [1]


def _turns(*pairs) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


@pytest.mark.parametrize(
    "bad, problem",
    [
        (
            {"messages": _turns(("user", "Hi"), ("assistant", "Hello"))},
            "ends with an assistant turn (message 2)",
        ),
        ({"messages": _turns(("user", "Hi"), ("bot", "Hello"), ("user", "Ok"))}, "message 2 has role 'bot'"),
        (
            {"messages": _turns(("user", "Hi"), ("assistant", "  "), ("user", "Ok"))},
            "message 2 (assistant) has no text",
        ),
        (
            {"messages": _turns(("system", "A"), ("system", "B"), ("user", "Hi"))},
            "message 2 is a system message; only the first",
        ),
        ({"messages": _turns(("assistant", "Hello"), ("user", "Hi"))}, "message 1 is a assistant turn where a user"),
        ({"messages": _turns(("user", "Hi"), ("user", "Again"))}, "message 2 is a user turn where a assistant"),
        (
            {"messages": _turns(("user", "x" * imports.MAX_PROMPT_CHARS), ("assistant", "y"), ("user", "z"))},
            "limit is 50,000",
        ),
        (
            {"messages": _turns(*[("user", "q"), ("assistant", "a")] * 100, ("user", "q"))},
            "201 messages; the limit is 200",
        ),
        ({"messages": []}, "non-empty list"),
        ({"messages": "Hi"}, "non-empty list"),
        ({"messages": ["Hi"]}, "message 1 is not an object"),
        ({"messages": _turns(("user", "Hi")), "prompt": "Hi"}, "both 'messages' and 'prompt'"),
        ({"messages": _turns(("user", "a\x00b"))}, "NUL"),
    ],
)
def test_a_bad_conversation_is_named_by_line_and_nothing_is_imported(session, project, bad, problem):
    data = _jsonl({"prompt": "Fine"}, bad, {"messages": _turns(("user", "Also fine"))})
    preview = imports.preview_import(session, project, data)
    assert [e.line for e in preview.errors] == [2] and problem in preview.errors[0].message, preview.errors
    with pytest.raises(ServiceError, match="line 2: "):
        imports.run_import(session, project, data)
    assert _count(session) == 0


def test_a_bad_turn_deep_in_an_oasst_tree_names_its_message(session, project):
    tree = _tree("t", _msg("t", "prompter", "Q?", _msg("a", "assistant", "A.", _msg("p", "prompter", " "), rank=0)))
    preview = imports.preview_import(session, project, _jsonl({"prompt": "ok"}, tree))
    assert [(e.line, e.message) for e in preview.errors] == [(2, "(message p) message 3 (user) has no text")]


def test_api_objects_take_messages(session, project):
    chat = _turns(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))
    preview = imports.preview_objects(session, project, [{"messages": chat, "id": "x"}, {"messages": chat[:2]}])
    assert [r.messages for r in preview.records] == [chat] and preview.records[0].external_id == "x"
    assert [(e.line, e.message[:44]) for e in preview.errors] == [(2, "the conversation ends with an assistant turn")]


def test_upload_preview_shows_conversations_and_bad_lines(admin_client, session, project):
    chat = _turns(("user", "Hi"), ("assistant", "Hello"), ("user", "Bye"))
    r = _upload(admin_client, project, _jsonl({"messages": chat}), name="chat.jsonl")
    assert r.status_code == 200 and "3 messages" in r.text and "User: Hi" in r.text
    r = _upload(admin_client, project, _jsonl({"messages": chat}, {"messages": chat[:2]}), name="chat.jsonl")
    assert r.status_code == 422 and '<td class="num">2</td><td>the conversation ends with an assistant turn' in r.text
    assert 'name="token"' not in r.text and _count(session) == 0
