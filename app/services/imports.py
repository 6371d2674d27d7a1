"""Importing prompts: parse a file, preview it, then import all of it or nothing.

A prompt is a conversation (app.conversation): most formats give one user message; hh-rlhf
dialogues, OpenAssistant threads and chat-message files give several turns.

Formats (detected per record when `fmt` is "auto"):
- JSON Lines: one object per line with a `prompt`, `text`, `instruction` or `question` field
  (optional `reference`/`completion`/`output`/`answer`, `id`, `split`, `category`), or one JSON
  string per line.
- Chat messages (TRL's conversational format, OpenAI's chat format): `{"messages": [{"role",
  "content"}, ...]}` (or `"prompt"` holding such a list), a system message kept, ending with the
  user's turn; the other fields as in JSON Lines (a TRL `completion` list gives the reference).
- CSV with a header row naming a `prompt` (or `text`, `instruction`, `question`) column (and
  optionally the others). `category` is one of InstructGPT's use cases (`PromptCategory`).
- hh-rlhf: `{"chosen", "rejected"}` dialogues; the prompt is their shared part up to the last
  "Assistant:" turn, as turns (Human -> user, Assistant -> assistant).
- Alpaca: a JSON array (or JSONL) of `{"instruction", "input", "output"}`; self-instruct's
  `instances` too.
- OpenAssistant: message trees (`{"message_tree_id", "prompt": {...}}`) or root messages
  (`{"role": "prompter", "text", "replies"}`): every prompter message that is not deleted (nor
  below a deleted message) becomes a prompt, the thread from the root down to it; its reference is
  its best-ranked reply. Its external id is the message's id.
- Preferences (TRL's preference format): `{"prompt", "chosen", "rejected"}`, plain strings or
  conversational (the prompt a message list ending with the user's turn, chosen and rejected
  a list of one assistant message).

Feedback comes with the prompts unless the admin takes the prompts only (`feedback=False`): an
hh-rlhf or preference pair becomes a comparison (chosen over rejected; identical answers give
none); an OpenAssistant prompter message a ranking of its human-ranked replies (two or more) and
its best reply, written by a person, a demonstration; with `answers_as_demonstrations`, every
other reference (Alpaca output, GSM8K answer...) a demonstration too. Each is a submission without
a labeler (user_id NULL) on a closed task of its own, carrying the file, line and original id
(origin_file, origin_line, origin_id); a line whose prompt is a duplicate, or already in the
project, gives its feedback to that prompt (unless the prompt already holds imported feedback of
that kind).
gzip-compressed files are accepted. Splits come from the hash of the conversation's first user
turn (for a single-turn prompt, its content hash), so the same prompt lands in the same split on
every import, in every project, and the deeper turns of one thread never straddle train and
evaluation.
"""

import csv
import gzip
import io
import json
import logging
import re
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import conversation
from app.conversation import ConversationError, Message
from app.db import atomic, read_session, utcnow, write_session
from app.models import (
    SUBMISSION_MODELS,
    Comparison,
    ComparisonChoice,
    Completion,
    Demonstration,
    ImportJob,
    ImportJobStatus,
    Project,
    Prompt,
    PromptCategory,
    Ranking,
    Split,
    Task,
    TaskCompletion,
    TaskKind,
    TaskStatus,
    User,
    table,
)
from app.services import Conflict, NotFound, ServiceError, projects, tasks
from app.validation import row_problem

log = logging.getLogger(__name__)

FORMATS = {
    "auto": "Detect (recommended)",
    "jsonl": "JSON Lines (prompt / text field)",
    "messages": "Chat messages (messages: [{role, content}, ...])",
    "csv": "CSV with a header row",
    "hh-rlhf": "hh-rlhf (chosen / rejected dialogues)",
    "alpaca": "Alpaca (instruction / input / output)",
    "oasst": "OpenAssistant message trees",
    "preferences": "Preferences (prompt / chosen / rejected, TRL)",
}
MAX_IMPORT_BYTES = 8 * 1024 * 1024
"""Web uploads (under the request body limit, so the form can say why)."""
CLI_MAX_IMPORT_BYTES = 512 * 1024 * 1024
MAX_PROMPT_CHARS = 50_000
MAX_ERRORS_SHOWN = 50
PROMPT_KEYS = ("prompt", "text", "instruction", "question")
REFERENCE_KEYS = ("reference", "completion", "response", "output", "answer")


class ImportRefused(ServiceError):
    """The file as a whole can't be read (encoding, size, format); nothing is imported."""


@dataclass
class Feedback:
    """Human feedback a record brings beside its prompt (see the module's docstring)."""

    kind: TaskKind
    answers: list[str]
    """comparison: [chosen, rejected]; ranking: the replies; demonstration: [the answer]."""
    order: list[list[int]] = field(default_factory=list)
    """ranking: groups of indexes into `answers`, best first (equal ranks tie)."""
    origin_id: str | None = None


@dataclass
class PlannedFeedback:
    """Feedback the import will write: on the prompt with `content_hash`, from `line`."""

    content_hash: str
    line: int
    feedback: Feedback
    source_format: str


@dataclass
class Record:
    line: int
    messages: list[Any]
    """The conversation as read (checked and normalized by the preview, `_plan`)."""
    reference: str | None = None
    external_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    split: Split | None = None
    content_hash: str = ""
    source_format: str = ""
    category: PromptCategory | None = None
    where: str = ""
    """Which part of its line a record is, where a line gives several (an OpenAssistant message)."""
    feedback: list[Feedback] = field(default_factory=list)
    identical_pair: bool = False
    """A pair whose chosen and rejected answers are the same: no comparison (nothing to prefer)."""

    @property
    def text(self) -> str:
        return conversation.render(self.messages)


def _user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@dataclass
class LineError:
    line: int
    message: str


