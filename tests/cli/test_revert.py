"""`tokenadmin batches` and `tokenadmin revert`: list saved allowance changes, preview a
revert, apply it once."""

from __future__ import annotations

from tests.cli.conftest import Tokenadmin


def test_batches_lists_a_save_and_revert_previews_then_undoes_it_once(
    tokenadmin: Tokenadmin,
) -> None:
    org = tokenadmin.org()
    ana = tokenadmin.user(org, "ana@example.com")
    tokenadmin("allowance", "set", "--org", org, "--user", ana["email"], "--max-tokens", "500K")

    listed = tokenadmin.json("batches", "--org", org, "--limit", "1")
    assert [(b["rows"], b["delta"]["inference"], b["reverted"]) for b in listed] == [
        (1, 300_000, False)
    ]
    batch = listed[0]["id"]
    assert batch in tokenadmin("batches", "--org", org).stdout

    preview = tokenadmin("revert", batch, "--org", org, "--dry-run")
    assert "500,000" in preview.stdout
    assert "200,000" in preview.stdout
    assert "nothing was changed" in preview.stdout
    token = tokenadmin.json("revert", batch, "--org", org, "--dry-run")["preview_token"]

    applied = tokenadmin.json("revert", batch, "--org", org, "--token", token)
    assert applied["applied"]
    assert applied["revertable"] == 1
    assert tokenadmin.json("user", "show", ana["id"])["max_tokens"] == 200_000

    again = tokenadmin("revert", batch, "--org", org, expect=2)
    assert again.stderr.startswith("error: already_reverted: ")
    unknown = tokenadmin("revert", "0190a000-0000-7000-8000-000000000000", "--org", org, expect=2)
    assert unknown.stderr.startswith("error: batch_not_found: ")
