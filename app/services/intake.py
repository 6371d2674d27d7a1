"""The intake: an application sends its users' real prompts to a project (InstructGPT §3.2, "where
prompts come from"), through an app token bound to that project.

A prompt is a text (one user turn) or a conversation (`messages`, app.conversation: an optional
system message, then user and assistant turns alternating, ending with the user's turn). Each
prompt passes, in this order:
1. the checks every write makes (not empty, no NUL, at most MAX_TEXT_CHARS in all its turns, a
   well-formed conversation, small metadata);
2. a PII scan (emails, phone numbers, Luhn-valid card numbers) of every user turn and the
   metadata's strings: the kinds found are stored on the prompt (`Prompt.pii`), never the text
   matched; with `pii="drop"` a prompt with PII is not stored at all (nothing is written or logged);
3. deduplication by long common prefix: the text lowercased, whitespace collapsed, cut to its first
   PREFIX_CHARS characters (the whole text when shorter) and hashed into `Prompt.prefix_hash`; a
   prompt whose prefix hash (or exact text) the project has already is skipped as a duplicate. For
   a conversation the prefix is that of its last user turn, after all its earlier turns whole: two
   conversations are duplicates when they agree up to their last user turn and on its first
   PREFIX_CHARS characters (a prefix of the whole rendering would make every later turn of a chat
   with a long opening a duplicate of its first). The unique index (project_id, prefix_hash) makes
   this one index lookup and race-safe;
4. the cap: at most MAX_PROMPTS_PER_END_USER prompts per end user per project (429 beyond);
5. the split, from sha256(project id, end user): every prompt of one end user lands in the same
   split (VALID_FRACTION / TEST_FRACTION), so no user's prompts straddle train and evaluation.

The end user's id is stored only as that hash (`Prompt.end_user_hash`): an application's user ids
are often emails or account numbers, and the cap and split need only equality. The hash includes
the project id, so one person is not linkable across projects by it (it is not a secret: send ids
that are opaque already).
"""

import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, NoReturn

from sqlalchemy import bindparam, func, literal, null, or_, select, text, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, joinedload

from app import conversation
from app.conversation import ConversationError, Message
from app.db import atomic, utcnow
from app.models import AppToken, Project, Prompt, PromptCategory, Split, User, table
from app.security import token_hash
from app.services import Forbidden, NotFound, ServiceError, imports, projects, tasks
from app.validation import json_problem, text_problem

PREFIX_CHARS = 200
"""Prompts whose first 200 normalized characters agree are duplicates (shorter ones: the whole text)."""
MAX_TEXT_CHARS = 32_768
"""A text's limit, and a conversation's (all its turns together)."""
MAX_BODY_BYTES = 1_000_000
"""Intake request bodies over this are refused with 413 before they are read (app.main.BodyLimit)."""
MAX_METADATA_BYTES = 4_096
MAX_END_USER_CHARS = 200
MAX_BATCH = 100
MAX_PROMPTS_PER_END_USER = 200
VALID_FRACTION = 0.1
TEST_FRACTION = 0.1
APP_TOKEN_PREFIX = "ilapp_"
PII_MODES = ("flag", "drop")


class RateLimited(ServiceError):
    status_code = 429

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.headers = {"Retry-After": str(max(1, int(retry_after_s + 0.999)))}


@dataclass
class Item:
    text: str | None
    """The prompt as one user turn; or None, and `messages` holds it."""
    end_user: str
    metadata: dict[str, Any] | None = None
    category: PromptCategory | None = None
    pii: str = "flag"
    messages: list[Any] | None = None
    """The prompt as a conversation ([{"role", "content"}, ...]); exactly one of text and messages."""


@dataclass
class Outcome:
    status: str
    """created | duplicate | dropped | refused (the end user's cap; a single request answers 429)."""
    prompt_id: int | None = None
    split: Split | None = None
    pii: list[str] = field(default_factory=list)
    reason: str | None = None


# ---------------------------------------------------------------- hashes


def prefix_of(text: str) -> str:
    """Lowercased, whitespace collapsed, the first PREFIX_CHARS characters."""
    return " ".join(text.lower().split())[:PREFIX_CHARS]


