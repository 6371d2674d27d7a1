"""Users, login with throttling, invites and API tokens."""

import math
import secrets
from datetime import timedelta

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.models import ApiToken, Invite, LoginFailure, Role, User
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


def create_user(session: Session, email: str, password: str | None, *, role: Role = Role.labeler, name: str = "") -> User:
    email = normalize_email(email)
    if "@" not in email or len(email) > 254:
        raise ServiceError(f"{email!r} is not an email address.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user with the email {email} already exists.")
    if password is not None and (problem := password_problem(password)):
        raise ServiceError(problem)
    user = User(email=email, name=name or email.split("@")[0], role=role,
                password_hash=hash_password(password) if password is not None else None)
    session.add(user)
    session.flush()
    return user


def authenticate(session: Session, email: str, password: str, *, ip: str, max_failures: int, window_s: int) -> User:
    """The user for these credentials, or LoginError / LoginThrottled with a clear message.

    Failures are counted per email in a sliding window, so guessing one account's password
    is throttled whether or not that account exists."""
    email = normalize_email(email)
    since = utcnow() - timedelta(seconds=window_s)
    failures = session.scalars(
        select(LoginFailure.at).where(LoginFailure.email == email, LoginFailure.at > since).order_by(LoginFailure.at)
    ).all()
    if len(failures) >= max_failures:
        wait_s = (failures[0] + timedelta(seconds=window_s) - utcnow()).total_seconds()
        minutes = max(1, math.ceil(wait_s / 60))
        raise LoginThrottled(f"Too many failed attempts for this account. Try again in {minutes} minute{'s' * (minutes > 1)}.")
    user = session.scalar(select(User).where(User.email == email))
    if user is None or not verify_password(user.password_hash, password):
        session.add(LoginFailure(email=email, ip=ip))
        session.flush()
        raise LoginError("Wrong email or password.")
    if not user.is_active:
        raise LoginError("This account is disabled. Ask an admin to enable it.")
    session.execute(delete(LoginFailure).where(LoginFailure.email == email))
    user.last_login_at = utcnow()
    return user


def create_invite(session: Session, email: str, *, role: Role, created_by: User | None, ttl_s: int) -> str:
    """Returns the raw token (shown once, in the link); only its hash is stored."""
    email = normalize_email(email)
    if "@" not in email:
        raise ServiceError(f"{email!r} is not an email address.")
    if session.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"A user with the email {email} already exists.")
    token = new_invite_token()
    session.add(Invite(token_hash=token_hash(token), email=email, role=role,
                       created_by_id=created_by.id if created_by else None,
                       expires_at=utcnow() + timedelta(seconds=ttl_s)))
    session.flush()
    return token


def open_invite(session: Session, token: str) -> Invite:
    invite = session.scalar(select(Invite).where(Invite.token_hash == token_hash(token)))
    if invite is None:
        raise NotFound("This invite link is not valid. Ask an admin for a new one.")
    if invite.used_at is not None:
        raise ServiceError("This invite link was already used. Log in, or ask an admin for a new one.", status_code=410)
    if invite.expires_at < utcnow():
        raise ServiceError("This invite link has expired. Ask an admin for a new one.", status_code=410)
    return invite


def accept_invite(session: Session, token: str, password: str, name: str = "") -> User:
    invite = open_invite(session, token)
    user = create_user(session, invite.email, password, role=invite.role, name=name)
    invite.used_at = utcnow()
    invite.user_id = user.id
    return user


def create_api_token(session: Session, user: User, name: str = "") -> str:
    token = new_api_token()
    session.add(ApiToken(user_id=user.id, name=name, token_hash=token_hash(token), prefix=token[:10]))
    session.flush()
    return token


# last_used_at is shown to the minute; refreshing it at most this often spares the API a write per call.
TOKEN_LAST_USED_RESOLUTION = timedelta(seconds=60)


# Built once: it runs on every API call, and building it cost more CPU than the query itself.
_TOKEN_USER = (select(ApiToken, User).join(User, User.id == ApiToken.user_id)
               .where(ApiToken.token_hash == bindparam("token_hash"), ApiToken.revoked_at.is_(None)))


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


def set_active(session: Session, user_id: int, active: bool) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound("No such user.")
    user.is_active = active
    return user

