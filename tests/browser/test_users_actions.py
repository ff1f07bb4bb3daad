"""The admin home's writes: the allowance batch endpoint (over HTTP) and the user actions
(adding, deactivating, reactivating, roles) through the page in a real browser."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import PASSWORD, Site, sign_in


class Admin:
    """A signed-in dashboard session driven over HTTP, with its CSRF token."""

    def __init__(self, site: Site, email: str) -> None:
        self.site = site
        self.http = httpx.Client(base_url=site.url, follow_redirects=False, timeout=10)
        self.http.get("/login")
        login_csrf = self.http.cookies["ta_login_csrf"]
        answer = self.http.post(
            "/login", data={"email": email, "password": PASSWORD, "csrf_token": login_csrf}
        )
        assert answer.status_code == 303, answer.text
        home = self.http.get(f"/orgs/{site.org_id}")
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', home.text)
        assert found is not None
        self.csrf = found.group(1)

    def save(self, changes: list[dict[str, object]], **headers: str) -> httpx.Response:
        return self.http.post(
            f"/orgs/{self.site.org_id}/allowances",
            json={"changes": changes},
            headers={"Accept": "application/json", **headers},
        )

    def act(self, action: str, *emails: str, csrf: bool = True) -> httpx.Response:
        form: dict[str, object] = {
            "action": action,
            "user": [self.site.users[email] for email in emails],
        }
        if csrf:
            form["csrf_token"] = self.csrf
        return self.http.post(
            f"/orgs/{self.site.org_id}/users/actions", data=form, headers={"Accept": "text/html"}
        )


@pytest.fixture
def ada(site: Site) -> Iterator[Admin]:
    admin = Admin(site, site.admin_email)
    yield admin
    admin.http.close()


def user_row(site: Site, email: str) -> tuple[int, int, str, str, int]:
    path = site.database_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        row = connection.execute(
            "SELECT max_tokens, max_train_tokens, status, role, version FROM users WHERE email = ?",
            (email,),
        ).fetchone()
    return int(row[0]), int(row[1]), str(row[2]), str(row[3]), int(row[4])


def test_writes_without_the_csrf_token_are_refused_and_change_nothing(
    site: Site, ada: Admin
) -> None:
    change = [{"user": site.users["ben@acme.example"], "max_tokens": 300_000}]
    assert ada.save(change).status_code == 403
    assert ada.save(change, **{"X-CSRF-Token": "forged"}).status_code == 403
    refused = ada.save(change, **{"X-CSRF-Token": ada.csrf, "Origin": "http://evil.example"})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"
    assert user_row(site, "ben@acme.example")[:2] == (200_000, 10_000)

    # Forms too: a user action and adding a user.
    answer = ada.act("deactivate", "ben@acme.example", csrf=False)
    assert answer.status_code == 403
    assert user_row(site, "ben@acme.example")[2] == "active"
    added = ada.http.post(
        f"/orgs/{site.org_id}/users",
        data={"name": "Eve", "email": "eve@acme.example"},
        headers={"Accept": "text/html"},
    )
    assert added.status_code == 403


def test_a_batch_is_applied_whole_or_not_at_all(site: Site, ada: Admin) -> None:
    ben, cy = site.users["ben@acme.example"], site.users["cy@acme.example"]
    csrf = {"X-CSRF-Token": ada.csrf}
    refused = ada.save(
        [
            {"user": ben, "max_tokens": 300_000, "max_train_tokens": 20_000},
            {"user": cy, "max_tokens": 150_000, "expected_version": 1},
        ],
        **csrf,
    )
    assert refused.status_code == 422
    rows = refused.json()["error"]["details"]["refused"]
    assert [(r["index"], r["code"]) for r in rows] == [(1, "below_minimum")]
    assert user_row(site, "ben@acme.example")[:2] == (200_000, 10_000)

    saved = ada.save(
        [
            {"user": ben, "max_tokens": 300_000, "max_train_tokens": 20_000},
            {"user": cy, "max_train_tokens": 0, "expected_version": 1},
        ],
        **csrf,
        **{"Idempotency-Key": "dash-test-1"},
    )
    assert saved.status_code == 200, saved.text
    body = saved.json()
    assert body["applied"] is True
    assert body["balance_after"]["inference"]["balance"] == 2_100_000
    assert {u["user_id"]: u["version"] for u in body["users"]} == {ben: 2, cy: 2}
    assert user_row(site, "ben@acme.example")[:2] == (300_000, 20_000)
    assert user_row(site, "cy@acme.example")[:2] == (200_000, 0)

    again = ada.save(
        [
            {"user": ben, "max_tokens": 300_000, "max_train_tokens": 20_000},
            {"user": cy, "max_train_tokens": 0, "expected_version": 1},
        ],
        **csrf,
        **{"Idempotency-Key": "dash-test-1"},
    )
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert user_row(site, "cy@acme.example")[4] == 2


def test_actions_on_several_users_happen_together_or_not_at_all(site: Site, ada: Admin) -> None:
    # Not a token rule: an administrator cannot lock themselves out by a click, and the
    # other user selected with them is left as they were.
    answer = ada.act("make_member", "ada@acme.example", "ben@acme.example")
    assert answer.status_code == 422
    assert "yourself" in answer.text
    assert user_row(site, "ada@acme.example")[3] == "admin"

    done = ada.act("deactivate", "ben@acme.example", "cy@acme.example")
    assert done.status_code == 303
    assert done.headers["location"].endswith("?notice=deactivated&n=2")
    assert user_row(site, "ben@acme.example")[2] == "deactivated"
    # Use up the balance, then reactivating both cannot be covered: neither comes back.
    taken = ada.save(
        [{"user": site.users["di@acme.example"], "max_tokens": 2_600_000}],
        **{"X-CSRF-Token": ada.csrf},
    )
    assert taken.status_code == 200, taken.text
    refused = ada.act("reactivate", "ben@acme.example", "cy@acme.example")
    assert refused.status_code == 422
    assert "over its" in refused.text or "capacity" in refused.text
    assert user_row(site, "ben@acme.example")[2] == "deactivated"
    assert user_row(site, "cy@acme.example")[2] == "deactivated"

    promoted = ada.act("make_admin", "ben@acme.example", "di@acme.example")
    assert promoted.status_code == 303
    assert user_row(site, "di@acme.example")[3] == "admin"
    assert user_row(site, "ben@acme.example")[3] == "admin"


def test_adding_a_user_and_deactivating_users_from_the_page(page: Page, site: Site) -> None:
    sign_in(page, site, site.admin_email)
    page.get_by_text("Add user").first.click()
    page.get_by_label("Name").fill("Eve Example")
    page.get_by_label("Email").fill("eve@acme.example")
    expect(page.get_by_label("Max Tokens", exact=True)).to_have_value("200,000")
    page.get_by_label("Max Tokens", exact=True).fill("250K")
    page.get_by_role("button", name="Add user").click()
    expect(page.get_by_role("status")).to_have_text("User added.")
    expect(page.locator("#users tbody")).to_contain_text("eve@acme.example")
    assert user_row(site, "eve@acme.example")[:3] == (250_000, 0, "active")

    page.goto(f"{site.url}/orgs/{site.org_id}")
    page.get_by_label("Select Ben Member").check()
    page.get_by_label("Select Cy Member").check()
    expect(page.locator("#actions [data-role=selected]")).to_have_text("2 selected")
    page.locator("#actions").get_by_role("button", name="Deactivate").click()
    expect(page.get_by_role("status")).to_contain_text("Deactivated 2 users")
    expect(page.locator("#balance [data-kind=inference] [data-role=balance]")).to_have_text(
        "2,350,000"
    )
    assert user_row(site, "ben@acme.example")[2] == "deactivated"
    assert user_row(site, "cy@acme.example")[2] == "deactivated"

    # Row actions are in a menu beside the row.
    page.get_by_label("Actions for ben@acme.example").click()
    page.get_by_role("button", name="Reactivate ben@acme.example").click()
    expect(page.get_by_role("status")).to_contain_text("Reactivated 1 user ")
    assert user_row(site, "ben@acme.example")[2] == "active"
