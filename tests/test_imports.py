"""Prompt imports: formats, preview, all-or-nothing, duplicates, splits, every bad file."""

import gzip
import json
import re

import pytest
from sqlalchemy import func, select

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
        ("oasst-en-100/en_100_tree.jsonl.gz", "oasst", 100),
        ("oasst-en-100/en_100_message.jsonl.gz", "auto", 100),
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
    assert _count(session) == 100 and result.tasks_created == train
    assert session.scalar(select(func.count()).select_from(Task).where(Task.kind == TaskKind.demonstration)) == train


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
