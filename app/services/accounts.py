"""Users, login with throttling, invites and API tokens."""

import math
import secrets
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from app.db import changed_rows, utcnow
from app.models import ApiToken, Invite, LoginFailure, PasswordReset, Project, ProjectMember, Role, User, UserSession
from app.security import (
    hash_password,
    new_api_token,
    new_invite_token,
    password_problem,
    token_hash,
    verify_password,
)
from app.services import Conflict, NotFound, ServiceError


class LoginError(ServiceError):
    status_code = 401


class LoginThrottled(ServiceError):
    status_code = 429


def normalize_email(email: str) -> str:
    return email.strip().lower()


def create_user(
    session: Session,
    email: str,
    password: str | None,
    *,
    role: Role = Role.labeler,
    name: str = "",
    simulated: bool = False,
) -> User:
    email = normalize_email(email)
    if "@" not in email or len(email) > 254:
        raise ServiceError(f"{email!r} is not an email address.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user with the email {email} already exists.")
    if password is not None and (problem := password_problem(password, (email, name))):
        raise ServiceError(problem)
    user = User(
        email=email,
        name=name or email.split("@")[0],
        role=role,
        password_hash=hash_password(password) if password is not None else None,
        simulated=simulated,
    )
    session.add(user)
    session.flush()
    return user


def authenticate(
    session: Session, email: str, password: str, *, ip: str, max_failures: int, max_failures_per_ip: int, window_s: int
) -> User:
    """The user for these credentials, or LoginError / LoginThrottled with a clear message.

    Failures are limited per (email, IP) and per IP in a sliding window: a stranger guessing
    from elsewhere slows only themselves and never locks the owner out. Each attempt is stored as
    a failure before its password is checked and committed at once (see _admit_attempt), so
    parallel guesses count each other; a success then removes it. The check runs for unknown
    emails too (against a dummy hash), so both take the same time."""
    email = normalize_email(email)
    _admit_attempt(
        session, email, ip, max_failures=max_failures, max_failures_per_ip=max_failures_per_ip, window_s=window_s
    )
    user = session.scalar(select(User).where(User.email == email))
    # A disabled account is refused exactly like a wrong password (same message, the hash still
    # checked, the attempt still counted): anything else would confirm that the password was right.
    if not verify_password(user.password_hash if user else None, password) or user is None or not user.is_active:
        raise LoginError("Wrong email or password.")
    session.execute(delete(LoginFailure).where(LoginFailure.email == email, LoginFailure.ip == ip))
    user.last_login_at = utcnow()
    return user


def _admit_attempt(
    session: Session, email: str, ip: str, *, max_failures: int, max_failures_per_ip: int, window_s: int
) -> None:
    """Records this attempt as a failure and commits, or raises LoginThrottled (recording nothing).

    Counting and recording happen under one lock per IP, so no two attempts from one IP can both
    see room for one more: Postgres takes an advisory transaction lock; on SQLite the insert comes
    first and takes the database's writer lock (transactions begin at their first write)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext("login:" + ip))))
    session.add(LoginFailure(email=email, ip=ip))
    session.flush()
    since = utcnow() - timedelta(seconds=window_s)
    recent = select(func.count(), func.min(LoginFailure.at)).where(LoginFailure.ip == ip, LoginFailure.at > since)
    pair_count, pair_oldest = session.execute(recent.where(LoginFailure.email == email)).one()
    ip_count, ip_oldest = session.execute(recent).one()
    # Each count includes this attempt, hence ">".
    if pair_count > max_failures or ip_count > max_failures_per_ip:
        oldest = pair_oldest if pair_count > max_failures else ip_oldest
        session.rollback()
        wait_s = (oldest + timedelta(seconds=window_s) - utcnow()).total_seconds()
        minutes = max(1, math.ceil(wait_s / 60))
        raise LoginThrottled(
            f"Too many failed attempts from your network. Try again in {minutes} minute{'s' * (minutes > 1)}."
        )
    session.commit()


def clear_login_failures(session: Session, user_id: int) -> int:
    """An admin's unlock: forgets every recent failure for this user's email. Returns how many."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return changed_rows(session.execute(delete(LoginFailure).where(LoginFailure.email == user.email)))


