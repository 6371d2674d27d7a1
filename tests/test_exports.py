"""Exports (page, CLI) loaded back with the `datasets` library; CLI import; empty-export messages."""

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from app import conversation
from app.models import (
    Comparison,
    Completion,
    Demonstration,
    Prompt,
    Ranking,
    Split,
    Task,
    TaskCompletion,
    TaskKind,
)
from app.services import ServiceError, accounts, exports, projects
from instructloop.cli import main as cli
from tests.conftest import SHARED_DATA
from tests.test_admin_stats import World

datasets = pytest.importorskip("datasets")


@pytest.fixture
def world(session):
    return World(session)


def _load(path):
    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_export_rows(session, world):
    f = exports.ExportFilter(world.project.id, splits=["train", "valid", "test"])
    sft = list(exports.sft_rows(session, f))
    assert sorted((r["completion"], r["split"]) for r in sft) == [("demo one", "train"), ("demo two", "test")]
    default = exports.ExportFilter(world.project.id)  # the train split only: valid and test are for evaluation
    assert [r["completion"] for r in exports.sft_rows(session, default)] == ["demo one"]
    prefs = list(exports.preference_rows(session, f))
    # l1: 6 pairs, l2: 6, l3: 5 (its a = b tie dropped), the comparison: 1 (x beat y).
    assert len(prefs) == 18
    assert {
        "prompt": "prompt 1",
        "chosen": "answer x",
        "rejected": "answer y",
        "split": "train",
        "category": None,
        "source": "labeler",
    } in prefs
    assert not any(p["chosen"] == "output a" and p["rejected"] == "output b" for p in prefs[12:17])  # l3 tied a and b
    rankings = list(exports.ranking_rows(session, f))
    assert len(rankings) == 3
    l1 = next(r for r in rankings if r["labeler_id"] == world.l1.id)
    assert l1["completions"][0]["flags"] == ["hallucination", "sexual"] and l1["completions"][0]["likert"] == 6
    l3 = next(r for r in rankings if r["labeler_id"] == world.l3.id)
    assert l3["order"][0] == [world.a, world.b]
    only_l1 = exports.ExportFilter(world.project.id, exclude_labelers=[world.l2.id, world.l3.id])
    assert len(list(exports.ranking_rows(session, only_l1))) == 1
    test_only = exports.ExportFilter(world.project.id, splits=["test"])
    assert list(exports.sft_rows(session, test_only)) == [
        {"prompt": "prompt 2", "completion": "demo two", "split": "test", "category": None, "source": "labeler"}
    ]


def test_a_rejected_demonstration_is_not_exported(session, world):
    from app.models import Demonstration

    session.execute(Demonstration.__table__.update().where(Demonstration.text == "demo one").values(review="rejected"))
    session.commit()
    f = exports.ExportFilter(world.project.id, splits=["train", "valid", "test"])
    assert [r["completion"] for r in exports.sft_rows(session, f)] == ["demo two"]


def test_conversational_format_is_chat_messages(session, world):
    f = exports.ExportFilter(world.project.id, format="conversational")
    (sft,) = exports.sft_rows(session, f)
    assert sft == {  # TRL's conversational prompt-completion format
        "prompt": [{"role": "user", "content": "prompt 1"}],
        "completion": [{"role": "assistant", "content": "demo one"}],
        "split": "train",
        "category": None,
        "source": "labeler",
    }
    prefs = list(exports.preference_rows(session, f))
    assert {
        "prompt": [{"role": "user", "content": "prompt 1"}],
        "chosen": [{"role": "assistant", "content": "answer x"}],
        "rejected": [{"role": "assistant", "content": "answer y"}],
        "split": "train",
        "category": None,
        "source": "labeler",
    } in prefs
    ranking = next(exports.ranking_rows(session, f))
    assert ranking["prompt"] == [{"role": "user", "content": "prompt 0"}]
    assert ranking["completions"][0]["messages"] == [{"role": "assistant", "content": "output a"}]
    with pytest.raises(ServiceError, match="Unknown format"):
        exports.check(session, "sft", exports.ExportFilter(world.project.id, format="xml"))


FIVE = [  # an hh-rlhf dialogue with three Human turns, up to its last one
    {"role": "user", "content": "Can you recommend a short novel?"},
    {"role": "assistant", "content": "The Old Man and the Sea is about 27,000 words."},
    {"role": "user", "content": "What is it about?"},
    {"role": "assistant", "content": "An old fisherman and his fight with a marlin."},
    {"role": "user", "content": "Does it end well?"},
]
ANSWER, WORSE, WORST = "Not for the fish: the sharks eat it.", "Yes.", "I don't know."


