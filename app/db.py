"""Engine, sessions and the few places where Postgres and SQLite differ."""

import functools
import select as io_select
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar, cast

from sqlalchemy import CursorResult, DateTime, Engine, Result, Select, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from app.validation import guard_parameters  # importing it also registers the check every flush runs

P = ParamSpec("P")
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on both databases (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None:
            if value.tzinfo is None:
                raise ValueError("naive datetime given; use app.db.utcnow()")
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs)
        _configure_sqlite(engine)
        guard_parameters(engine)
        return engine
    # Up to 40 requests run at once per process (the threadpool): connections beyond pool_size are
    # opened and closed per request (a Postgres backend start each), so keep most of them pooled.
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_recycle", 3600)  # before firewalls or server timeouts drop idle connections
    engine = create_engine(url, **kwargs)
    event.listen(engine, "checkout", _drop_closed_connection)
    guard_parameters(engine)
    return engine


def _drop_closed_connection(dbapi_conn, _record, _proxy) -> None:
    """Replaces a pooled Postgres connection the server has closed (restart, idle timeout, kill).

    The server closes the socket of a connection it ends (after an error message), so an idle
    connection with something to read is dead. Asking the socket costs a system call where
    pool_pre_ping cost a round trip (a SELECT 1) per checkout; DisconnectionError makes the pool
    open a fresh connection instead."""
    if dbapi_conn.closed or io_select.select([dbapi_conn.fileno()], [], [], 0)[0]:
        raise DisconnectionError("the server closed this pooled connection")


HOLDS_WRITER_QUEUE = "holds_writer_queue"
"""Connection info key: this connection holds its process's place before SQLite's writer lock."""

SQLITE_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "SAVEPOINT", "CREATE", "DROP", "ALTER")


