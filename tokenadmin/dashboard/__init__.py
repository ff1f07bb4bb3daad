"""The web dashboard: server-rendered pages over the same services as the API."""

from fastapi import APIRouter

from tokenadmin.auth.audit import AUDITED
from tokenadmin.dashboard import (
    auth_pages,
    distribute,
    home,
    jobs_page,
    journal_pages,
    member,
    models_page,
    notifications,
    operator,
    personal_keys,
    policy,
    requests,
    settings_pages,
    transfer,
    user_page,
    users,
    webhooks,
)

router = APIRouter(include_in_schema=False, dependencies=AUDITED)
for module in (
    auth_pages,
    home,
    users,
    distribute,
    policy,
    transfer,
    journal_pages,
    settings_pages,
    operator,
    jobs_page,
    member,
    requests,
    personal_keys,
    models_page,
    user_page,
    webhooks,
    notifications,
):
    router.include_router(module.router)

__all__ = ["router"]