def _five_message_project(session):
    """One five-message prompt with a demonstration, a ranking of three outputs and a comparison."""
    labeler = accounts.create_user(session, "chat@example.com", None)
    project = projects.create_project(session, projects.ProjectSettings(name="Chat", k=3))
    prompt = Prompt(
        project_id=project.id, messages=FIVE, split=Split.train, content_hash=conversation.content_hash(FIVE)
    )
    session.add(prompt)
    session.flush()
    outputs = [Completion(prompt_id=prompt.id, text=t, source="test") for t in (ANSWER, WORSE, WORST)]
    session.add_all(outputs)
    session.flush()
    demo, rank, comp = (
        Task(project_id=project.id, prompt_id=prompt.id, kind=kind, required=1, done_count=1)
        for kind in (TaskKind.demonstration, TaskKind.ranking, TaskKind.comparison)
    )
    rank.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(outputs)]
    comp.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(outputs[1:])]
    session.add_all([demo, rank, comp])
    session.flush()
    session.add_all(
        [
            Demonstration(task_id=demo.id, prompt_id=prompt.id, user_id=labeler.id, text=ANSWER),
            Ranking(task_id=rank.id, user_id=labeler.id, order=[[o.id] for o in outputs]),
            Comparison(
                task_id=comp.id,
                user_id=labeler.id,
                a_completion_id=outputs[1].id,
                b_completion_id=outputs[2].id,
                choice="a",
            ),
        ]
    )
    session.commit()
    return project


def test_a_conversation_is_exported_with_every_turn(session, tmp_path):
    project = _five_message_project(session)
    chat = exports.ExportFilter(project.id, format="conversational")
    assert list(exports.sft_rows(session, chat)) == [
        {
            "prompt": FIVE,
            "completion": [{"role": "assistant", "content": ANSWER}],
            "split": "train",
            "category": None,
            "source": "labeler",
        }
    ]
    prefs = list(exports.preference_rows(session, chat))
    pairs = [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in prefs]
    assert pairs == [(ANSWER, WORSE), (ANSWER, WORST), (WORSE, WORST), (WORSE, WORST)]  # 3 from the ranking, 1 A/B
    assert all(
        p["prompt"] == FIVE and [m["role"] for m in p["chosen"] + p["rejected"]] == ["assistant"] * 2 for p in prefs
    )
    (ranking,) = exports.ranking_rows(session, chat)
    assert ranking["prompt"] == FIVE
    assert [c["messages"] for c in ranking["completions"]] == [
        [{"role": "assistant", "content": t}] for t in (ANSWER, WORSE, WORST)
    ]

    rendered = (
        "User: Can you recommend a short novel?\n\n"
        "Assistant: The Old Man and the Sea is about 27,000 words.\n\n"
        "User: What is it about?\n\n"
        "Assistant: An old fisherman and his fight with a marlin.\n\n"
        "User: Does it end well?"
    )
    plain = exports.ExportFilter(project.id)
    assert list(exports.sft_rows(session, plain)) == [
        {"prompt": rendered, "completion": ANSWER, "split": "train", "category": None, "source": "labeler"}
    ]
    assert {p["prompt"] for p in exports.preference_rows(session, plain)} == {rendered}
    assert next(exports.ranking_rows(session, plain))["prompt"] == rendered

    # As TRL reads it: `datasets` keeps the five messages as a list of {role, content}.
    path = tmp_path / "sft-chat.jsonl"
    path.write_text("".join(exports.jsonl_lines(session, "sft", chat)))
    row = _load(path)[0]
    assert row["prompt"] == FIVE and row["completion"] == [{"role": "assistant", "content": ANSWER}]


def test_an_imported_hh_rlhf_dialogue_is_exported_as_its_five_messages_and_the_answer(session):
    """Import to export: an hh-rlhf record with three Human turns, demonstrated, comes out of the
    conversational sft export as the five messages and the answer."""
    from app.services import imports

    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in FIVE)
    record = {"chosen": f"{turns}\n\nAssistant: {ANSWER}", "rejected": f"{turns}\n\nAssistant: {WORSE}"}
    labeler = accounts.create_user(session, "hh@example.com", None)
    project = projects.create_project(session, projects.ProjectSettings(name="HH"))
    preview = imports.preview_import(
        session, project, json.dumps(record).encode(), fmt="hh-rlhf", valid_fraction=0, test_fraction=0
    )
    result = imports.commit(session, project, preview, source="hh.jsonl", create_tasks=True)
    (prompt,) = result.prompts
    task = session.scalar(select(Task).where(Task.prompt_id == prompt.id))
    session.add(Demonstration(task_id=task.id, prompt_id=prompt.id, user_id=labeler.id, text=ANSWER))
    session.commit()
    (row,) = exports.sft_rows(session, exports.ExportFilter(project.id, format="conversational"))
    assert row["prompt"] == FIVE and row["completion"] == [{"role": "assistant", "content": ANSWER}]


def test_single_turn_plain_export_lines_are_unchanged(session, world):
    """A single-turn prompt's plain rows read as they did before conversations, byte for byte."""
    f = exports.ExportFilter(world.project.id, splits=["test"])
    assert list(exports.jsonl_lines(session, "sft", f)) == [
        '{"prompt": "prompt 2", "completion": "demo two", "split": "test", "category": null, "source": "labeler"}\n'
    ]