def create_invite(
    session: Session,
    email: str,
    *,
    role: Role,
    created_by: User | None,
    ttl_s: int,
    project_ids: list[int] | None = None,
) -> str:
    """Returns the raw token (shown once, in the link); only its hash is stored. `project_ids`: the
    projects the invitee becomes a member of on accepting."""
    project_ids = sorted(set(project_ids or []))
    missing = sorted(set(project_ids) - set(session.scalars(select(Project.id).where(Project.id.in_(project_ids)))))
    if missing:
        raise NotFound(f"No project with the id(s) {missing}.")
    email = normalize_email(email)
    if "@" not in email:
        raise ServiceError(f"{email!r} is not an email address.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user with the email {email} already exists.")
    # One open invite per email: a new link replaces the earlier one, which stops working.
    session.execute(
        update(Invite)
        .where(Invite.email == email, Invite.used_at.is_(None), Invite.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    token = new_invite_token()
    session.add(
        Invite(
            token_hash=token_hash(token),
            email=email,
            role=role,
            created_by_id=created_by.id if created_by else None,
            expires_at=utcnow() + timedelta(seconds=ttl_s),
            project_ids=project_ids,
        )
    )
    session.flush()
    return token


OneTimeLink = TypeVar("OneTimeLink", Invite, PasswordReset)


def _open_link(session: Session, model: type[OneTimeLink], token: str, what: str) -> OneTimeLink:
    """The row of a one-time link (invite or password reset), or why it can't be used."""
    row = session.scalar(select(model).where(model.token_hash == token_hash(token)))
    if row is None:
        raise NotFound(f"This {what} link is not valid. Ask an admin for a new one.")
    if row.used_at is not None:
        raise ServiceError(
            f"This {what} link was already used. Log in, or ask an admin for a new one.", status_code=410
        )
    if getattr(row, "revoked_at", None) is not None:
        raise ServiceError(f"This {what} link was revoked. Ask an admin for a new one.", status_code=410)
    if row.expires_at < utcnow():
        raise ServiceError(f"This {what} link has expired. Ask an admin for a new one.", status_code=410)
    return row


def open_invite(session: Session, token: str) -> Invite:
    """The invite behind a link, refused at once (before anyone types a password) when it is used,
    revoked, expired, or its email already has an account."""
    invite = _open_link(session, Invite, token, "invite")
    if session.scalar(select(User.id).where(User.email == invite.email)) is not None:
        raise Conflict(f"{invite.email} already has an account: log in instead.")
    return invite


def get_invite(session: Session, invite_id: int) -> Invite:
    invite = session.get(Invite, invite_id)
    if invite is None:
        raise NotFound(f"There is no invite {invite_id}.")
    return invite


def revoke_invite(session: Session, invite_id: int) -> Invite:
    invite = get_invite(session, invite_id)
    if invite.used_at is not None:
        raise Conflict(f"The invite for {invite.email} was already used; disable the user instead.")
    invite.revoked_at = invite.revoked_at or utcnow()
    session.flush()
    return invite


def accept_invite(session: Session, token: str, password: str, name: str = "") -> User:
    invite = open_invite(session, token)
    if password_problem(password, (invite.email, name)) is None:
        # Marked used by one conditional UPDATE: of two parallel accepts the second waits for the
        # first's row lock (SQLite: the writer lock), then finds it used.
        taken = changed_rows(
            session.execute(
                update(Invite).where(Invite.id == invite.id, Invite.used_at.is_(None)).values(used_at=utcnow())
            )
        )
        if not taken:
            raise ServiceError(
                "This invite link was already used. Log in, or ask an admin for a new one.", status_code=410
            )
    user = create_user(session, invite.email, password, role=invite.role, name=name)
    user.last_login_at = utcnow()  # accepting signs them in
    session.execute(update(Invite).where(Invite.id == invite.id).values(user_id=user.id))
    # Only the projects the invite named: one made after the invite never is, whatever its id (a
    # deleted project's id came back on SQLite before 0010, and an id outlives its row in backups).
    named = select(Project.id).where(Project.id.in_(invite.project_ids or []), Project.created_at <= invite.created_at)
    session.add_all(ProjectMember(project_id=pid, user_id=user.id) for pid in sorted(set(session.scalars(named))))
    session.flush()
    return user


def create_api_token(session: Session, user: User, name: str = "") -> str:
    token = new_api_token()
    session.add(ApiToken(user_id=user.id, name=name, token_hash=token_hash(token), prefix=token[:10]))
    session.flush()
    return token


# last_used_at is shown to the minute; refreshing it at most this often spares the API a write per call.
TOKEN_LAST_USED_RESOLUTION = timedelta(seconds=60)


# Built once: it runs on every API call, and building it cost more CPU than the query itself.
_TOKEN_USER = (
    select(ApiToken, User)
    .join(User, User.id == ApiToken.user_id)
    .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None))
)


