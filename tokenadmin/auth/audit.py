"""Denied requests are logged with who made them and from where (logger `tokenadmin.auth`).

`log_denials` is a dependency of the administration API's routers and of the dashboard's:
it sees every refusal of the request — a missing or wrong key or no session (401), a
missing scope or a failed CSRF check (403), another organization's object (404) —
including those raised by the dependencies that authenticate the caller. Failed and
throttled sign-ins are logged by `auth.service`, which knows the email tried.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from fastapi import Depends, Request

log = logging.getLogger("tokenadmin.auth")

DENIED = frozenset({401, 403, 404, 429})
KEY_PREFIX_LENGTH = 10
"""As much of a key as `api_keys.prefix` stores and the dashboard shows: it names the key
without giving it away."""


def printable(text: str) -> str:
    """`text` with control characters escaped, so a value sent by a client (an email, a
    path) cannot forge a line of the log."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def caller(request: Request) -> str:
    """Who sent the request, as far as it says: the signed-in person, or the key's prefix."""
    viewer = getattr(request.state, "viewer", None)
    email = getattr(viewer, "email", None)
    if isinstance(email, str):
        return email
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secret.strip():
        return f"key {printable(secret.strip()[:KEY_PREFIX_LENGTH])}"
    return "no key or session"


def log_denied(request: Request, status: int, code: str) -> None:
    log.warning(
        "denied %s %s (%d %s) to %s from %s",
        request.method,
        printable(request.url.path),
        status,
        code,
        caller(request),
        client_ip(request),
    )


async def log_denials(request: Request) -> AsyncIterator[None]:
    try:
        yield
    except Exception as error:
        # TokenAdminError, and the dashboard's SignInRequired: both carry a status and a code.
        status = getattr(error, "status_code", None)
        if status in DENIED:
            log_denied(request, status, str(getattr(error, "code", "denied")))
        raise


AUDITED = [Depends(log_denials)]
"""The dependencies of a router whose refusals are logged: `APIRouter(dependencies=AUDITED)`."""
