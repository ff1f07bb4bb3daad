"""What every dashboard page shares: templates, the signed-in viewer, CSRF, formatting."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlparse

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from tokenadmin.auth import service as auth_service
from tokenadmin.auth.service import Viewer
from tokenadmin.dashboard.words import action_words, kind_words
from tokenadmin.database import Database
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.errors import Forbidden, NotFound, TokenAdminError
from tokenadmin.organization import service as organization_service
from tokenadmin.tokens import ALLOWANCE_LABEL, DEFAULT_MINIMUM

SESSION_COOKIE = "ta_session"
LOGIN_CSRF_COOKIE = "ta_login_csrf"
CSRF_HEADER = "x-csrf-token"
HERE = Path(__file__).parent

templates = Jinja2Templates(directory=HERE / "templates")


def number(value: Any) -> str:
    """Thousands separators: 1234567 → 1,234,567."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def percent(part: int, whole: int) -> int:
    return 0 if whole <= 0 else max(0, min(100, round(100 * part / whole)))


templates.env.filters["number"] = number
templates.env.filters["action_words"] = action_words
templates.env.filters["kind_words"] = kind_words
templates.env.globals["percent"] = percent
templates.env.globals["one_day"] = timedelta(days=1)
templates.env.globals["allowance_label"] = {
    kind.value: name for kind, name in ALLOWANCE_LABEL.items()
}
templates.env.globals["default_minimum"] = {kind.value: n for kind, n in DEFAULT_MINIMUM.items()}


class SignInRequired(Exception):
    """Not signed in (or the session ended): the app answers with a redirect to /login."""

    status_code = 401
    code = "unauthenticated"

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in required")
        self.next_path = next_path


def sign_in_url(next_path: str) -> str:
    return f"/login?next={quote(next_path)}"


def wants_html(request: Request) -> bool:
    path = request.url.path
    if path.startswith(("/v1/", "/healthz", "/openapi", "/docs")):
        return False
    # Browsers ask for text/html; API clients and the dashboard's own scripts don't.
    return "text/html" in request.headers.get("accept", "")


def secure_cookies(request: Request) -> bool:
    return request.url.scheme == "https"


async def current_viewer(request: Request) -> Viewer:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        db = db_of(request)
        now = clock_of(request).now()
        found = await db.read(lambda session: auth_service.viewer(session, token, now))
        if found is not None:
            request.state.viewer = found  # for the log of a refusal (auth.audit)
            return found
    raise SignInRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


def check_origin(request: Request) -> None:
    """A write whose browser says it comes from another site (or from none: "null") is
    refused; browsers send Origin with every cross-site POST."""
    origin = request.headers.get("origin")
    if origin is not None and urlparse(origin).netloc != request.url.netloc:
        raise Forbidden("This request came from another site.", code="csrf_failed")


def same_token(sent: str, expected: str) -> bool:
    """Whether a token sent is the one expected, in constant time. As bytes: compare_digest
    refuses text with non-ASCII characters (a TypeError, so a 500 for a forged token)."""
    return secrets.compare_digest(
        sent.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


async def check_csrf(request: Request, viewer: Viewer) -> None:
    """Every write carries the session's CSRF token (a form field or the X-CSRF-Token
    header) and, when the browser says where it comes from, comes from this site."""
    check_origin(request)
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
    if not sent or not same_token(sent, viewer.csrf_token):
        raise Forbidden(
            "The form has expired or did not come from this dashboard; reload the page and"
            " try again.",
            code="csrf_failed",
        )


async def csrf_viewer(request: Request, viewer: ViewerDep) -> Viewer:
    await check_csrf(request, viewer)
    return viewer


WriterDep = Annotated[Viewer, Depends(csrf_viewer)]
"""The signed-in viewer of a write, whose CSRF token has been checked."""


def require_org(viewer: Viewer, org_id: uuid.UUID, scope: str = "admin") -> None:
    """Admins of this organization (and operators) only; others see nothing there."""
    if viewer.kind == "member":
        raise NotFound("Page not found.")
    viewer.principal.require(org_id, scope)


async def up_to_date(request: Request, org_id: uuid.UUID) -> tuple[Database, datetime]:
    """The organization brought up to date (expired purchases, a new period) before a page
    reads it; the database and the time now, for the reading."""
    db, now = db_of(request), clock_of(request).now()
    await organization_service.up_to_date(db, org_id, now)
    return db, now


def render(
    request: Request,
    template: str,
    viewer: Viewer | None = None,
    *,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    settings = settings_of(request)
    return templates.TemplateResponse(
        request,
        template,
        {"viewer": viewer, "settings": settings, **context},
        status_code=status_code,
    )


ERROR_TITLES = {403: "Not allowed", 404: "Not found", 413: "Too large", 429: "Slow down"}
ERROR_HINTS = {
    403: "If you should be able to do this, ask an administrator of your organization.",
    404: "The link may be out of date, or the page is not one your account can see.",
    429: "Wait a moment, then try again.",
}


HOME_WORDS = {"operator": "All organizations", "admin": "Users", "member": "My tokens"}
"""The name of each kind of viewer's home page, as their nav says it."""


def error_page(request: Request, error: TokenAdminError) -> HTMLResponse:
    """A refusal as a page: a title and the message in words; the machine code only in a
    data attribute (data-code), never as text to read. A person signed in keeps the top bar's
    way home and Sign out."""
    viewer = getattr(request.state, "viewer", None)
    return render(
        request,
        "error.html",
        viewer if isinstance(viewer, Viewer) else None,
        status_code=error.status_code,
        home_words=HOME_WORDS,
        title=ERROR_TITLES.get(error.status_code, "Something is not right"),
        hint=ERROR_HINTS.get(error.status_code),
        error=error,
    )