def user_for_api_token(session: Session, token: str) -> User | None:
    found = session.execute(_TOKEN_USER, {"token_hash": token_hash(token)}).first()
    if found is None or not found.User.is_active:
        return None
    row, now = found.ApiToken, utcnow()
    if row.last_used_at is None or now - row.last_used_at > TOKEN_LAST_USED_RESOLUTION:
        row.last_used_at = now
    return found.User


def revoke_api_token(session: Session, user: User, token_id: int) -> None:
    row = session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound("No such token.")
    row.revoked_at = utcnow()


def ensure_first_admin(session: Session, email: str, password: str) -> tuple[User, str | None] | None:
    """Creates the first admin when there are no users. Returns (user, generated password or None)."""
    if session.scalar(select(func.count(User.id))):
        return None
    generated = None
    if not password:
        password = generated = secrets.token_urlsafe(12)
    return create_user(session, email, password, role=Role.admin, name="admin"), generated


def get_user(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    return user


def list_users(session: Session, *, simulated: bool = False) -> list[User]:
    """Everyone real (or, with simulated, the demo's simulated labelers), admins first, by email:
    the People page and the run form's labeler list."""
    return list(session.scalars(select(User).where(User.simulated == simulated).order_by(User.role, User.email)))


def open_invites(session: Session, *, limit: int = 20) -> list[Invite]:
    """Invites not used, revoked or expired, newest first."""
    return list(
        session.scalars(
            select(Invite)
            .where(Invite.used_at.is_(None), Invite.revoked_at.is_(None), Invite.expires_at > utcnow())
            .order_by(Invite.id.desc())
            .limit(limit)
        )
    )


def api_tokens(session: Session, user_id: int) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.id.desc())))


def set_active(session: Session, user_id: int, active: bool, *, by: User | None = None) -> User:
    """Disabling ends the user's sessions and revokes their API tokens: enabling them again later
    does not bring an old cookie or token back. No admin disables their own account (nobody could
    enable it again if they were the last admin)."""
    if by is not None and by.id == user_id and not active:
        raise ServiceError("You can't disable your own account.")
    user = get_user(session, user_id)
    user.is_active = active
    if not active:
        end_access(session, user.id)
    return user


# -- browser sessions --------------------------------------------------------------------------

# last_seen_at is shown to the minute; refreshing it at most this often spares a write per page.
SESSION_LAST_SEEN_RESOLUTION = timedelta(minutes=5)

_SESSION_USER = (
    select(UserSession, User)
    .join(User, User.id == UserSession.user_id)
    .where(UserSession.sid_hash == bindparam("sid_hash"), UserSession.ended_at.is_(None))
)


def start_session(session: Session, user: User, sid: str, *, ip: str = "", user_agent: str = "") -> None:
    session.add(UserSession(user_id=user.id, sid_hash=token_hash(sid), ip=ip[:64], user_agent=user_agent[:300]))
    session.flush()