@dataclass
class ImportPreview:
    filename: str
    format: str
    records: list[Record]
    """The new prompts that an import would add, in file order."""
    errors: list[LineError]
    duplicates: list[tuple[int, int]]
    """(line, first line with the same prompt) inside this file."""
    existing: list[int]
    """Lines whose prompt the project already has."""
    formats_seen: dict[str, int]
    feedback: list[PlannedFeedback] = field(default_factory=list)
    """The feedback an import would add (none when the prompts only are taken)."""
    identical_pairs: list[int] = field(default_factory=list)
    """Lines whose chosen and rejected answers are the same (no comparison)."""
    feedback_already: int = 0
    """Feedback left out: its prompt, already in the project, holds imported feedback of that kind."""
    take_feedback: bool = True

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.records or self.feedback)

    @property
    def feedback_counts(self) -> dict[str, int]:
        """How many comparisons, rankings and demonstrations the import adds."""
        counts = Counter(f.feedback.kind.value for f in self.feedback)
        return {
            k.value: counts.get(k.value, 0) for k in (TaskKind.comparison, TaskKind.ranking, TaskKind.demonstration)
        }

    @property
    def split_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in Split}
        for r in self.records:
            if r.split is not None:
                counts[r.split.value] += 1
        return counts

    def error_report(self) -> str:
        shown = "\n".join(f"line {e.line}: {e.message}" for e in self.errors[:MAX_ERRORS_SHOWN])
        more = len(self.errors) - MAX_ERRORS_SHOWN
        return shown + (f"\n… and {more} more" if more > 0 else "")


@dataclass
class ImportResult:
    prompts: list[Prompt]
    preview: ImportPreview
    tasks_created: int
    feedback: dict[str, int] = field(default_factory=dict)
    """Imported submissions written, per kind."""


def content_hash(prompt: str | list[Message]) -> str:
    """A text (one user turn) or a conversation: equal for equal prompts (conversation.content_hash)."""
    return conversation.content_hash(conversation.single(prompt) if isinstance(prompt, str) else prompt)


def split_key(messages: list[Message]) -> str:
    """What a prompt's split is drawn from: the hash of its first user turn, so every conversation
    opening with it (an OpenAssistant thread's deeper turns, a conversation grown by a turn) lands
    in the split of that opening, and a single-turn prompt's split is its content hash's."""
    return content_hash(conversation.user_turns(messages)[0])


def normalize(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def split_for(hash_hex: str, valid_fraction: float, test_fraction: float) -> Split:
    """A fixed point in [0, 1) per prompt: reproducible, and the same prompt never lands in two splits."""
    u = int(hash_hex[:12], 16) / 16**12
    if u < test_fraction:
        return Split.test
    if u < test_fraction + valid_fraction:
        return Split.valid
    return Split.train


# ---------------------------------------------------------------- reading the bytes


def decode(data: bytes, *, max_bytes: int = MAX_IMPORT_BYTES) -> str:
    if len(data) > max_bytes:
        raise ImportRefused(
            f"The file is {_size(len(data))}; the limit is {_size(max_bytes)}. "
            "Split it into smaller files, or import it with `instructloop import`.",
            status_code=413,
        )
    if data[:2] == b"\x1f\x8b":
        try:
            data = _gunzip(data, max_bytes * 8)
        except (OSError, EOFError, zlib.error) as exc:
            raise ImportRefused(f"The file looks gzip-compressed but can't be decompressed: {exc}.") from exc
    if not data.strip():
        raise ImportRefused("The file is empty: there is nothing to import.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportRefused(
            f"The file is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line} can't be "
            "decoded). Save it as UTF-8 and try again."
        ) from exc


def _gunzip(data: bytes, limit: int) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as f:
        while chunk := f.read(1 << 20):
            out.write(chunk)
            if out.tell() > limit:
                raise ImportRefused(
                    f"The file decompresses to more than {_size(limit)}; split it into smaller files.", status_code=413
                )
    return out.getvalue()


def _size(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB" if n >= 1024 * 1024 else f"{n:,} bytes"


# ---------------------------------------------------------------- records per object


def _records_from_object(obj: Any, line: int, fmt: str) -> list[Record]:
    """The prompts one object gives (an OpenAssistant tree gives several). Raises ValueError with the
    reason the object is not a prompt of the expected format."""
    if isinstance(obj, str) and fmt in ("auto", "jsonl"):
        return [Record(line, _user(obj), source_format="jsonl")]
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if fmt == "preferences" or (fmt == "auto" and "prompt" in obj and "chosen" in obj and "rejected" in obj):
        return [_preference(obj, line)]
    if fmt == "messages" or (fmt == "auto" and _messages_key(obj)):
        return [_generic(obj, line, messages_only=True)]
    if fmt == "hh-rlhf" or (fmt == "auto" and "chosen" in obj and "rejected" in obj):
        return [_hh_rlhf(obj, line)]
    if fmt == "oasst" or (fmt == "auto" and (isinstance(obj.get("prompt"), dict) or obj.get("role") == "prompter")):
        return _oasst(obj, line)
    if fmt == "alpaca" or (fmt == "auto" and "instruction" in obj):
        return [_alpaca(obj, line)]
    if fmt in ("auto", "jsonl", "csv"):
        return [_generic(obj, line)]
    raise ValueError(f"unknown format {fmt!r}")


def _optional_text(obj: dict, key: str, line: int) -> str | None:
    return None if obj.get(key) is None else _text(obj, key, line)


def _text(obj: dict, key: str, line: int) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string" + ("" if key in obj else f" (missing; keys: {_keys(obj)})"))
    return value


def _keys(obj: dict) -> str:
    return ", ".join(list(obj)[:8]) or "none"


def _messages_key(obj: dict) -> str | None:
    """Where an object keeps its conversation: `messages`, or TRL's conversational `prompt` list."""
    if obj.get("messages") is not None:
        return "messages"
    return "prompt" if isinstance(obj.get("prompt"), list) else None


def _generic(obj: dict, line: int, *, messages_only: bool = False) -> Record:
    messages_key = None if obj.get("__csv__") else _messages_key(obj)  # a CSV cell is text, never a list
    key = messages_key or next((k for k in PROMPT_KEYS if obj.get(k) is not None), None)
    if key is None:
        if messages_only:
            raise ValueError(
                'no messages field: expected {"messages": [{"role": ..., "content": ...}, ...]}; '
                f"got keys {_keys(obj)}"
            )
        raise ValueError(f"no prompt field: expected one of {', '.join(PROMPT_KEYS)}; got keys {_keys(obj)}")
    if messages_key:
        if other := next((k for k in PROMPT_KEYS if k != key and obj.get(k) is not None), None):
            raise ValueError(f"both {key!r} and {other!r} given: a prompt is either a conversation or a text")
        messages = obj[key]
        last = messages[-1] if isinstance(messages, list) and messages else None
        # A chat file's last assistant turn is usually the answer to train on: refused by name rather
        # than dropped, so no one's answers vanish without a word.
        if isinstance(last, dict) and last.get("role") == "assistant":
            raise ValueError(
                f"the conversation ends with an assistant turn (message {len(messages)}); a prompt ends with "
                "the user's turn: move that answer to a 'reference' field, or leave it out"
            )
    else:
        messages = _user(_text(obj, key, line))
    ref_key = next((k for k in REFERENCE_KEYS if obj.get(k) not in (None, "", [])), None)
    reference = _reference(obj, ref_key, line) if ref_key else None
    split = obj.get("split")
    if split not in (None, "") and (not isinstance(split, str) or split not in Split.__members__):
        raise ValueError(f"split must be train, valid or test; got {split!r}")
    category = parse_category(obj.get("category"))
    ext = obj.get("id")
    meta = {
        k: v
        for k, v in obj.items()
        if k not in (key, ref_key, "split", "id", "category") and isinstance(v, (str, int, float, bool))
    }
    return Record(
        line,
        messages,
        reference,
        str(ext) if ext not in (None, "") else None,
        meta,
        Split(split) if split else None,
        source_format="csv" if obj.get("__csv__") else "messages" if messages_key else "jsonl",
        category=category,
    )


def _reference(obj: dict, key: str, line: int) -> str:
    value = obj[key]
    # TRL's conversational prompt-completion rows: the completion is a list of one assistant message.
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], dict) and value[0].get("role") == "assistant":
            content = value[0].get("content")
            if isinstance(content, str):
                return content
        raise ValueError(f"field {key!r} must be a string or a list of one assistant message")
    return _text(obj, key, line)


