from __future__ import annotations

import csv
from pathlib import Path

from tests.cli.conftest import Tokenadmin
from tokenadmin.user.csv_io import EXPORT_COLUMNS

HEADER = "email,name,role,max_tokens,max_train_tokens\n"


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames or ()) == EXPORT_COLUMNS
        return {row["email"]: row for row in reader}


def _setup(tokenadmin: Tokenadmin) -> str:
    org = tokenadmin.org()
    tokenadmin.user(org, "ana@example.com", "--max-train-tokens", "50K")
    tokenadmin.user(org, "ben@example.com", "--role", "admin", "--max-tokens", "1.5M")
    tokenadmin("user", "create", "--org", org, "--email", "eve@example.com", "--name", "=1+2")
    tokenadmin("usage", "record", "--user", "ana@example.com", "--tokens", "1234")
    tokenadmin("user", "deactivate", "eve@example.com")
    return org


def test_export_then_import_round_trips_and_applies_edits(
    tokenadmin: Tokenadmin, tmp_path: Path
) -> None:
    org = _setup(tokenadmin)
    exported = tmp_path / "users.csv"
    tokenadmin("users", "export", "--org", org, "--output", str(exported))
    rows = _rows(exported)
    assert rows["ana@example.com"]["max_tokens"] == "200000"
    assert rows["ana@example.com"]["max_train_tokens"] == "50000"
    assert rows["ana@example.com"]["inference_used"] == "1234"
    assert rows["ana@example.com"]["last_activity_at"].startswith("20")
    assert rows["ben@example.com"]["role"] == "admin"
    assert rows["eve@example.com"]["status"] == "deactivated"
    # A name that a spreadsheet would run as a formula is exported quoted.
    assert rows["eve@example.com"]["name"] == "'=1+2"

    # Unchanged, the file imports back as no change at all (the deactivated user too).
    unchanged = tokenadmin.json("users", "import", "--org", org, str(exported))
    assert unchanged["applied"]
    assert unchanged["new_users"] == []
    assert unchanged["changes"] == []
    assert unchanged["unchanged"] == 3

    # Edited: one allowance, one name, one new user, in one step.
    text = exported.read_text()
    text = text.replace(
        "ana@example.com,Ana,member,active,200000", "ana@example.com,Ana,member,active,300K"
    )
    text = text.replace("ben@example.com,Ben,", "ben@example.com,Benjamin,")
    text += "cleo@example.com,Cleo,admin,,,,,,\n"
    exported.write_text(text)
    result = tokenadmin.json("users", "import", "--org", org, str(exported))
    assert result["applied"]
    assert [n["email"] for n in result["new_users"]] == ["cleo@example.com"]
    assert {(c["email"], c["field"], c["before"], c["after"]) for c in result["changes"]} == {
        ("ana@example.com", "max_tokens", 200_000, 300_000),
        ("ben@example.com", "name", "Ben", "Benjamin"),
    }

    again = tmp_path / "again.csv"
    tokenadmin("users", "export", "--org", org, "-o", str(again))
    rows = _rows(again)
    assert rows["ana@example.com"]["max_tokens"] == "300000"
    assert rows["ben@example.com"]["name"] == "Benjamin"
    assert rows["cleo@example.com"]["max_tokens"] == "200000"
    assert rows["cleo@example.com"]["role"] == "admin"
    assert rows["eve@example.com"]["name"] == "'=1+2"


def test_export_to_stdout_is_the_csv_alone(tokenadmin: Tokenadmin) -> None:
    org = _setup(tokenadmin)
    stdout = tokenadmin("users", "export", "--org", org).stdout
    lines = stdout.splitlines()
    assert lines[0] == ",".join(EXPORT_COLUMNS)
    assert len(lines) == 4


def test_one_bad_row_refuses_the_whole_import_and_names_its_line(
    tokenadmin: Tokenadmin, tmp_path: Path
) -> None:
    org = _setup(tokenadmin)
    upload = tmp_path / "import.csv"
    upload.write_text(
        HEADER
        + "new.one@example.com,New One,member,250K,\n"
        + "ana@example.com,,,300000,\n"
        + "bad@example.com,Bad,member,1.5,\n"
    )
    result = tokenadmin("users", "import", "--org", org, str(upload), expect=2)
    assert result.stderr.startswith("error: import_refused: Nothing was saved: 1 row refused.")
    assert "line 4: invalid_amount: " in result.stderr
    assert "'1.5' is 1.5 tokens" in result.stderr

    answer = tokenadmin.json("users", "import", "--org", org, str(upload), expect=2)
    assert not answer["applied"]
    assert [(r["line"], r["code"]) for r in answer["refused"]] == [(4, "invalid_amount")]

    users = tokenadmin.json("user", "list", "--org", org)
    assert users["total"] == 3
    ana = tokenadmin.json("user", "show", "ana@example.com")
    assert ana["max_tokens"] == 200_000