def user_for_session(session: Session, user_id: int, sid: str) -> User | None:
    """The signed-in user of a browser session that has not ended, else None."""
    found = session.execute(_SESSION_USER, {"sid_hash": token_hash(sid)}).first()
    if found is None or found.User.id != user_id or not found.User.is_active:
        return None
    row, now = found.UserSession, utcnow()
    if now - row.last_seen_at > SESSION_LAST_SEEN_RESOLUTION:
        row.last_seen_at = now
    return found.User


def end_session(session: Session, sid: str) -> None:
    session.execute(
        update(UserSession)
        .where(UserSession.sid_hash == token_hash(sid), UserSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )


def end_sessions(session: Session, user_id: int, *, keep_sid: str | None = None) -> int:
    """Ends every open session of the user (but the one with keep_sid). Returns how many."""
    stmt = update(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
    if keep_sid is not None:
        stmt = stmt.where(UserSession.sid_hash != token_hash(keep_sid))
    return changed_rows(session.execute(stmt.values(ended_at=utcnow())))


def open_sessions(session: Session, user_id: int) -> list[UserSession]:
    return list(
        session.scalars(
            select(UserSession)
            .where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
            .order_by(UserSession.last_seen_at.desc())
        )
    )


def end_access(session: Session, user_id: int) -> tuple[int, int]:
    """An admin's "sign out everywhere": ends every session and revokes every API token.
    Returns (sessions ended, tokens revoked)."""
    return end_sessions(session, user_id), revoke_api_tokens(session, user_id)


def revoke_api_tokens(session: Session, user_id: int) -> int:
    """Revokes every open API token of the user. Returns how many."""
    return changed_rows(
        session.execute(
            update(ApiToken)
            .where(ApiToken.user_id == user_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
    )


# -- passwords ---------------------------------------------------------------------------------


def change_password(session: Session, user: User, current: str, new: str, *, keep_sid: str) -> int:
    """Checks the current password, sets the new one, ends the user's other sessions and revokes
    their API tokens (a token made by whoever knew the old password must not outlive it).
    Returns how many tokens were revoked."""
    if not verify_password(user.password_hash, current):
        raise ServiceError("The current password is wrong.")
    _set_password(session, user, new)
    end_sessions(session, user.id, keep_sid=keep_sid)
    return revoke_api_tokens(session, user.id)


def _set_password(session: Session, user: User, password: str) -> None:
    if problem := password_problem(password, (user.email, user.name)):
        raise ServiceError(problem)
    user.password_hash = hash_password(password)
    session.flush()


def create_password_reset(session: Session, user_id: int, *, created_by: User | None, ttl_s: int) -> str:
    """Returns the raw token for the link (shown once); earlier open links of the user stop working."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    now = utcnow()
    session.execute(
        update(PasswordReset)
        .where(PasswordReset.user_id == user.id, PasswordReset.used_at.is_(None))
        .values(used_at=now)
    )
    token = new_invite_token()
    session.add(
        PasswordReset(
            user_id=user.id,
            token_hash=token_hash(token),
            expires_at=now + timedelta(seconds=ttl_s),
            created_by_id=created_by.id if created_by else None,
        )
    )
    session.flush()
    return token


def open_password_reset(session: Session, token: str) -> PasswordReset:
    return _open_link(session, PasswordReset, token, "reset")


def use_password_reset(session: Session, token: str, password: str) -> User:
    """Sets the new password, ends every session of the user and revokes their API tokens (whoever
    had them)."""
    reset = open_password_reset(session, token)
    user = reset.user
    _set_password(session, user, password)
    if not changed_rows(
        session.execute(
            update(PasswordReset)
            .where(PasswordReset.id == reset.id, PasswordReset.used_at.is_(None))
            .values(used_at=utcnow())
        )
    ):
        raise ServiceError("This reset link was already used. Log in, or ask an admin for a new one.", status_code=410)
    end_access(session, user.id)
    return user
