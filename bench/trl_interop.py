"""Does what instructloop makes work in TRL? One optimizer step each, in TRL's own environment
(bench/.venv-trl, see bench/trl_side.py):

- RewardTrainer starting from a reward-model folder that the project's trainer saved;
- SFTTrainer on the `sft` export, DPOTrainer on the `preferences` export and RewardTrainer on the
  `rankings` export (its orders expanded to chosen/rejected pairs), each in the plain and the
  conversational format, loaded with `datasets`;
- all of that twice: on single-turn prompts, and on multi-turn ones (conversations of two and
  three user turns with the assistant's earlier turns, one with a system message).

    .venv/bin/python bench/trl_interop.py

Printed per check: whether it ran, its loss, whether TRL applied the model's chat template to the
text (it does for the conversational exports; the plain ones are trained as raw strings), how many
of the first prompt's turns are in the token ids TRL made of it, and, for SFT, whether the loss is
on the answer's tokens only. The data is two small projects written into a temporary SQLite
database through the project's models, exported through app.services.exports, on a tiny model
built from a config."""

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import trl_side  # noqa: E402

from app import conversation  # noqa: E402
from app.db import make_engine, make_sessionmaker  # noqa: E402
from app.migrate import upgrade  # noqa: E402
from app.models import Completion, Demonstration, Prompt, Ranking, Split, Task, TaskCompletion, TaskKind  # noqa: E402
from app.services import accounts, exports, projects  # noqa: E402

QUESTIONS = [
    "What is two plus two?",
    "Name a colour.",
    "Say hello.",
    "Count to three.",
    "Name a fruit.",
    "What is the sky's colour?",
    "Give a number.",
    "Say goodbye.",
]
ANSWERS = ["Four.", "Blue.", "Hello!", "One, two, three.", "An apple.", "Blue, mostly.", "Seven.", "Goodbye!"]


# Multi-turn prompts: (conversation ending with the user's turn, the next assistant turn).
CHATS = [
    (
        [
            {"role": "user", "content": "Can you recommend a short novel?"},
            {"role": "assistant", "content": "The Old Man and the Sea is short."},
            {"role": "user", "content": "What is it about?"},
            {"role": "assistant", "content": "An old fisherman and a big fish."},
            {"role": "user", "content": "Does it end well?"},
        ],
        "Not for the fish.",
    ),
    (
        [
            {"role": "system", "content": "You answer in one short sentence."},
            {"role": "user", "content": "What is two plus two?"},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "And times three?"},
        ],
        "Twelve.",
    ),
    (
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ],
        "Green.",
    ),
    (
        [
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Now in French."},
            {"role": "assistant", "content": "Bonjour!"},
            {"role": "user", "content": "And in German?"},
        ],
        "Hallo!",
    ),
    (
        [
            {"role": "user", "content": "Count to three."},
            {"role": "assistant", "content": "One, two, three."},
            {"role": "user", "content": "Backwards?"},
        ],
        "Three, two, one.",
    ),
    (
        [
            {"role": "system", "content": "You are a gardener."},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."},
            {"role": "user", "content": "When is it picked?"},
        ],
        "In autumn.",
    ),
]
WORSE = ["Not sure.", "No."]


def seed_project(url: str, name: str, items: list[tuple[list[conversation.Message], str]]) -> int:
    """A project with a demonstration and a K=3 ranking on each train prompt (a conversation)."""
    engine = make_engine(url)
    with make_sessionmaker(engine)() as session:
        labeler = accounts.create_user(session, f"labeler-{name.lower()}@bench.invalid", None)
        project = projects.create_project(session, projects.ProjectSettings(name=name, k=3))
        prompts = [
            Prompt(
                project_id=project.id,
                messages=messages,
                split=Split.train,
                content_hash=conversation.content_hash(messages),
            )
            for messages, _ in items
        ]
        session.add_all(prompts)
        session.flush()
        for prompt, (_, answer) in zip(prompts, items):
            demo = Task(
                project_id=project.id, prompt_id=prompt.id, kind=TaskKind.demonstration, required=1, done_count=1
            )
            outputs = [Completion(prompt_id=prompt.id, text=t, source="bench") for t in (answer, *WORSE)]
            session.add_all([demo, *outputs])
            session.flush()
            rank = Task(project_id=project.id, prompt_id=prompt.id, kind=TaskKind.ranking, required=1, done_count=1)
            rank.outputs = [TaskCompletion(completion_id=o.id, position=i) for i, o in enumerate(outputs)]
            session.add(rank)
            session.flush()
            session.add_all(
                [
                    Demonstration(task_id=demo.id, prompt_id=prompt.id, user_id=labeler.id, text=answer),
                    Ranking(task_id=rank.id, user_id=labeler.id, order=[[o.id] for o in outputs]),
                ]
            )
        session.commit()
        project_id = project.id
    engine.dispose()
    return project_id