def test_download_each_export_and_load_with_datasets(admin_client, world, tmp_path):
    for kind, columns, n in [
        ("sft", {"prompt", "completion", "split"}, 2),
        ("preferences", {"prompt", "chosen", "rejected", "split"}, 18),
        ("rankings", {"prompt", "completions", "order", "labeler_id", "split"}, 3),
    ]:
        r = admin_client.get(f"/admin/projects/{world.project.id}/export/{kind}?split=all")
        assert r.status_code == 200, r.text
        assert r.headers["content-disposition"] == f'attachment; filename="stats-{kind}-train-valid-test.jsonl"'
        path = tmp_path / f"{kind}.jsonl"
        path.write_bytes(r.content)
        ds = _load(path)
        assert len(ds) == n and columns <= set(ds.column_names)
    for kind, columns in [
        ("sft", {"prompt", "completion", "split"}),
        ("preferences", {"prompt", "chosen", "rejected", "split"}),
    ]:
        r = admin_client.get(f"/admin/projects/{world.project.id}/export/{kind}?format=conversational")
        path = tmp_path / f"{kind}-chat.jsonl"
        path.write_bytes(r.content)
        ds = _load(path)
        assert columns <= set(ds.column_names) and set(ds["split"]) == {"train"}
        assert isinstance(ds[0]["prompt"], list) and isinstance(
            ds[0]["completion" if kind == "sft" else "chosen"], list
        )
    assert admin_client.get(f"/admin/projects/{world.project.id}/exports").status_code == 200


def test_empty_and_bad_exports(admin_client, session, world):
    empty = projects.create_project(session, projects.ProjectSettings(name="Empty"))
    session.commit()
    r = admin_client.get(f"/admin/projects/{empty.id}/export/sft")
    assert r.status_code == 400 and "no accepted demonstrations" in r.text
    r = admin_client.get(f"/admin/projects/{world.project.id}/export/everything")
    assert r.status_code == 404 and "Unknown export" in r.text
    r = admin_client.get(f"/admin/projects/{world.project.id}/export/sft?exclude=abc")
    assert r.status_code == 400 and "ids" in r.text
    r = admin_client.get(f"/admin/projects/{world.project.id}/export/sft?split=nope")
    assert r.status_code == 400 and "Unknown split" in r.text
    with pytest.raises(ServiceError, match="on the valid split"):
        exports.check(session, "rankings", exports.ExportFilter(world.project.id, splits=["valid"]))


@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", settings.db_url)
    monkeypatch.setenv("INSTRUCTLOOP_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("SECRET_KEY", "test-secret-key")
    return CliRunner()


def test_cli_export_and_load(cli_env, world, tmp_path):
    out = tmp_path / "prefs.jsonl"
    r = cli_env.invoke(cli, ["export", "preferences", "--project", "Stats", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert len(_load(out)) == 18
    r = cli_env.invoke(cli, ["export", "sft", "--project", str(world.project.id), "--split", "train"])
    assert r.exit_code == 0 and len(r.stdout.strip().splitlines()) == 1
    assert json.loads(r.stdout.splitlines()[0]).keys() == {"prompt", "completion", "split", "category", "source"}
    r = cli_env.invoke(cli, ["export", "sft", "--project", "Stats", "--format", "conversational"])
    assert r.exit_code == 0 and json.loads(r.stdout.splitlines()[0])["completion"][0]["role"] == "assistant"
    r = cli_env.invoke(cli, ["export", "sft", "--project", "Nope"])
    assert r.exit_code == 1 and "There is no project 'Nope'" in r.output


def test_cli_import(cli_env, session, world, tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"prompt": "cli one"}\n{"prompt": "cli two"}\n{"prompt": "cli one"}\n')
    r = cli_env.invoke(cli, ["import", str(good), "--project", "Stats", "--dry-run"])
    assert r.exit_code == 0 and "2 new prompts" in r.output and "1 duplicates" in r.output
    count = select(func.count()).select_from(Prompt)
    before = session.scalar(count)
    session.rollback()
    r = cli_env.invoke(cli, ["import", str(good), "--project", "Stats", "--create-tasks"])
    assert r.exit_code == 0, r.output
    assert session.scalar(count) == before + 2
    session.rollback()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{broken\n')
    r = cli_env.invoke(cli, ["import", str(bad), "--project", "Stats"])
    assert r.exit_code == 1 and "line 2: broken JSON" in r.output and "Nothing imported" in r.output
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    r = cli_env.invoke(cli, ["import", str(latin), "--project", "Stats"])
    assert r.exit_code == 1 and "not UTF-8" in r.output
    assert session.scalar(count) == before + 2


def test_cli_import_real_alpaca(cli_env, session, world):
    file = SHARED_DATA / "alpaca-5k" / "alpaca_5000.json.gz"
    if not file.exists():
        pytest.skip(f"{file} is absent (shared test data)")
    r = cli_env.invoke(cli, ["import", str(file), "--project", "Stats", "--format", "alpaca"])
    assert r.exit_code == 0, r.output
    assert session.scalar(select(func.count()).select_from(Prompt).where(Prompt.source == file.name)) > 4900