def parse_category(value: Any) -> PromptCategory | None:
    """A category as files write it ("open QA", "Closed_QA", "rewrite"); None when empty. Raises
    ValueError naming the categories for anything else."""
    if value in (None, ""):
        return None
    key = "_".join(value.lower().split()) if isinstance(value, str) else ""
    if key not in PromptCategory.__members__:
        raise ValueError(f"category must be one of {', '.join(PromptCategory)}; got {value!r}")
    return PromptCategory(key)


def _alpaca(obj: dict, line: int) -> Record:
    instruction = _text(obj, "instruction", line)
    instances = obj.get("instances")
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):  # self-instruct
        given, output = instances[0].get("input") or "", instances[0].get("output")
    else:
        given, output = _optional_text(obj, "input", line) or "", _optional_text(obj, "output", line)
    text = instruction.strip() + (f"\n\n{given.strip()}" if isinstance(given, str) and given.strip() else "")
    ext = obj.get("id")
    return Record(
        line,
        _user(text),
        output if isinstance(output, str) else None,
        str(ext) if ext else None,
        {"input": given} if given else {},
        source_format="alpaca",
    )


HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def _hh_rlhf(obj: dict, line: int) -> Record:
    chosen, rejected = _text(obj, "chosen", line), _text(obj, "rejected", line)
    # The prompt is the shared dialogue up to its last Assistant turn (compared, not assumed:
    # a few real records have a stray "Human:" inside a reply).
    common = next(
        (i for i, (a, b) in enumerate(zip(chosen, rejected, strict=False)) if a != b), min(len(chosen), len(rejected))
    )
    cut = chosen.rfind(ASSISTANT, 0, common + len(ASSISTANT)) if common < len(chosen) else chosen.rfind(ASSISTANT)
    if cut < 0 or not (chosen.startswith(HUMAN) or chosen.startswith("Human:")):
        raise ValueError("not an hh-rlhf dialogue: 'chosen' and 'rejected' share no “Human: … Assistant:” turns")
    prefix = chosen[:cut]
    parts = _HH_TURN.split(prefix if prefix.startswith("\n\n") else "\n\n" + prefix)
    messages: list[Message] = []
    for speaker, said in zip(parts[1::2], parts[2::2], strict=True):
        role, content = ("user" if speaker == "Human" else "assistant"), said.strip()
        # Real records have empty turns ("Assistant: " then the next "Human:") and two Assistant
        # blocks in a row (a "Human:" written inside a reply): the turns keep every word and alternate.
        if not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    meta = {"chosen": chosen[cut + len(ASSISTANT) :].strip(), "rejected": rejected[cut + len(ASSISTANT) :].strip()}
    record = Record(line, messages, None, None, meta, source_format="hh-rlhf")
    return _with_pair(record, meta["chosen"], meta["rejected"], None)


def _with_pair(record: Record, chosen: str, rejected: str, origin_id: str | None) -> Record:
    if chosen == rejected:
        record.identical_pair = True
    else:
        record.feedback.append(Feedback(TaskKind.comparison, [chosen, rejected], origin_id=origin_id))
    return record


def _preference(obj: dict, line: int) -> Record:
    """TRL's preference format with an explicit prompt, plain or conversational."""
    prompt = obj.get("prompt")
    if isinstance(prompt, list):
        messages = prompt
    elif isinstance(prompt, str):
        messages = _user(prompt)
    else:
        raise ValueError("field 'prompt' must be a string or a list of messages")
    chosen, rejected = _answer(obj, "chosen"), _answer(obj, "rejected")
    ext = obj.get("id")
    origin = str(ext) if ext not in (None, "") else None
    split = obj.get("split")
    if split not in (None, "") and (not isinstance(split, str) or split not in Split.__members__):
        raise ValueError(f"split must be train, valid or test; got {split!r}")
    record = Record(
        line,
        messages,
        None,
        origin,
        {},
        Split(split) if split else None,
        source_format="preferences",
        category=parse_category(obj.get("category")),
    )
    return _with_pair(record, chosen, rejected, origin)