def write_exports(url: str, project_id: int, workdir: Path, tag: str) -> dict[str, dict[str, str]]:
    """{format: {kind: file}}; the files are named after `tag` (single-turn, multi-turn)."""
    engine = make_engine(url)
    files: dict[str, dict[str, str]] = {}
    with make_sessionmaker(engine)() as session:
        for fmt in ("plain", "conversational"):
            f = exports.ExportFilter(project_id, format=fmt)
            these = files[fmt] = {}
            for kind in ("sft", "preferences", "rankings"):
                path = workdir / f"{tag}-{kind}-{fmt}.jsonl"
                path.write_text("".join(exports.jsonl_lines(session, kind, f)))
                these[kind] = str(path)
            # A reward trainer wants pairs: each ranking's orders expanded, as a user of the export does.
            pairs = []
            for line in Path(these["rankings"]).read_text().splitlines():
                row = json.loads(line)
                by_id = {c["id"]: c["messages"] if fmt == "conversational" else c["text"] for c in row["completions"]}
                for i, better in enumerate(row["order"]):
                    for worse in row["order"][i + 1 :]:
                        pairs += [
                            {"prompt": row["prompt"], "chosen": by_id[a], "rejected": by_id[b]}
                            for a in better
                            for b in worse
                        ]
            path = workdir / f"{tag}-rankings-pairs-{fmt}.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
            these["rankings-pairs"] = str(path)
    engine.dispose()
    return files


def train_reward_folder(policy: str, workdir: Path) -> str:
    """A reward model trained a few steps by the project's trainer and saved as it saves them."""
    from runconfig import RewardConfig
    from trainer.data import RankingExample
    from trainer.modeling import ScalarHeadModel, load_tokenizer
    from trainer.reward import train_reward

    tokenizer = load_tokenizer(policy)
    model = ScalarHeadModel.from_causal_lm(policy, device="cpu")
    rankings = [RankingExample(q, [a, "Not sure.", "No."], [[0], [1], [2]]) for q, a in zip(QUESTIONS, ANSWERS)]
    train_reward(
        model,
        tokenizer,
        rankings,
        [],
        RewardConfig(learning_rate=1e-3, batch_size=4, micro_batch_size=4, warmup_ratio=0.0),
    )
    folder = workdir / "reward-model"
    model.save_pretrained(folder, tokenizer=tokenizer)
    return str(folder)


def main() -> None:
    from trainer.tiny import make_tiny_model

    workdir = Path(tempfile.mkdtemp(prefix="il-interop-"))
    url = f"sqlite:///{workdir / 'interop.db'}"
    upgrade(url)
    single = seed_project(url, "Interop", [(conversation.single(q), a) for q, a in zip(QUESTIONS, ANSWERS)])
    multi = seed_project(url, "Interop chat", CHATS)
    sets, first_rows = {}, {}
    for tag, project_id, (first, answer) in (
        ("single-turn", single, (conversation.single(QUESTIONS[0]), ANSWERS[0])),
        ("multi-turn", multi, CHATS[0]),
    ):
        for fmt, files in write_exports(url, project_id, workdir, tag).items():
            sets[f"{fmt}, {tag}"] = files
            # Every export's first row is this prompt (and, in sft and the rankings, its answer).
            first_rows[f"{fmt}, {tag}"] = {"turns": [m["content"] for m in first], "answer": answer}
    texts = (
        QUESTIONS + ANSWERS + WORSE + [m["content"] for messages, a in CHATS for m in messages] + [a for _, a in CHATS]
    )
    policy = str(make_tiny_model(workdir / "policy", texts=texts))
    spec = {
        "policy": policy,
        "reward_model": train_reward_folder(policy, workdir),
        "sets": sets,
        "first_rows": first_rows,
        "template_marker": "<|assistant|>",
        "threads": 1,
        "workdir": str(workdir / "trl"),
    }
    result = trl_side.run("check", spec, workdir)
    print(f"TRL {result['trl_version']}; data and models in {workdir}\n")
    print(f"{'check':<90} {'ran':>4} {'loss':>8}  template  turns  loss on answer only")
    for name, r in result["checks"].items():
        if r["ok"]:
            answer_only = {True: "yes", False: "NO", None: "-"}[r["loss_on_answer_only"]]
            print(
                f"{name:<90} {'yes':>4} {r['loss']:>8.3f}  {'yes' if r['chat_template_applied'] else 'no':<8}"
                f"  {r['turns_in_tokens']:<5}  {answer_only}"
            )
        else:
            print(f"{name:<90} {'NO':>4}           {r['error']}")
    sys.exit(0 if all(r["ok"] and r["loss_on_answer_only"] is not False for r in result["checks"].values()) else 1)


if __name__ == "__main__":
    main()