def prefix_hash(prompt: str | list[Message]) -> str:
    """A text's (one user turn's) prefix hash, or a conversation's: its turns before the last user
    turn whole (normalized as prefix_of normalizes, so they read alike), then the last user turn's
    prefix. A single user turn hashes as its text, as prompts stored before conversations did."""
    if isinstance(prompt, str):
        key = prefix_of(prompt)
    elif len(prompt) == 1 and prompt[0]["role"] == "user":
        key = prefix_of(prompt[0]["content"])
    else:
        earlier = [[m["role"], " ".join(m["content"].lower().split())] for m in prompt[:-1]]
        key = json.dumps(earlier, ensure_ascii=False) + "\x00" + prefix_of(prompt[-1]["content"])
    return hashlib.sha256(key.encode()).hexdigest()


def end_user_hash(project_id: int, end_user: str) -> str:
    return hashlib.sha256(f"{project_id}\x00{end_user}".encode()).hexdigest()


def split_for_end_user(project_id: int, end_user: str) -> Split:
    return imports.split_for(end_user_hash(project_id, end_user), VALID_FRACTION, TEST_FRACTION)


# ---------------------------------------------------------------- PII

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# A run of digits with the separators numbers are written with ("+1 (415) 555-0100", "4111 1111 ...").
_NUMBER = re.compile(r"(?<![\w+.])\+?\(?\d(?:[ ().-]{0,2}\d){6,22}(?![\w])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def pii_kinds(text: str) -> list[str]:
    """The kinds of personal data in the text: email, phone, credit_card (sorted; never the matches)."""
    found = set()
    if "@" in text and _EMAIL.search(text):
        found.add("email")
    for m in _NUMBER.finditer(text):
        raw = m.group()
        digits = re.sub(r"\D", "", raw)
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            found.add("credit_card")
        elif 10 <= len(digits) <= 15 and not re.fullmatch(r"\d+\.\d+", raw):  # not a decimal number
            found.add("phone")
    return sorted(found)


def _scanned_text(item: Item, messages: list[Message]) -> str:
    """Every user turn and the metadata's strings: what the end user wrote. (Assistant turns are the
    application's model speaking, the system message the application; an answer repeating a user's
    details repeats what a user turn holds already.)"""
    return "\n".join([*conversation.user_turns(messages), *_strings(item.metadata or {})])


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (str(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# ---------------------------------------------------------------- checks


def check_item(item: Item, number: int | None = None) -> list[Message]:
    """The item's prompt as a checked, normalized conversation; or ServiceError (422) naming what is
    wrong. Nothing of a refused request is stored."""
    where = f"prompt {number}: " if number is not None else ""

    def refuse(message: str) -> NoReturn:
        raise ServiceError(where + message, status_code=422)

    if (item.text is None) == (item.messages is None):
        refuse("send either text or messages, not both" if item.text is not None else "send text or messages")
    if item.messages is not None:
        try:
            messages = conversation.check(item.messages, max_chars=MAX_TEXT_CHARS)
        except ConversationError as exc:
            refuse(f"messages: {exc}")
        for n, message in enumerate(messages, start=1):
            if problem := text_problem(message["content"]):
                refuse(f"messages: message {n} ({message['role']}) {problem}")
    else:
        if not isinstance(item.text, str) or not item.text.strip():
            refuse("text is empty")
        if len(item.text) > MAX_TEXT_CHARS:
            refuse(f"text has {len(item.text):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        if problem := text_problem(item.text):
            refuse(f"text {problem}")
        messages = conversation.single(item.text)
    if not 1 <= len(item.end_user) <= MAX_END_USER_CHARS:
        refuse(f"end_user must be 1 to {MAX_END_USER_CHARS} characters")
    if item.pii not in PII_MODES:
        refuse("pii must be 'flag' or 'drop'")
    if item.metadata is not None:
        try:
            size = len(json.dumps(item.metadata, ensure_ascii=False).encode())
        except (TypeError, ValueError):
            refuse("metadata must be a JSON object")
        else:
            if size > MAX_METADATA_BYTES:
                refuse(f"metadata is {size:,} bytes as JSON; the limit is {MAX_METADATA_BYTES:,}")
    if problem := text_problem(item.end_user):
        refuse(f"end_user {problem}")
    if item.metadata is not None and (problem := json_problem(item.metadata)):
        refuse(f"metadata {problem}")
    return messages


# ---------------------------------------------------------------- rate limit


class RateLimiter:
    """A token bucket per app token, in this process's memory: `burst` prompts at once, refilled at
    `per_minute`. Several server processes each keep their own (the limit is per process)."""

    def __init__(self, per_minute: float, burst: int):
        self.rate, self.burst = per_minute / 60.0, max(1, burst)
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: int, n: int = 1) -> None:
        """Takes n from the key's bucket, or raises RateLimited with the wait."""
        now = time.monotonic()
        with self._lock:
            level, at = self._buckets.get(key, (float(self.burst), now))
            level = min(float(self.burst), level + (now - at) * self.rate)
            if n > level:
                self._buckets[key] = (level, now)
                wait = (n - level) / self.rate if self.rate > 0 and n <= self.burst else 60.0
                raise RateLimited(
                    f"Rate limit: this token may send {self.rate * 60:g} prompts a minute (bursts of "
                    f"{self.burst}); try again in {wait:.1f} s.",
                    wait,
                )
            self._buckets[key] = (level - n, now)


# ---------------------------------------------------------------- app tokens


def create_app_token(
    session: Session, project_id: int, *, name: str = "", create_tasks: bool = True, created_by: User | None = None
) -> tuple[AppToken, str]:
    """Returns the row and the raw token (shown once; only its hash is stored)."""
    project = projects.get_project(session, project_id)
    projects.check_writable(project)
    raw = APP_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AppToken(
        project_id=project.id,
        name=name.strip()[:120],
        token_hash=token_hash(raw),
        prefix=raw[:12],
        create_tasks=create_tasks,
        created_by_id=created_by.id if created_by else None,
    )
    session.add(row)
    session.flush()
    return row, raw


def app_tokens(session: Session, project_id: int) -> list[AppToken]:
    return list(session.scalars(select(AppToken).where(AppToken.project_id == project_id).order_by(AppToken.id.desc())))


def revoke_app_token(session: Session, project_id: int, token_id: int) -> AppToken:
    row = session.get(AppToken, token_id)
    if row is None or row.project_id != project_id:
        raise NotFound("This project has no such app token.")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


# Built once (it runs on every intake call), with its project: the intake reads both, in one round trip.
_APP_TOKEN = (
    select(AppToken)
    .options(joinedload(AppToken.project))
    .where(AppToken.token_hash == bindparam("token_hash"), AppToken.revoked_at.is_(None))
)


def app_token_for(session: Session, raw: str) -> AppToken | None:
    """The live app token with this value, or None (unknown, revoked, or not an app token)."""
    if not raw.startswith(APP_TOKEN_PREFIX):
        return None
    row = session.scalar(_APP_TOKEN, {"token_hash": token_hash(raw)})
    if row is not None:
        now = utcnow()
        if row.last_used_at is None or (now - row.last_used_at).total_seconds() > 60:
            row.last_used_at = now
    return row


# ---------------------------------------------------------------- receiving prompts


def receive(session: Session, token: AppToken, project_id: int, items: list[Item]) -> list[Outcome]:
    """Checks every item first (one bad item refuses the request, nothing stored), then stores the
    request's prompts in one transaction. Refuses an unknown project (404), another project's token
    (403) and an archived project (409)."""
    project = session.get(Project, project_id)  # the token's own project is loaded already
    if project is None:
        raise NotFound(f"There is no project {project_id}.")
    if token.project_id != project.id:
        raise Forbidden(f"This app token belongs to another project (id {token.project_id}).")
    projects.check_writable(project)
    if not items:
        raise ServiceError("No prompts sent.", status_code=422)
    if len(items) > MAX_BATCH:
        raise ServiceError(f"At most {MAX_BATCH} prompts per request; got {len(items)}.", status_code=422)
    conversations = [check_item(item, number if len(items) > 1 else None) for number, item in enumerate(items, 1)]
    outcomes: list[Outcome | None] = []
    rows: list[dict[str, Any]] = []
    for item, messages in zip(items, conversations, strict=True):
        kinds = pii_kinds(_scanned_text(item, messages))
        if kinds and item.pii == "drop":
            outcomes.append(Outcome("dropped", pii=kinds, reason="pii: " + ", ".join(kinds)))
            continue
        user_hash = end_user_hash(project.id, item.end_user)
        rows.append(
            {
                "project_id": project.id,
                "messages": messages,
                "text": conversation.render(messages),
                "split": imports.split_for(user_hash, VALID_FRACTION, TEST_FRACTION),
                "source": "intake",
                "content_hash": conversation.content_hash(messages),
                "prefix_hash": prefix_hash(messages),
                "end_user_hash": user_hash,
                "category": item.category,
                "pii": ",".join(kinds) or None,
                "meta": dict(item.metadata or {}),
                "created_at": utcnow(),
            }
        )
        outcomes.append(None)
    stored = iter(_store(session, project, token.create_tasks, rows) if rows else [])
    return [o if o is not None else next(stored) for o in outcomes]


def _duplicate(prompt_id: int, messages: list[Message]) -> Outcome:
    if len(messages) == 1:
        what = f"its first {PREFIX_CHARS} characters"
    else:
        what = f"its earlier turns and the first {PREFIX_CHARS} characters of its last user turn"
    return Outcome(
        "duplicate",
        prompt_id=prompt_id,
        reason=f"shares {what} (lowercased, spaces collapsed) with prompt {prompt_id}",
    )


def _refused() -> Outcome:
    return Outcome(
        "refused",
        reason=f"this end user has sent {MAX_PROMPTS_PER_END_USER} prompts to this project, the most it takes",
    )


# Set-based, in SQLAlchemy Core: the intake's throughput is bound by the server's CPU, and the ORM's
# unit of work per prompt and per task cost more than the statements themselves (bench/README.md).
# ON CONFLICT DO NOTHING: a prompt with the same prefix that another request committed after our
# duplicate check is skipped by the database (the unique ux_prompts_project_prefix) and answered as a
# duplicate below, never an IntegrityError that would undo the rest of the request.
_INSERT_PROMPTS = {
    name: dialect_insert(table(Prompt)).on_conflict_do_nothing().returning(Prompt.id, Prompt.prefix_hash)
    for name, dialect_insert in (("postgresql", postgresql.insert), ("sqlite", sqlite.insert))
}
_P = table(Prompt).c
# What the project has already, in one round trip: the prompts sharing a prefix or a text with this
# request's (lookups in ux_prompts_project_prefix and the content-hash key), and how many prompts each
# of its end users sent (ix_prompts_project_end_user; bounded, as the intake stops them at the cap).
_KNOWN = union_all(
    select(_P.id, _P.prefix_hash, _P.content_hash, null().label("end_user_hash"), literal(0).label("n")).where(
        _P.project_id == bindparam("project_id"),
        or_(
            _P.prefix_hash.in_(bindparam("prefixes", expanding=True)),
            _P.content_hash.in_(bindparam("contents", expanding=True)),
        ),
    ),
    select(null(), null(), null(), _P.end_user_hash, func.count())
    .where(_P.project_id == bindparam("project_id"), _P.end_user_hash.in_(bindparam("users", expanding=True)))
    .group_by(_P.end_user_hash),
)
# Each end user's prompts are taken one request at a time, so the cap's count holds (Postgres runs
# writers at once; SQLite's writer lock, taken by `atomic`, serializes them already). The keys come
# sorted, so two requests never wait for each other's locks in opposite orders.
_LOCK_END_USERS = text(
    "SELECT pg_advisory_xact_lock(:project_id, k) FROM (SELECT unnest(CAST(:keys AS integer[])) AS k ORDER BY 1) AS s"
)


@atomic
def _store(session: Session, project: Project, create_tasks: bool, rows: list[dict[str, Any]]) -> list[Outcome]:
    """One Outcome per row, in order: duplicate (of a stored prompt or of an earlier row), refused
    (the end user's cap) or created (with its demonstration task in the train split)."""
    db = session.connection()  # Core statements: see _INSERT_PROMPTS
    users = sorted({r["end_user_hash"] for r in rows})
    if db.dialect.name == "postgresql":
        db.execute(_LOCK_END_USERS, {"project_id": project.id, "keys": sorted({_lock_key(u) for u in users})})
    stored: dict[str, int] = {}  # prefix and content hashes the project has -> the prompt's id
    sent: dict[str, int] = {}  # end user -> prompts sent so far
    known = {
        "project_id": project.id,
        "prefixes": [r["prefix_hash"] for r in rows],
        "contents": [r["content_hash"] for r in rows],
        "users": users,
    }
    for prompt_id, prefix, content, user, n in db.execute(_KNOWN, known):
        if user is not None:
            sent[user] = n
            continue
        stored.setdefault(content, prompt_id)
        if prefix is not None:
            stored.setdefault(prefix, prompt_id)
    outcomes: list[Outcome] = []
    fresh: list[dict[str, Any]] = []  # the rows to insert
    pending: list[tuple[Outcome, int]] = []  # outcomes that wait for the id of fresh[i]
    taken: dict[str, int] = {}  # this request's new hashes -> their index in fresh
    for r in rows:
        keys = (r["prefix_hash"], r["content_hash"])
        if (earlier := next((stored[k] for k in keys if k in stored), None)) is not None:
            outcomes.append(_duplicate(earlier, r["messages"]))
            continue
        if (same := next((taken[k] for k in keys if k in taken), None)) is not None:
            outcome = Outcome("duplicate")
        elif sent.get(r["end_user_hash"], 0) >= MAX_PROMPTS_PER_END_USER:
            outcomes.append(_refused())
            continue
        else:
            sent[r["end_user_hash"]] = sent.get(r["end_user_hash"], 0) + 1
            same = len(fresh)
            taken.update(dict.fromkeys(keys, same))
            fresh.append(r)
            outcome = Outcome("created", split=r["split"], pii=r["pii"].split(",") if r["pii"] else [])
        outcomes.append(outcome)
        pending.append((outcome, same))
    if not fresh:
        return outcomes
    ids = {prefix: i for i, prefix in db.execute(_INSERT_PROMPTS[db.dialect.name], fresh)}  # prefix hash -> id
    for outcome, i in pending:
        r = fresh[i]
        if r["prefix_hash"] in ids:
            outcome.prompt_id = ids[r["prefix_hash"]]
            if outcome.status == "duplicate":
                outcome.reason = _duplicate(outcome.prompt_id, r["messages"]).reason
        else:  # stored by another request since our check: a duplicate of what it stored
            earlier = existing_prompt(session, project.id, r["messages"])
            if earlier is None:  # and deleted again since
                raise ServiceError(
                    "A prompt like this one changed while it was stored; send it again.", status_code=409
                )
            dup = _duplicate(earlier, r["messages"])
            outcome.status, outcome.prompt_id, outcome.reason = dup.status, dup.prompt_id, dup.reason
            outcome.split, outcome.pii = None, []
    if create_tasks:
        train = [ids[r["prefix_hash"]] for r in fresh if r["split"] == Split.train and r["prefix_hash"] in ids]
        tasks.insert_demonstration_tasks(db, project, train)
    return outcomes


def _lock_key(user_hash: str) -> int:
    return int(user_hash[:8], 16) - 2**31


def existing_prompt(session: Session, project_id: int, prompt: str | list[Message]) -> int | None:
    """A prompt of the project that this (normalized) text or conversation duplicates: same prefix
    hash or same content; or None."""
    return session.scalar(
        select(Prompt.id)
        .where(
            Prompt.project_id == project_id,
            or_(Prompt.prefix_hash == prefix_hash(prompt), Prompt.content_hash == imports.content_hash(prompt)),
        )
        .limit(1)
    )
