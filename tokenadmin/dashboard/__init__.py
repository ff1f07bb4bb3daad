"""The web dashboard: server-rendered pages over the same services as the API."""

from fastapi import APIRouter

from tokenadmin.dashboard import auth_pages, home

router = APIRouter(include_in_schema=False)
for module in (auth_pages, home):
    router.include_router(module.router)

__all__ = ["router"]
