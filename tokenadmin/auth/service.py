"""People: sign-in with an email and a password (argon2), dashboard sessions, and the
slowing down of repeated failures."""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.audit import printable
from tokenadmin.auth.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
from tokenadmin.auth.principal import SCOPES, Principal
from tokenadmin.errors import EmailTaken, InvalidRequest, TokenAdminError, Unauthenticated
from tokenadmin.models import DashboardSession, Operator, SignInFailure, User
from tokenadmin.schemas import storable
from tokenadmin.user import repository as user_repository


async def authenticate(session: AsyncSession, email: str, password: str) -> User:
    """The active user with this email and password. The refusal never says which was wrong,
    and takes as long whether the email exists or not."""
    user = await user_repository.by_email(session, email)
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.active:
        raise Unauthenticated("The email or the password is not right.", code="invalid_credentials")
    return user


# --- dashboard sessions ---------------------------------------------------------------------

FAILURE_WINDOW = timedelta(minutes=15)
MAX_WAIT = timedelta(minutes=15)
log = logging.getLogger("tokenadmin.auth")


@dataclass(frozen=True)
class Viewer:
    """Who is signed in to the dashboard, and what the API's rules let them do."""

    kind: str  # "operator", "admin" or "member"
    name: str
    email: str
    org_id: uuid.UUID | None
    user_id: uuid.UUID | None
    csrf_token: str
    principal: Principal

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    def home(self) -> str:
        if self.is_operator:
            return "/operator"
        if self.kind == "admin":
            return f"/orgs/{self.org_id}"
        return "/me"


def _counted_under(email: str, ip: str) -> list[str]:
    """The keys failed sign-ins are counted under: the email and the address. An email with
    NUL or an unpaired surrogate can be no one's (and PostgreSQL can't store it): only the
    address counts those."""
    return [f"email:{email}", f"ip:{ip}"] if storable(email) else [f"ip:{ip}"]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _forgotten(failure: SignInFailure, now: datetime) -> bool:
    """Failures are forgotten once FAILURE_WINDOW has passed since the first of them and
    since the end of the last wait: a guesser who waits out every wait is still counted, so
    the waits keep doubling up to MAX_WAIT instead of starting again every 15 minutes."""
    last = max(failure.first_failed_at, failure.blocked_until or failure.first_failed_at)
    return last < now - FAILURE_WINDOW


async def _check_not_blocked(
    session: AsyncSession, keys: list[str], now: datetime, *, email: str, ip: str
) -> None:
    for key in keys:
        failure = await session.get(SignInFailure, key)
        if failure and failure.blocked_until and failure.blocked_until > now:
            wait = int((failure.blocked_until - now).total_seconds()) + 1
            log.warning(
                "throttled sign-in for %s from %s (%s)", printable(email), ip, key.split(":")[0]
            )
            raise TokenAdminError(
                f"Too many failed sign-ins. Try again in {wait} seconds.",
                code="sign_in_throttled",
                status_code=429,
                details={"retry_after": wait},
                headers={"Retry-After": str(wait)},
            )


async def record_failure(
    session: AsyncSession, email: str, ip: str, now: datetime, *, attempts: int
) -> None:
    """Count a failed sign-in for the email and the address; past `attempts`, each further
    try must wait 1 s, doubling up to 15 minutes."""
    log.warning("failed sign-in for %s from %s", printable(email), ip)
    for key in _counted_under(email, ip):
        failure = await session.get(SignInFailure, key)
        if failure is None or _forgotten(failure, now):
            if failure is not None:
                await session.delete(failure)
                await session.flush()
            failure = SignInFailure(key=key, failures=0, first_failed_at=now)
            session.add(failure)
        failure.failures += 1
        if failure.failures >= attempts:
            wait = timedelta(seconds=2 ** min(failure.failures - attempts, 20))
            failure.blocked_until = now + min(wait, MAX_WAIT)


async def sign_in(
    session: AsyncSession,
    email: str,
    password: str,
    *,
    ip: str,
    now: datetime,
    hours: int,
    attempts: int,
) -> tuple[str, DashboardSession] | None:
    """A new session for this email and password, or None (the failure is already counted
    by the caller with `record_failure`, in its own transaction)."""
    email = email.strip().lower()
    await _check_not_blocked(session, _counted_under(email, ip), now, email=email, ip=ip)
    operator, user = None, None
    if storable(email):  # else no one's, and PostgreSQL can't compare it: as an unknown email
        operator = await session.scalar(select(Operator).where(Operator.email == email))
        user = None if operator else await user_repository.by_email(session, email)
    stored = operator.password_hash if operator else (user.password_hash if user else None)
    if not verify_password(stored, password) or (user is not None and not user.active):
        return None
    failure = await session.get(SignInFailure, f"email:{email}")
    if failure is not None:
        await session.delete(failure)
    token = secrets.token_urlsafe(32)
    row = DashboardSession(
        token_hash=_token_hash(token),
        user_id=user.id if user else None,
        operator_id=operator.id if operator else None,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(hours=hours),
        ip=ip[:64],
    )
    session.add(row)
    log.info("signed in %s from %s", printable(email), ip)
    return token, row


async def viewer(session: AsyncSession, token: str, now: datetime) -> Viewer | None:
    row = await session.get(DashboardSession, _token_hash(token))
    if row is None or row.expires_at <= now:
        return None
    if row.operator_id is not None:
        operator = await session.get(Operator, row.operator_id)
        if operator is None:
            return None
        principal = Principal(
            actor=f"operator:{operator.email}", org_id=None, scopes=frozenset(SCOPES)
        )
        return Viewer(
            "operator", operator.name, operator.email, None, None, row.csrf_token, principal
        )
    user = await user_repository.get(session, row.user_id) if row.user_id else None
    if user is None or not user.active:
        return None
    scopes = frozenset({"admin", "read"}) if user.role == "admin" else frozenset()
    principal = Principal(
        actor=f"user:{user.email}", org_id=user.org_id, scopes=scopes, user_id=user.id
    )
    return Viewer(user.role, user.name, user.email, user.org_id, user.id, row.csrf_token, principal)


async def sign_out(session: AsyncSession, token: str) -> None:
    row = await session.get(DashboardSession, _token_hash(token))
    if row is not None:
        await session.delete(row)


async def forget_expired(session: AsyncSession, now: datetime) -> int:
    """Delete ended sessions and failure counts older than their window."""
    ended = await session.execute(
        delete(DashboardSession).where(DashboardSession.expires_at <= now)
    )
    await session.execute(
        delete(SignInFailure).where(
            SignInFailure.first_failed_at < now - FAILURE_WINDOW,
            (SignInFailure.blocked_until.is_(None))
            | (SignInFailure.blocked_until < now - FAILURE_WINDOW),
        )
    )
    return int(getattr(ended, "rowcount", 0) or 0)


async def create_operator(
    session: AsyncSession, *, email: str, name: str, password: str, now: datetime
) -> Operator:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"Passwords need at least {MIN_PASSWORD_LENGTH} characters.", code="weak_password"
        )
    email = email.strip().lower()
    if not (storable(email) and storable(name)):
        raise InvalidRequest("Names and emails may not hold NUL or unpaired surrogates.")
    if await session.scalar(select(Operator).where(Operator.email == email)) is not None:
        raise EmailTaken(f"An operator with email {email} already exists.")
    if await user_repository.by_email(session, email) is not None:
        raise EmailTaken(f"A user with email {email} already exists.")
    operator = Operator(
        id=uuid.uuid4(),
        email=email,
        name=name,
        password_hash=hash_password(password),
        created_at=now,
    )
    session.add(operator)
    return operator