def test_every_refused_row_is_reported_together(tokenadmin: Tokenadmin, tmp_path: Path) -> None:
    org = _setup(tokenadmin)
    tokenadmin.user(tokenadmin.org("Other"), "taken@example.com")
    upload = tmp_path / "import.csv"
    upload.write_text(
        HEADER
        + "ok@example.com,Okay,member,,\n"  # 2: fine (line 9 alone causes the shortfall)
        + "ana@example.com,,boss,,\n"  # 3: unknown role
        + "not-an-email,X,member,,\n"  # 4: bad email
        + "ok@example.com,Okay,member,,\n"  # 5: duplicate of line 2
        + "nameless@example.com,,member,,\n"  # 6: a new user needs a name
        + "ben@example.com,,,100K,\n"  # 7: below the minimum
        + "eve@example.com,,,300K,\n"  # 8: deactivated users get no allowance
        + "big@example.com,Big,member,20M,\n"  # 9: more than the balance
        + "ana@example.com,,,,10x\n"  # 10: ana again, and a bad amount
        + "taken@example.com,Taken,member,,\n"  # 11: a user of another organization
    )
    answer = tokenadmin.json("users", "import", "--org", org, str(upload), expect=2)
    refused = {(r["line"], r["code"]) for r in answer["refused"]}
    assert refused == {
        # Over the balance, only the rows that cause the shortfall are refused (plan's rule).
        (3, "invalid_role"),
        (4, "invalid_email"),
        (5, "duplicate_user"),
        (6, "name_required"),
        (7, "below_minimum"),
        (8, "user_deactivated"),
        (9, "exceeds_balance"),
        (10, "invalid_amount"),
        (11, "email_taken"),
    }
    assert answer["balance_after"]["inference"]["capacity"] == 10_000_000
    assert tokenadmin.json("user", "list", "--org", org)["total"] == 3


def test_import_dry_run_previews_and_saves_nothing(tokenadmin: Tokenadmin, tmp_path: Path) -> None:
    org = _setup(tokenadmin)
    upload = tmp_path / "import.csv"
    upload.write_text(HEADER + "ana@example.com,,,2M,\nnew@example.com,New,,,\n")
    result = tokenadmin("users", "import", "--org", org, str(upload), "--dry-run")
    assert "Dry run: nothing was saved." in result.stdout
    assert "2,000,000" in result.stdout
    preview = tokenadmin.json("users", "import", "--org", org, str(upload), "--dry-run")
    assert preview["accepted"]
    assert not preview["applied"]
    assert (
        preview["balance_after"]["inference"]["allocated"]
        == 2_000_000 + 1_500_000 + 200_000  # ana, ben, the new user; eve is deactivated
    )
    assert tokenadmin.json("user", "show", "ana@example.com")["max_tokens"] == 200_000
    assert tokenadmin.json("user", "list", "--org", org)["total"] == 3


def test_import_reads_semicolons_a_bom_and_spreadsheet_headers(
    tokenadmin: Tokenadmin, tmp_path: Path
) -> None:
    org = tokenadmin.org()
    upload = tmp_path / "excel.csv"
    upload.write_bytes(
        "\ufeffEmail;Name;Role;Max Tokens;Max Train Tokens\r\n"
        "jörg@example.com;Jörg Müller;member;1,5M;\r\n".replace("1,5M", '"1,500,000"').encode()
    )
    result = tokenadmin.json("users", "import", "--org", org, str(upload))
    assert result["new_users"][0]["max_tokens"] == 1_500_000
    assert tokenadmin.json("user", "show", "jörg@example.com")["name"] == "Jörg Müller"


def test_a_file_with_an_unknown_column_is_refused(tokenadmin: Tokenadmin, tmp_path: Path) -> None:
    org = tokenadmin.org()
    upload = tmp_path / "typo.csv"
    upload.write_text("email,max_token\nana@example.com,300K\n")
    result = tokenadmin("users", "import", "--org", org, str(upload), expect=2)
    assert result.stderr.startswith("error: invalid_csv: Unknown column max_token;")


def test_a_thousand_new_users_import_in_one_step(tokenadmin: Tokenadmin, tmp_path: Path) -> None:
    org = tokenadmin.org(inference="500M")
    upload = tmp_path / "many.csv"
    upload.write_text(
        HEADER + "".join(f"user{i}@example.com,User {i},member,,\n" for i in range(1000))
    )
    result = tokenadmin.json("users", "import", "--org", org, str(upload))
    assert len(result["new_users"]) == 1000
    exported = tmp_path / "out.csv"
    summary = tokenadmin.json("users", "export", "--org", org, "-o", str(exported))
    assert summary["users"] == 1000
    assert len(exported.read_text().splitlines()) == 1001
