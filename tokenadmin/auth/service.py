"""Sign-in of people with an email and a password (argon2)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.auth.passwords import verify_password
from tokenadmin.errors import Unauthenticated
from tokenadmin.models import User
from tokenadmin.user import repository as user_repository


async def authenticate(session: AsyncSession, email: str, password: str) -> User:
    """The active user with this email and password. The refusal never says which was wrong,
    and takes as long whether the email exists or not."""
    user = await user_repository.by_email(session, email)
    valid = verify_password(user.password_hash if user else None, password)
    if user is None or not valid or not user.active:
        raise Unauthenticated("The email or the password is not right.", code="invalid_credentials")
    return user