def _configure_sqlite(engine: Engine) -> None:
    """pysqlite's own transaction handling is off; we begin transactions ourselves, so that a
    transaction that writes holds SQLite's single writer lock from its start (BEGIN IMMEDIATE).

    A deferred transaction (plain BEGIN) reads from a snapshot; if another connection commits
    before its first write, SQLite refuses that write at once ("database is locked") and the busy
    timeout does not help. A web request reads (the user, the form's objects) before it writes
    while a worker commits metrics many times a second, so that happened. Instead, a session reads
    without a transaction (each statement sees the latest commits, like Postgres' default READ
    COMMITTED) and begins with BEGIN IMMEDIATE at its first write, or earlier where a service
    calls `lock_writes` because what it reads decides what it writes."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    # The threads of one process queue for the writer lock here, in order, rather than in SQLite's
    # busy handler, which polls with growing sleeps (1, 2, 5, ... 100 ms): under a burst of writes
    # from the web threadpool those sleeps, not the work, made the p95 (bench/review_load.py).
    # Other processes (the worker, a second web process) still meet at SQLite's lock.
    writer_queue = threading.Lock()
    _handler_slots[engine] = threading.BoundedSemaphore(SQLITE_HANDLER_SLOTS)

    def queue_for_writer(proxy) -> None:
        # A timeout rather than waiting forever: a thread that already writes on another
        # connection then meets SQLite's busy timeout and its clear error, as before.
        if not proxy.info.get(HOLDS_WRITER_QUEUE) and writer_queue.acquire(timeout=30):
            proxy.info[HOLDS_WRITER_QUEUE] = True

    def leave_writer_queue(proxy) -> None:
        if proxy is not None and proxy.info.pop(HOLDS_WRITER_QUEUE, False):
            writer_queue.release()

    @event.listens_for(engine, "before_cursor_execute")
    def _before_write(conn, cursor, statement, _parameters, _context, _executemany):
        head = statement.lstrip().upper()
        if head.startswith("BEGIN IMMEDIATE"):  # lock_writes
            queue_for_writer(conn.connection)
        elif (
            conn.in_transaction()
            and not conn.connection.dbapi_connection.in_transaction
            and head.startswith(SQLITE_WRITES)
        ):
            queue_for_writer(conn.connection)
            cursor.execute("BEGIN IMMEDIATE")

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _after_transaction(conn):
        leave_writer_queue(conn.connection)

    # A connection that goes back to the pool, or away, without a commit or rollback event (the
    # pool's reset, an invalidated connection) leaves the queue too.
    @event.listens_for(engine.pool, "reset")
    def _on_reset(_dbapi_conn, record, _state=None):
        leave_writer_queue(record)

    @event.listens_for(engine.pool, "invalidate")
    @event.listens_for(engine.pool, "close")
    def _on_close(_dbapi_conn, record, _exception=None):
        leave_writer_queue(record)


# SQLite: at most this many request handlers of one process run at once; the others wait before they
# start. There is one writer at a time and one interpreter lock, so the threadpool's 40 handlers at
# once only shared them: under 10 reviewers the review form's p95 was about 200 ms with 40 and about
# 130 ms with 2 (bench/review_load.py). A handler ends its transaction before it gives back its slot
# (app.deps.SessionRoute), so one holding a slot never waits for one that is waiting for a slot.
SQLITE_HANDLER_SLOTS = 2
_handler_slots: "weakref.WeakKeyDictionary[Engine, threading.BoundedSemaphore]" = weakref.WeakKeyDictionary()


def handler_slot(session: Session) -> AbstractContextManager[object]:
    """Held while a request handler runs (SQLite: one of SQLITE_HANDLER_SLOTS; Postgres: no limit)."""
    bind = session.get_bind()
    slots = _handler_slots.get(bind) if isinstance(bind, Engine) else None
    return slots if slots is not None else nullcontext()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def lock_writes(session: Session) -> None:
    """From here to the end of the session's transaction, no other connection writes: call it first
    in a service whose reads decide its writes (handing out a task, claiming or cancelling a run).

    SQLite: BEGIN IMMEDIATE now (rather than at the first write). Postgres: nothing; those services
    lock the rows they read (`skip_locked`, FOR UPDATE), so unrelated writers are not serialized."""
    if session.get_bind().dialect.name == "sqlite":
        connection = session.connection()
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is not None and not dbapi_connection.in_transaction:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A transaction outside a web request (worker, CLI, tests) that holds the writer lock from its
    start (`lock_writes`) and commits at the end of the block. Web requests get their session from
    `app.deps.SessionDep` instead."""
    with Session(engine, expire_on_commit=False, info={OWNED: True}) as session:
        with session.begin():
            lock_writes(session)
            yield session


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """Reads outside a web request (a streamed export, a background job's parsing): no transaction is
    held for writing, so SQLite's writer lock stays free. Writes go through write_session."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


OWNED = "transaction_owned_by_caller"
"""Session.info key: the caller (write_session) commits; `atomic` leaves the transaction alone."""


def atomic(func: Callable[Concatenate[Session, P], T]) -> Callable[Concatenate[Session, P], T]:
    """A service step whose reads decide its writes (leasing a task, storing an answer, cancelling or
    claiming a run): it holds the writer lock from its start (`lock_writes`) and commits before it
    returns, in the caller's thread, or rolls back everything on an error.

    Committing here, not when the web request ends, matters on SQLite: FastAPI validates a sync
    endpoint's response on its threadpool before the request's dependencies end, so a lock held
    until then waits for a thread while the pool's threads wait for the lock. Inside write_session
    (worker, CLI) or an open savepoint the caller's transaction is left to the caller."""

    @functools.wraps(func)
    def step(session: Session, *args: P.args, **kwargs: P.kwargs) -> T:
        if session.info.get(OWNED) or session.in_nested_transaction():
            return func(session, *args, **kwargs)
        lock_writes(session)
        try:
            result = func(session, *args, **kwargs)
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return result

    return step


AFTER_COMMIT = "after_commit"
"""Session.info key: what to do once the session's transaction has committed (`after_commit`)."""


def after_commit(session: Session, action: Callable[[], object]) -> None:
    """action() once the session's outer transaction commits (files that may go only after the rows
    naming them are gone); forgotten if it rolls back. Runs in whoever commits: the request's session,
    write_session or an atomic step."""
    session.info.setdefault(AFTER_COMMIT, []).append(action)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    for action in session.info.pop(AFTER_COMMIT, []):
        action()


@event.listens_for(Session, "after_transaction_end")
def _forget_after_rollback(session: Session, transaction) -> None:
    if transaction.parent is None:  # the outer transaction ended without a commit (after one, it's empty)
        session.info.pop(AFTER_COMMIT, None)


def changed_rows(result: Result) -> int:
    """Rows an UPDATE or DELETE changed (the result of such a statement is a CursorResult)."""
    return cast(CursorResult, result).rowcount


def skip_locked(stmt: Select, session: Session) -> Select:
    """FOR UPDATE SKIP LOCKED on Postgres; SQLite has one writer at a time already."""
    if session.get_bind().dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"
