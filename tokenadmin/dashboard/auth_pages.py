"""Sign in and sign out."""

from __future__ import annotations

import secrets
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from tokenadmin.auth import service as auth_service
from tokenadmin.auth.audit import client_ip
from tokenadmin.dashboard.web import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    SignInRequired,
    WriterDep,
    check_origin,
    current_viewer,
    render,
    same_token,
    secure_cookies,
)
from tokenadmin.deps import clock_of, db_of, settings_of
from tokenadmin.errors import Forbidden, TokenAdminError

router = APIRouter(include_in_schema=False)


def _safe_next(next_path: str | None) -> str | None:
    """A path of this site to go to after signing in, or None. Browsers read a backslash as
    a slash and drop tabs and newlines, so "/\\evil.example" would lead to another site."""
    if not next_path or not next_path.startswith("/") or next_path.startswith("//"):
        return None
    if "\\" in next_path or not next_path.isprintable():
        return None
    return next_path


@router.get("/")
async def root(request: Request) -> Response:
    try:
        viewer = await current_viewer(request)
    except SignInRequired:
        return RedirectResponse("/login", status_code=303)
    return RedirectResponse(viewer.home(), status_code=303)


def _login_form(
    request: Request,
    *,
    error: str | None = None,
    email: str = "",
    status_code: int = 200,
    next_path: str | None = None,
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        status_code=status_code,
        error=error,
        email=email,
        login_csrf=token,
        next_path=_safe_next(next_path) or "",
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request),
        max_age=3600,
    )
    return response


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _login_form(request, next_path=next)


@router.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=200)],
    csrf_token: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    check_origin(request)
    expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not expected or not same_token(csrf_token, expected):
        raise Forbidden(
            "The sign-in form expired; reload the page and try again.", code="csrf_failed"
        )
    db, settings = db_of(request), settings_of(request)
    now, ip = clock_of(request).now(), client_ip(request)
    try:
        signed_in = await db.write(
            partial(
                auth_service.sign_in,
                email=email,
                password=password,
                ip=ip,
                now=now,
                hours=settings.session_hours,
                attempts=settings.sign_in_attempts,
            )
        )
    except TokenAdminError as error:
        page = _login_form(
            request,
            error=error.message,
            email=email,
            status_code=error.status_code,
            next_path=next,
        )
        page.headers.update(error.headers)  # a wait's Retry-After
        return page
    if signed_in is None:
        await db.write(
            partial(
                auth_service.record_failure,
                email=email.strip().lower(),
                ip=ip,
                now=now,
                attempts=settings.sign_in_attempts,
            )
        )
        return _login_form(
            request,
            error="The email or the password is not right.",
            email=email,
            status_code=401,
            next_path=next,
        )
    token, _session_row = signed_in
    viewer = await db.read(lambda session: auth_service.viewer(session, token, now))
    assert viewer is not None
    response = RedirectResponse(_safe_next(next) or viewer.home(), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request),
        max_age=settings.session_hours * 3600,
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, viewer: WriterDep) -> Response:
    token = request.cookies.get(SESSION_COOKIE, "")
    await db_of(request).write(partial(auth_service.sign_out, token=token))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