def _answer(obj: dict, key: str) -> str:
    """A preference answer: a string, or (conversational) a list of one assistant message."""
    value = obj.get(key)
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        message = value[0]
        if message.get("role") == "assistant" and isinstance(message.get("content"), str):
            return message["content"].strip()
    raise ValueError(f"field {key!r} must be a string or a list of one assistant message")


OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def _oasst(obj: dict, line: int) -> list[Record]:
    """One prompt per prompter message: the thread from the root down to it. A deleted message
    leaves out itself and everything below it (a thread can't skip a turn)."""
    root = obj["prompt"] if isinstance(obj.get("prompt"), dict) else obj
    if root.get("role") != "prompter":
        raise ValueError("not an OpenAssistant tree: expected a root message with role 'prompter'")
    tree_id = obj.get("message_tree_id") or root.get("message_id")
    records: list[Record] = []
    stack: list[tuple[dict, list[Any]]] = [(root, [])]  # (message, the thread above it)
    while stack:
        message, above = stack.pop()
        role = OASST_ROLES.get(str(message.get("role")))
        if role is None:
            raise ValueError(
                f"message {message.get('message_id') or '?'} has role {message.get('role')!r}; "
                "expected prompter or assistant"
            )
        thread = [*above, {"role": role, "content": _text(message, "text", line)}]
        replies = [r for r in message.get("replies") or [] if isinstance(r, dict) and not r.get("deleted")]
        if role == "user":
            answers = [r for r in replies if isinstance(r.get("text"), str)]
            ranked = sorted(answers, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
            ext = message.get("message_id") or (tree_id if message is root else None)
            meta: dict[str, Any] = {"lang": message.get("lang"), "replies": len(answers), "message_tree_id": tree_id}
            records.append(
                Record(
                    line,
                    thread,
                    ranked[0]["text"] if ranked else None,
                    str(ext) if ext else None,
                    meta,
                    source_format="oasst",
                    where=f"message {ext}" if ext else "",
                    feedback=_oasst_feedback(answers, str(ext) if ext else None),
                )
            )
        stack.extend((r, thread) for r in reversed(replies))  # in the file's order, depth first
    return records


def _oasst_feedback(answers: list[dict], message_id: str | None) -> list[Feedback]:
    """The replies people ranked (two or more) as a ranking, equal ranks tied; the best reply, or
    the only one, as a demonstration unless a model wrote it (`synthetic`)."""
    feedback = []
    ranked = sorted((r for r in answers if isinstance(r.get("rank"), int)), key=lambda r: r["rank"])
    if len(ranked) >= 2:
        groups: list[list[int]] = []
        for i, reply in enumerate(ranked):
            if i and reply["rank"] == ranked[i - 1]["rank"]:
                groups[-1].append(i)
            else:
                groups.append([i])
        if len(groups) >= 2:
            feedback.append(Feedback(TaskKind.ranking, [r["text"] for r in ranked], groups, message_id))
    best = ranked[0] if ranked else answers[0] if len(answers) == 1 else None
    if best is not None and not best.get("synthetic") and best["text"].strip():
        reply_id = best.get("message_id")
        feedback.append(Feedback(TaskKind.demonstration, [best["text"]], origin_id=str(reply_id) if reply_id else None))
    return feedback


# ---------------------------------------------------------------- the file


def parse(text: str, *, filename: str = "", fmt: str = "auto") -> tuple[list[Record], list[LineError]]:
    if fmt not in FORMATS:
        raise ImportRefused(f"Unknown format {fmt!r}; use one of {', '.join(FORMATS)}.")
    stripped = text.lstrip()
    lower = filename.lower().removesuffix(".gz")
    if fmt == "csv" or (fmt == "auto" and lower.endswith((".csv", ".tsv"))):
        return _parse_csv(text, delimiter="\t" if lower.endswith(".tsv") else ",")
    if stripped.startswith("["):
        return _parse_array(text, fmt)
    return _parse_lines(text, fmt)


def _parse_lines(text: str, fmt: str) -> tuple[list[Record], list[LineError]]:
    records, errors, decoded = [], [], 0
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            errors.append(LineError(number, f"broken JSON: {exc.msg} at column {exc.colno}"))
            continue
        decoded += 1
        try:
            records.extend(_records_from_object(obj, number, fmt))
        except ValueError as exc:
            errors.append(LineError(number, str(exc)))
    if not decoded:
        raise ImportRefused(
            "This file is not JSON Lines, a JSON array or CSV: no line could be read as JSON. "
            "Check the format (CSV files need a .csv name or the CSV format picked)."
        )
    return records, errors


def _parse_array(text: str, fmt: str) -> tuple[list[Record], list[LineError]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [LineError(exc.lineno, f"broken JSON array: {exc.msg} at column {exc.colno}")]
    if not isinstance(items, list):
        raise ImportRefused("Expected a JSON array of records.")
    records, errors = [], []
    for index, obj in enumerate(items, start=1):
        try:
            records.extend(_records_from_object(obj, index, fmt))
        except ValueError as exc:
            errors.append(LineError(index, f"(item {index}) {exc}"))
    return records, errors


def _parse_csv(text: str, delimiter: str) -> tuple[list[Record], list[LineError]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
    except csv.Error as exc:
        raise ImportRefused(f"The CSV header can't be read: {exc}.") from exc
    if not any(k in header for k in PROMPT_KEYS):
        raise ImportRefused(
            f"The CSV header has no prompt column: name one of {', '.join(PROMPT_KEYS)} "
            f"(found: {', '.join(header) or 'nothing'})."
        )
    reader.fieldnames = header
    records, errors = [], []
    try:
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                errors.append(
                    LineError(
                        line,
                        f"expected {len(header)} columns, got "
                        f"{len(header) + len(row.get(None) or []) if None in row else 'fewer'}",
                    )
                )
                continue
            row = {k: v for k, v in row.items() if v != ""}
            try:
                records.append(_generic({**row, "__csv__": True}, line))
            except ValueError as exc:
                errors.append(LineError(line, str(exc)))
    except csv.Error as exc:
        errors.append(LineError(reader.line_num, f"broken CSV: {exc}"))
    for r in records:
        r.meta.pop("__csv__", None)
    return records, errors


def preview_import(
    session: Session,
    project: Project,
    data: bytes,
    *,
    filename: str = "",
    fmt: str = "auto",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_bytes: int = MAX_IMPORT_BYTES,
    feedback: bool = True,
    answers_as_demonstrations: bool = False,
) -> ImportPreview:
    """Everything an import would do, without writing: records, split, problems, duplicates, and
    the feedback it brings (none with `feedback=False`: the prompts only)."""
    _check_fractions(valid_fraction, test_fraction)
    records, errors = parse(decode(data, max_bytes=max_bytes), filename=filename, fmt=fmt)
    return _plan(
        session,
        project,
        records,
        errors,
        filename,
        fmt,
        valid_fraction,
        test_fraction,
        feedback=feedback,
        answers_as_demonstrations=answers_as_demonstrations,
    )


def preview_objects(
    session: Session,
    project: Project,
    objects: list[Any],
    *,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    feedback: bool = True,
    answers_as_demonstrations: bool = False,
) -> ImportPreview:
    """The same for prompts sent as JSON objects (the bulk API); item i is "line" i + 1."""
    _check_fractions(valid_fraction, test_fraction)
    records, errors = [], []
    for number, obj in enumerate(objects, start=1):
        try:
            records.extend(_records_from_object(obj, number, "auto"))
        except ValueError as exc:
            errors.append(LineError(number, str(exc)))
    return _plan(
        session,
        project,
        records,
        errors,
        "api",
        "auto",
        valid_fraction,
        test_fraction,
        feedback=feedback,
        answers_as_demonstrations=answers_as_demonstrations,
    )


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not (0 <= valid_fraction <= 1 and 0 <= test_fraction <= 1 and valid_fraction + test_fraction < 1):
        raise ServiceError("The valid and test shares must be between 0 and 1 and leave some prompts for training.")


def _plan(
    session: Session,
    project: Project,
    records: list[Record],
    errors: list[LineError],
    filename: str,
    fmt: str,
    valid_fraction: float,
    test_fraction: float,
    *,
    feedback: bool = True,
    answers_as_demonstrations: bool = False,
) -> ImportPreview:
    kept: list[Record] = []
    duplicates: list[tuple[int, int]] = []
    seen: dict[str, int] = {}
    planned: list[PlannedFeedback] = []
    drawn: set[int] = set()  # lines whose split was drawn here (not set by the file)
    for r in records:
        if problem := _problem(r) or (_feedback_problem(r) if feedback else None):
            errors.append(LineError(r.line, f"({r.where}) {problem}" if r.where else problem))
            continue
        r.content_hash = conversation.content_hash(r.messages)
        if feedback:
            # A duplicate line still brings its own feedback, to the prompt its first line gave.
            planned += [
                PlannedFeedback(r.content_hash, r.line, f, r.source_format)
                for f in _feedback_of(r, answers_as_demonstrations)
            ]
        if r.content_hash in seen:
            duplicates.append((r.line, seen[r.content_hash]))
            continue
        seen[r.content_hash] = r.line
        if r.split is None:
            r.split = split_for(split_key(r.messages), valid_fraction, test_fraction)
            drawn.add(r.line)
        kept.append(r)
    errors.sort(key=lambda e: e.line)
    existing_hashes = _existing_hashes(session, project.id, [r.content_hash for r in kept])
    existing = [r.line for r in kept if r.content_hash in existing_hashes]
    kept = [r for r in kept if r.content_hash not in existing_hashes]
    if not any(r.split == Split.train for r in kept):
        # A small file can draw every prompt into valid or test (2 prompts: 4% of the time both in
        # test) and bring nothing to demonstrate, no task: its first drawn prompt trains instead.
        first = next((r for r in kept if r.line in drawn), None)
        if first is not None:
            first.split = Split.train
    # Feedback for a prompt the project has goes to it, unless that prompt already holds imported
    # feedback of the kind (the same file imported twice doesn't count its pairs twice).
    fed = _imported_kinds(session, project.id, sorted(existing_hashes))
    with_feedback = [f for f in planned if (f.content_hash, f.feedback.kind) not in fed]
    formats: dict[str, int] = {}
    for r in records:
        formats[r.source_format] = formats.get(r.source_format, 0) + 1
    return ImportPreview(
        filename,
        fmt,
        kept,
        errors,
        duplicates,
        existing,
        formats,
        feedback=with_feedback,
        identical_pairs=[r.line for r in records if r.identical_pair],
        feedback_already=len(planned) - len(with_feedback),
        take_feedback=feedback,
    )


def _feedback_of(r: Record, answers_as_demonstrations: bool) -> list[Feedback]:
    """A record's feedback; with `answers_as_demonstrations`, its reference as a demonstration too
    (where the file gave none already)."""
    found = list(r.feedback)
    has_demonstration = any(f.kind == TaskKind.demonstration for f in found)
    if answers_as_demonstrations and r.reference and normalize(r.reference) and not has_demonstration:
        found.append(Feedback(TaskKind.demonstration, [normalize(r.reference)], origin_id=r.external_id))
    return found


def _feedback_problem(r: Record) -> str | None:
    """Why a record's feedback can't be stored (the checks of the database write), or None."""
    for f in r.feedback:
        for i, answer in enumerate(f.answers):
            what = "answer" if f.kind == TaskKind.demonstration else f"{f.kind.value} answer {i + 1}"
            if len(answer) > MAX_PROMPT_CHARS:
                return f"the {what} has {len(answer):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
            if problem := row_problem(table(Completion), {"text": answer, "source": ""}):
                return f"the {what}: {problem}"
        if f.origin_id and (problem := row_problem(table(Demonstration), {"origin_id": f.origin_id})):
            return problem
    return None


def _imported_kinds(session: Session, project_id: int, hashes: list[str]) -> set[tuple[str, TaskKind]]:
    """(prompt hash, kind) of the prompts among `hashes` that already hold imported feedback."""
    found: set[tuple[str, TaskKind]] = set()
    for i in range(0, len(hashes), 500):
        chunk = hashes[i : i + 500]
        parts = [
            select(Prompt.content_hash, Task.kind)
            .join(Task, Task.prompt_id == Prompt.id)
            .join(model, model.task_id == Task.id)
            .where(Prompt.project_id == project_id, Prompt.content_hash.in_(chunk), model.user_id.is_(None))
            for model in SUBMISSION_MODELS.values()
        ]
        found.update((h, TaskKind(k)) for h, k in session.execute(union_all(*parts)))
    return found


def _problem(r: Record) -> str | None:
    """Why a record can't be imported, or None; its messages are checked and normalized in place."""
    raw = r.messages
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], dict) and raw[0].get("role") == "user":
        # A plain prompt: said as a prompt, not as "message 1".
        text = raw[0].get("content")
        if isinstance(text, str) and not normalize(text):
            return "the prompt is empty"
        if isinstance(text, str) and len(normalize(text)) > MAX_PROMPT_CHARS:
            return f"the prompt has {len(normalize(text)):,} characters; the limit is {MAX_PROMPT_CHARS:,}"
    try:
        r.messages = conversation.check(raw, max_chars=MAX_PROMPT_CHARS)
    except ConversationError as exc:
        return str(exc)
    # The same checks the database write makes, so a preview that passes also commits.
    return row_problem(
        table(Prompt),
        {
            "messages": r.messages,
            "text": r.text,
            "reference": r.reference,
            "external_id": r.external_id,
            "meta": r.meta,
        },
    )


def _existing_hashes(session: Session, project_id: int, hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for i in range(0, len(hashes), 500):
        chunk = hashes[i : i + 500]
        found.update(
            session.scalars(
                select(Prompt.content_hash).where(Prompt.project_id == project_id, Prompt.content_hash.in_(chunk))
            )
        )
    return found


def run_import(
    session: Session,
    project: Project,
    data: bytes,
    *,
    filename: str = "",
    fmt: str = "auto",
    valid_fraction: float = 0.1,
    test_fraction: float = 0.1,
    create_tasks: bool = False,
    max_bytes: int = MAX_IMPORT_BYTES,
    feedback: bool = True,
    answers_as_demonstrations: bool = False,
) -> ImportResult:
    """All or nothing: any bad line refuses the whole file with a report of the lines."""
    preview = preview_import(
        session,
        project,
        data,
        filename=filename,
        fmt=fmt,
        valid_fraction=valid_fraction,
        test_fraction=test_fraction,
        max_bytes=max_bytes,
        feedback=feedback,
        answers_as_demonstrations=answers_as_demonstrations,
    )
    return commit(session, project, preview, source=filename or "upload", create_tasks=create_tasks)


NOTHING_NEW = "Nothing to import: every prompt given is already in this project, and it brings no new feedback."


def commit(
    session: Session, project: Project, preview: ImportPreview, *, source: str, create_tasks: bool = False
) -> ImportResult:
    """Writes a preview's prompts and feedback, or refuses the whole of it if any line was bad."""
    projects.check_writable(project)
    if preview.errors:
        raise ServiceError(
            f"Nothing was imported: {len(preview.errors)} line{'s' * (len(preview.errors) > 1)} "
            f"can't be read.\n{preview.error_report()}"
        )
    if not preview.records and not preview.feedback:
        raise ServiceError(NOTHING_NEW)
    prompts = [Prompt(**prompt_values(project.id, r, source)) for r in preview.records]
    try:
        with session.begin_nested():
            session.add_all(prompts)
            session.flush()
    except IntegrityError as exc:  # another import of the same prompts finished first
        raise Conflict(
            "Some of these prompts were imported by someone else at the same time; preview them again."
        ) from exc
    tasks_created = 0
    if create_tasks:
        train = [p for p in prompts if p.split == Split.train]
        tasks_created = len(tasks.create_demonstration_tasks(session, project, train))
    written = write_feedback(session, project.id, preview.feedback, origin_file=source)
    return ImportResult(prompts, preview, tasks_created, written)


def _prompt_ids(session: Session, project_id: int, hashes: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    ordered = sorted(hashes)
    for i in range(0, len(ordered), 500):
        rows = session.execute(
            select(Prompt.content_hash, Prompt.id).where(
                Prompt.project_id == project_id, Prompt.content_hash.in_(ordered[i : i + 500])
            )
        )
        found.update({h: pid for h, pid in rows})
    return found


def write_feedback(
    session: Session, project_id: int, planned: list[PlannedFeedback], *, origin_file: str, job_id: int | None = None
) -> dict[str, int]:
    """Stores feedback as submissions without a labeler, each on a closed task of its own (never
    handed out) with its outputs; the prompts are in the database already. Returns counts per kind."""
    prompt_ids = _prompt_ids(session, project_id, {p.content_hash for p in planned})
    output_source = f"imported: {origin_file}"[:200]
    made: list[tuple[PlannedFeedback, Task, list[Completion]]] = []
    for p in planned:
        prompt_id = prompt_ids[p.content_hash]
        task = Task(
            project_id=project_id, prompt_id=prompt_id, kind=p.feedback.kind, status=TaskStatus.closed, done_count=1
        )
        outputs = []
        if p.feedback.kind != TaskKind.demonstration:
            outputs = [Completion(prompt_id=prompt_id, source=output_source, text=a) for a in p.feedback.answers]
            task.outputs = [TaskCompletion(completion=c, position=i) for i, c in enumerate(outputs)]
        made.append((p, task, outputs))
    session.add_all([task for _, task, _ in made])
    session.flush()
    counts: Counter[str] = Counter()
    for p, task, outputs in made:
        f = p.feedback
        common: dict[str, Any] = {
            "task_id": task.id,
            "user_id": None,
            "origin_file": origin_file[:200],
            "origin_line": p.line,
            "origin_id": f.origin_id,
            "import_job_id": job_id,
        }
        ids = [c.id for c in outputs]
        sub: Demonstration | Ranking | Comparison
        if f.kind == TaskKind.demonstration:
            sub = Demonstration(**common, prompt_id=task.prompt_id, text=f.answers[0])
        elif f.kind == TaskKind.ranking:
            sub = Ranking(
                **common,
                order=[[ids[i] for i in group] for group in f.order],
                display_order=ids,
                ratings={},
                flag_count=0,
            )
        else:  # the chosen answer is A, and chosen
            sub = Comparison(**common, a_completion_id=ids[0], b_completion_id=ids[1], choice=ComparisonChoice.a)
        session.add(sub)
        counts[f.kind.value] += 1
    session.flush()
    return dict(counts)


def _delete_feedback(session: Session, task_ids) -> None:
    """Deletes imported submissions on the tasks `task_ids` selects, with those tasks and their outputs."""
    tasks_of: list[int] = []
    for model in SUBMISSION_MODELS.values():
        tasks_of += session.scalars(select(model.task_id).where(model.task_id.in_(task_ids), model.user_id.is_(None)))
        session.execute(
            delete(model)
            .where(model.task_id.in_(task_ids), model.user_id.is_(None))
            .execution_options(synchronize_session=False)
        )
    for i in range(0, len(tasks_of), 500):
        chunk = tasks_of[i : i + 500]
        outputs = list(session.scalars(select(TaskCompletion.completion_id).where(TaskCompletion.task_id.in_(chunk))))
        session.execute(delete(TaskCompletion).where(TaskCompletion.task_id.in_(chunk)))
        session.execute(delete(Task).where(Task.id.in_(chunk)).execution_options(synchronize_session=False))
        session.execute(
            delete(Completion).where(Completion.id.in_(outputs)).execution_options(synchronize_session=False)
        )


def _job_feedback_tasks(job_id: int, *more):
    """The tasks of a job's imported feedback (on its prompts, or on prompts it found in the project),
    and those `more` selects (one flat UNION: SQLite refuses nested ones)."""
    return union_all(*[select(m.task_id).where(m.import_job_id == job_id) for m in SUBMISSION_MODELS.values()], *more)


def prompt_values(project_id: int, r: Record, source: str) -> dict[str, Any]:
    """A Prompt row's columns for an imported record (both the direct import and the job's)."""
    return {
        "project_id": project_id,
        "messages": r.messages,
        "text": r.text,
        "split": r.split,
        "source": source[:200],
        "external_id": r.external_id,
        "content_hash": r.content_hash,
        "reference": r.reference,
        "meta": r.meta,
        "category": r.category,
    }


# ---------------------------------------------------------------- web imports as background jobs

# Files larger than this import in the background (the request returns at once and the page
# follows the job); smaller ones finish within the request, as before.
BACKGROUND_MIN_BYTES = 1024 * 1024
JOB_CHUNK = 2_000
"""Prompts per transaction: each chunk commits with the job's progress, so the page can show it and
neither the request nor the database holds a 500,000-prompt transaction."""


def summary(preview: ImportPreview, tasks_created: int, written: dict[str, int] | None = None) -> str:
    counts = preview.split_counts
    message = (
        f"Imported {len(preview.records):,} prompts (train {counts['train']:,}, valid {counts['valid']:,}, "
        f"test {counts['test']:,})."
    )
    if preview.duplicates or preview.existing:
        message += (
            f" Skipped {len(preview.duplicates):,} duplicates in the file and "
            f"{len(preview.existing):,} already in the project."
        )
    if tasks_created:
        message += f" Created {tasks_created:,} demonstration tasks."
    if feedback := feedback_summary(written or {}):
        message += f" Imported feedback (no labeler): {feedback}."
    return message


def feedback_summary(counts: dict[str, int]) -> str:
    """ "1,553 comparisons, 212 rankings" (kinds with none left out)."""
    return ", ".join(f"{n:,} {kind}{'s' * (n != 1)}" for kind, n in counts.items() if n)


@atomic  # committed before the job runs: its thread reads the row from a session of its own
def start_job(
    session: Session, project: Project, *, filename: str, options: dict[str, Any], created_by: User | None
) -> ImportJob:
    projects.check_writable(project)
    job = ImportJob(
        project_id=project.id,
        filename=filename[:200],
        options=options,
        created_by_id=created_by.id if created_by else None,
    )
    session.add(job)
    session.flush()
    return job


def run_job(engine: Engine, job_id: int, data: bytes) -> ImportJob:
    """Parses the upload, then writes its prompts JOB_CHUNK at a time, each chunk in its own
    transaction with the job's progress. All or nothing all the same: when anything fails, the
    prompts the job added are deleted and the job says why. Returns the finished job."""
    try:
        with read_session(engine) as session:  # parsing holds no writer lock
            job = session.get_one(ImportJob, job_id)
            project = session.get_one(Project, job.project_id)
            o = job.options
            preview = preview_import(
                session,
                project,
                data,
                filename=job.filename,
                fmt=o.get("fmt", "auto"),
                valid_fraction=o.get("valid_fraction", 0.1),
                test_fraction=o.get("test_fraction", 0.1),
                feedback=o.get("feedback", True),
                answers_as_demonstrations=o.get("answers_as_demonstrations", False),
            )
            if preview.errors:
                raise ServiceError(
                    f"Nothing was imported: {len(preview.errors)} line"
                    f"{'s' * (len(preview.errors) > 1)} can't be read.\n{preview.error_report()}"
                )
            if not preview.records and not preview.feedback:
                raise ServiceError(NOTHING_NEW)
        with write_session(engine) as session:
            session.execute(update(ImportJob).where(ImportJob.id == job_id).values(total=len(preview.records)))
        for start in range(0, len(preview.records), JOB_CHUNK):
            chunk = preview.records[start : start + JOB_CHUNK]
            with write_session(engine) as session:
                session.execute(
                    insert(Prompt),
                    [
                        {**prompt_values(project.id, r, job.filename or "upload"), "import_job_id": job_id}
                        for r in chunk
                    ],
                )
                session.execute(
                    update(ImportJob).where(ImportJob.id == job_id).values(done=ImportJob.done + len(chunk))
                )
        written: Counter[str] = Counter()
        for start in range(0, len(preview.feedback), JOB_CHUNK):  # after every prompt is in
            with write_session(engine) as session:
                chunk_feedback = preview.feedback[start : start + JOB_CHUNK]
                origin = job.filename or "upload"
                written.update(write_feedback(session, project.id, chunk_feedback, origin_file=origin, job_id=job_id))
        tasks_created = 0
        with write_session(engine) as session:
            if o.get("create_tasks"):  # one demonstration task per new train prompt
                train_ids = list(
                    session.scalars(
                        select(Prompt.id).where(Prompt.import_job_id == job_id, Prompt.split == Split.train)
                    )
                )
                tasks_created = tasks.insert_demonstration_tasks(session, project, train_ids)
            session.execute(
                update(ImportJob)
                .where(ImportJob.id == job_id)
                .values(
                    status=ImportJobStatus.succeeded,
                    message=summary(preview, tasks_created, dict(written)),
                    finished_at=utcnow(),
                )
            )
    except Exception as exc:  # noqa: BLE001 - every failure ends the job, with its prompts removed
        if isinstance(exc, IntegrityError):
            message = "Some of these prompts were imported by someone else at the same time; preview them again."
        elif isinstance(exc, ServiceError):
            message = exc.message
        else:
            log.exception("import job %s failed", job_id)
            message = f"The import failed ({type(exc).__name__}); nothing was imported."
        fail_job(engine, job_id, message)
    with read_session(engine) as session:
        return session.get_one(ImportJob, job_id)


def run_upload(engine: Engine, job_id: int, upload: Path) -> ImportJob | None:
    """Runs a started job on the previewed upload (removed once read): a small file at once, its
    finished job returned; a large one in a thread of its own (None), its page showing the progress."""
    data = upload.read_bytes()
    upload.unlink(missing_ok=True)
    if len(data) > BACKGROUND_MIN_BYTES:
        threading.Thread(target=run_job, args=(engine, job_id, data), daemon=True, name=f"import-job-{job_id}").start()
        return None
    return run_job(engine, job_id, data)


def fail_job(engine: Engine, job_id: int, message: str) -> None:
    """Removes what the job added and records why it ended."""
    with write_session(engine) as session:
        _delete_feedback(session, _job_feedback_tasks(job_id))
        session.execute(delete(Prompt).where(Prompt.import_job_id == job_id))
        session.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(status=ImportJobStatus.failed, message=message, done=0, finished_at=utcnow())
        )


def fail_unfinished_jobs(engine: Engine) -> int:
    """At server start: jobs a previous server process was running can't finish any more."""
    with read_session(engine) as session:
        ids = list(session.scalars(select(ImportJob.id).where(ImportJob.status == ImportJobStatus.running)))
    for job_id in ids:
        fail_job(engine, job_id, "The server stopped during this import; nothing was imported. Import the file again.")
    return len(ids)


def recent_jobs(session: Session, project_id: int, *, limit: int = 10) -> list[ImportJob]:
    return list(
        session.scalars(
            select(ImportJob).where(ImportJob.project_id == project_id).order_by(ImportJob.id.desc()).limit(limit)
        )
    )


def get_job(session: Session, project_id: int, job_id: int) -> ImportJob:
    job = session.get(ImportJob, job_id)
    if job is None or job.project_id != project_id:
        raise NotFound("There is no such import.")
    return job


@dataclass
class ImportContents:
    """What deleting an import takes with it, and the submissions that forbid it."""

    prompts: int
    tasks: int
    completions: int
    submissions: int
    """Labelers' submissions on its prompts."""
    feedback: int = 0
    """Imported feedback that goes with it (no labeler)."""


def import_contents(session: Session, job: ImportJob) -> ImportContents:
    prompt_ids = select(Prompt.id).where(Prompt.import_job_id == job.id)
    task_ids = select(Task.id).where(Task.prompt_id.in_(prompt_ids))
    submissions = sum(
        session.scalar(
            select(func.count()).select_from(model).where(model.task_id.in_(task_ids), model.user_id.is_not(None))
        )
        or 0
        for model in SUBMISSION_MODELS.values()
    )
    feedback = sum(
        session.scalar(
            select(func.count())
            .select_from(model)
            .where(model.user_id.is_(None), or_(model.task_id.in_(task_ids), model.import_job_id == job.id))
        )
        or 0
        for model in SUBMISSION_MODELS.values()
    )
    return ImportContents(
        prompts=session.scalar(select(func.count()).select_from(Prompt).where(Prompt.import_job_id == job.id)) or 0,
        tasks=session.scalar(select(func.count()).select_from(Task).where(Task.prompt_id.in_(prompt_ids))) or 0,
        completions=session.scalar(
            select(func.count()).select_from(Completion).where(Completion.prompt_id.in_(prompt_ids))
        )
        or 0,
        submissions=submissions,
        feedback=feedback,
    )


def delete_import(session: Session, project_id: int, job_id: int) -> ImportContents:
    """Deletes an import: its prompts with their tasks and model outputs, and the import's record.
    Refused while any submission was made on them (submissions are never deleted silently): retire
    those tasks or archive the project instead. Returns what went."""
    job = get_job(session, project_id, job_id)
    projects.check_writable(projects.get_project(session, project_id))
    if job.status == ImportJobStatus.running:
        raise Conflict("This import is still running; wait for it to finish, then delete it.")
    gone = import_contents(session, job)
    if gone.submissions:
        raise Conflict(
            f"Labelers made {gone.submissions} submission(s) on this import's prompts, and submissions are never "
            "deleted silently. Retire its prompts' tasks (Flags, Tasks) or archive the project instead."
        )
    prompt_ids = select(Prompt.id).where(Prompt.import_job_id == job.id)
    # The feedback it brought first (imported feedback on its prompts too, whichever import brought it).
    _delete_feedback(session, _job_feedback_tasks(job.id, select(Task.id).where(Task.prompt_id.in_(prompt_ids))))
    # Children first: a task's outputs refer to completions that the prompt's deletion would remove.
    session.execute(delete(Task).where(Task.prompt_id.in_(prompt_ids)).execution_options(synchronize_session=False))
    session.execute(
        delete(Completion).where(Completion.prompt_id.in_(prompt_ids)).execution_options(synchronize_session=False)
    )
    session.execute(delete(Prompt).where(Prompt.import_job_id == job.id).execution_options(synchronize_session=False))
    session.delete(job)
    session.flush()
    return gone
