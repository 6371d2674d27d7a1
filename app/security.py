"""Passwords (argon2id), signed session cookies, CSRF tokens, API and invite tokens."""

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer
from zxcvbn import zxcvbn

SESSION_COOKIE = "il_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
API_TOKEN_PREFIX = "il_"

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 low-memory profile


def hash_password(password: str) -> str:
    return _hasher.hash(password)


_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def verify_password(password_hash: str | None, password: str) -> bool:
    """Checks against a dummy hash when there is none, so unknown accounts don't answer faster."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and bool(password_hash)
    except (VerificationError, InvalidHashError):
        return False


# zxcvbn scores how many guesses a password takes against its lists of common passwords, names,
# words and keyboard patterns (NIST SP 800-63B asks for such a check rather than composition
# rules). Score 3 means about 10^8 to 10^10 guesses; it reads at most 72 characters.
MIN_PASSWORD_SCORE = 3
_ZXCVBN_MAX_CHARS = 72


def password_problem(password: str, user_inputs: Sequence[str] = ()) -> str | None:
    """A clear message when a new password is too weak, else None. `user_inputs` (email, name)
    count as easy to guess."""
    if len(password) < 10:
        return "Use at least 10 characters."
    if len(password) > 256:
        return "Use at most 256 characters."
    result = zxcvbn(password[:_ZXCVBN_MAX_CHARS], user_inputs=[u for u in user_inputs if u])
    if result["score"] < MIN_PASSWORD_SCORE:
        hint = result["feedback"]["warning"] or "It is too easy to guess."
        return f"{hint.rstrip('.')}. Try a few uncommon words together, or a longer password."
    return None


@dataclass(frozen=True)
class SessionData:
    sid: str
    """Random id of this browser session; renewed at login so an old cookie can't ride along."""
    user_id: int | None = None


class SessionSigner:
    def __init__(self, secret_key: str, max_age_s: int):
        self._serializer = URLSafeTimedSerializer(secret_key, salt="instructloop.session")
        self._flash = URLSafeSerializer(secret_key, salt="instructloop.flash")
        self._csrf_key = hashlib.sha256(("csrf:" + secret_key).encode()).digest()
        self.max_age_s = max_age_s

    def dumps(self, data: SessionData) -> str:
        return self._serializer.dumps({"sid": data.sid, "uid": data.user_id})

    def loads(self, cookie: str | None) -> SessionData | None:
        if not cookie:
            return None
        try:
            raw = self._serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("sid"), str):
            return None
        uid = raw.get("uid")
        return SessionData(sid=raw["sid"], user_id=uid if isinstance(uid, int) else None)

    def dumps_flash(self, messages: list) -> str:
        return self._flash.dumps(messages)

    def loads_flash(self, cookie: str | None) -> list:
        """The flash messages of a cookie this server signed; [] for anything else (a forged
        cookie can't put words on our pages)."""
        if not cookie:
            return []
        try:
            value = self._flash.loads(cookie)
        except BadSignature:
            return []
        return [m for m in value if isinstance(m, list) and len(m) == 2] if isinstance(value, list) else []

    def csrf_token(self, sid: str) -> str:
        return hmac.new(self._csrf_key, sid.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, sid: str, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.csrf_token(sid), token)


def new_session(user_id: int | None = None) -> SessionData:
    return SessionData(sid=secrets.token_urlsafe(24), user_id=user_id)


def token_hash(token: str) -> str:
    """API and invite tokens are random with 256 bits, so a plain SHA-256 is the right store."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_invite_token() -> str:
    return secrets.token_urlsafe(32)
