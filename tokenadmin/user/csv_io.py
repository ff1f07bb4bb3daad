"""The user table as CSV, for the API, the CLI and the dashboard.

Export streams an organization's users with their allowances and this period's usage.
Import creates new users and changes existing users' Max Tokens and Max Train Tokens (and
names and roles) in ONE atomic change: every row is checked first, every refused row is
reported with its CSV line, and nothing is written unless every row is accepted. The
allowance rules themselves are applied by `allowance.service.change`, as for any other
change.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from pydantic import EmailStr, TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.allowance import service as allowance_service
from tokenadmin.allowance.schemas import KindAfterOut
from tokenadmin.amounts import parse_amount
from tokenadmin.errors import EmailTaken, InvalidRequest
from tokenadmin.models import Organization, User
from tokenadmin.organization.service import current_period, lock_for_change
from tokenadmin.schemas import storable
from tokenadmin.tokens import ALLOWANCE_FIELD, Kind
from tokenadmin.user import repository as user_repository
from tokenadmin.user import service as user_service
from tokenadmin.user.csv_schemas import FieldChange, ImportResult, NewUserRow, RowProblem

EXPORT_COLUMNS = (
    "email",
    "name",
    "role",
    "status",
    "max_tokens",
    "max_train_tokens",
    "inference_used",
    "training_used",
    "last_activity_at",
)
IMPORT_COLUMNS = ("email", "name", "role", "max_tokens", "max_train_tokens")
CHECKED_COLUMNS = ("status", "version")
"""Accepted on import but never changed by it: a row whose status differs from the user's
is refused (an import does not deactivate anyone), and `version`, when given, is the
version the editor saw (refused with version_conflict when a field the row changes was
changed since; changes of other fields merge)."""
READ_ONLY_COLUMNS = ("inference_used", "training_used", "last_activity_at")
"""Export columns an import ignores, so an exported file can be edited and imported back."""
ROLES = ("admin", "member")
MAX_IMPORT_ROWS = 100_000
IMPORT_REASON = "CSV import"
_FETCH_CHUNK = 5_000
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_emails = TypeAdapter(EmailStr)


# --- export --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Keep spreadsheets from running a name such as "=HYPERLINK(...)" as a formula."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _uncell(text: str) -> str:
    """Undo `_cell`, so an exported file imports back unchanged."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def export_filename(org: Organization, now: datetime) -> str:
    """ "users-2026-03-15.csv": the day of the export in the organization's time zone."""
    return f"users-{now.astimezone(ZoneInfo(org.time_zone)):%Y-%m-%d}.csv"


async def count_users(session: AsyncSession, org: Organization) -> int:
    return await user_repository.count_in_org(session, org.id)


async def export_chunks(
    session: AsyncSession,
    org: Organization,
    now: datetime,
    *,
    chunk_size: int = _FETCH_CHUNK,
    progress: Callable[[int], None] | None = None,
) -> AsyncIterator[str]:
    """The organization's users as CSV text, header first, in chunks of `chunk_size` rows.

    One streamed query (a consistent snapshot of the table) over plain columns: no ORM
    object per row, so 100,000 users take about a second.
    """
    start = current_period(org, now)
    statement = user_repository.table_rows(org.id, start).execution_options(yield_per=chunk_size)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    yield buffer.getvalue()
    result = await session.stream(statement)
    async for rows in result.partitions(chunk_size):
        buffer.seek(0)
        buffer.truncate()
        for email, name, role, status, max_tokens, max_train, used_i, used_t, last in rows:
            writer.writerow(
                (
                    _cell(email),
                    _cell(name),
                    role,
                    status,
                    max_tokens,
                    max_train,
                    used_i,
                    used_t,
                    last.isoformat() if last is not None else "",
                )
            )
        yield buffer.getvalue()
        if progress is not None:
            progress(len(rows))


# --- import: reading -----------------------------------------------------------------------


@dataclass(frozen=True)
class CsvRow:
    """One data row of an uploaded file: its line in the file and its cells by column."""

    line: int
    values: dict[str, str]


def _column_name(header: str) -> str:
    """ "Max Tokens" and "max_tokens" name the same column."""
    return "_".join(header.strip().lower().replace("-", " ").split())


def read_csv(
    text: str,
    *,
    columns: Sequence[str] = IMPORT_COLUMNS + CHECKED_COLUMNS + READ_ONLY_COLUMNS,
    required: Sequence[str] = ("email",),
    aliases: Mapping[str, str] | None = None,
) -> list[CsvRow]:
    """Parse an uploaded file (comma, semicolon or tab separated; a UTF-8 BOM is fine).

    The header names the columns ("Max Tokens" reads as max_tokens; `aliases` maps other
    names to these). Problems of the file as a whole (no header, an unknown or missing
    column) raise InvalidRequest; problems of single rows are left to the caller (see
    `import_users`), which reports them all together.
    """
    text = text.removeprefix("\ufeff")
    first_line = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first_line:
        delimiter = ";" if ";" in first_line else "\t" if "\t" in first_line else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise _invalid_csv("The file is empty; the first line must name the columns.")
        names = [_column_name(cell) for cell in header]
        names = [(aliases or {}).get(name, name) for name in names]
        _check_header(names, columns, required)
        rows: list[CsvRow] = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) == MAX_IMPORT_ROWS:
                raise _invalid_csv(
                    f"The file has more than {MAX_IMPORT_ROWS:,} rows; split it into several."
                )
            values = dict(zip(names, cells, strict=False))
            if len(cells) > len(names):
                values[""] = delimiter.join(cells[len(names) :])
            rows.append(CsvRow(reader.line_num, values))
    except csv.Error as error:
        raise _invalid_csv(f"Line {reader.line_num}: {error}.") from error
    return rows


def read_upload(text: str) -> list[CsvRow]:
    """An uploaded file's rows (the dashboard's, the API's, the CLI's), or invalid_csv."""
    if not text.strip():
        raise _invalid_csv("The file is empty; it needs a header and a row per user.")
    if not storable(text):
        line = next(n for n, row in enumerate(text.split("\n"), 1) if not storable(row))
        raise _invalid_csv(
            f"Line {line:,} holds a NUL character or an unpaired surrogate, which no name or"
            " email may hold; remove it and upload the file again."
        )
    return read_csv(text)


def _invalid_csv(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_csv")


def _check_header(names: list[str], columns: Sequence[str], required: Sequence[str]) -> None:
    unknown = [name or "(blank)" for name in names if name not in columns]
    if unknown:
        raise InvalidRequest(
            f"Unknown column {', '.join(unknown)}; the columns are {', '.join(columns)}.",
            code="invalid_csv",
            details={"unknown": unknown, "columns": list(columns)},
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _invalid_csv(f"Column {', '.join(repeated)} appears more than once.")
    missing = [name for name in required if name not in names]
    if missing:
        raise _invalid_csv(f"The file needs a column {' and '.join(missing)}.")


# --- import: checking and applying ---------------------------------------------------------


@dataclass
class _Row:
    line: int
    email: str
    name: str | None = None
    role: str | None = None
    status: str | None = None
    version: int | None = None
    amounts: dict[Kind, int] = field(default_factory=dict)


Problem = Callable[[str, str], None]
"""Notes a problem of a row: its code and message."""


def read_amounts(values: Mapping[str, str], problem: Problem) -> dict[Kind, int]:
    """The allowances a row's cells give, per kind (an empty cell gives none)."""
    amounts: dict[Kind, int] = {}
    for kind, column in ALLOWANCE_FIELD.items():
        text = values.get(column, "")
        if text:
            try:
                amounts[kind] = parse_amount(text)
            except ValueError as error:
                problem("invalid_amount", f"{column}: {error}")
    return amounts


def read_version(text: str, problem: Problem) -> int | None:
    """A version cell: empty is none; anything but a whole number is a problem."""
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    problem("invalid_version", f"The version '{text}' is not a whole number.")
    return None


def _parse_row(row: CsvRow, problems: list[RowProblem]) -> _Row | None:
    """The row's values, or None (with its problems added) when a cell is not valid."""
    values = {k: _uncell(v.strip()) for k, v in row.values.items()}
    known_problems = len(problems)
    raw_email = values.get("email", "")

    def problem(code: str, message: str) -> None:
        problems.append(_problem(row.line, raw_email, code, message))

    if "" in values:
        problem("extra_cells", f"The row has more cells than the header: '{values['']}'.")
    if not raw_email:
        problem("email_required", "The email is empty.")
    # Stored emails are lower case. Only a new user's email is validated (see _check_new):
    # an existing user's was, and validating 100,000 of them would take seconds.
    parsed = _Row(row.line, raw_email.lower(), amounts=read_amounts(values, problem))
    name = values.get("name", "")
    if len(name) > 200:
        problem("invalid_name", f"The name has {len(name)} characters; at most 200 are allowed.")
    parsed.name = name or None
    role = values.get("role", "").lower()
    if role and role not in ROLES:
        problem("invalid_role", f"Unknown role '{values['role']}'; use admin or member.")
    parsed.role = role or None
    status = values.get("status", "").lower()
    if status and status not in ("active", "deactivated"):
        problem("invalid_status", f"Unknown status '{values['status']}'.")
    parsed.status = status or None
    parsed.version = read_version(values.get("version", ""), problem)
    return parsed if len(problems) == known_problems else None


def _reason(error: ValidationError) -> str:
    message = str(error.errors()[0].get("msg", "invalid"))
    return message.removeprefix("value is not a valid email address: ").rstrip(".")


async def _users_by_email(
    session: AsyncSession, org: Organization, emails: Sequence[str]
) -> tuple[dict[str, User], set[str]]:
    """This organization's users with these emails, and the emails other organizations use."""
    ours = await user_repository.find_in_org(session, org.id, emails=emails)
    by_email = {u.email: u for u in ours}
    missing = [e for e in emails if e not in by_email]
    return by_email, await user_repository.emails_in_use(session, missing)


async def import_users(
    session: AsyncSession,
    act: Act,
    org_id: uuid.UUID,
    rows: Sequence[CsvRow],
    *,
    dry_run: bool,
) -> ImportResult:
    """Check every row, then (unless `dry_run` or any row is refused) apply them all.

    Rows name users by email. A new email creates a member (or the row's role) with the
    row's allowances, or the organization's minimums where they are blank; an existing
    user gets the row's non-blank allowances, name and role. Locks the organization for
    the change; when the result is not `applied`, nothing but the organization's own
    catching up (expired purchases, a new period) was written.
    """
    org = await lock_for_change(session, act, org_id)
    result = ImportResult(dry_run=dry_run, applied=False, rows=len(rows))
    problems: list[RowProblem] = []
    parsed: list[_Row] = []
    first_line: dict[str, int] = {}
    for row in rows:
        entry = _parse_row(row, problems)
        if entry is None:
            continue
        if entry.email in first_line:
            problems.append(
                _problem(
                    entry.line,
                    entry.email,
                    "duplicate_user",
                    f"{entry.email} is also on line {first_line[entry.email]};"
                    " put all of a user's columns in one row.",
                )
            )
            continue
        first_line[entry.email] = entry.line
        parsed.append(entry)

    existing, elsewhere = await _users_by_email(session, org, [r.email for r in parsed])
    to_change: list[_Row] = []
    changed: list[allowance_service.Request] = []
    new_requests: list[allowance_service.Request] = []
    new_rows: list[_Row] = []
    profiles: list[tuple[User, _Row]] = []
    for entry in parsed:
        user = existing.get(entry.email)
        if user is None:
            if not _check_new(entry, entry.email in elsewhere, problems):
                continue
            spec = user_service.NewUser(
                email=entry.email,
                name=entry.name or "",
                role=entry.role or "member",
                max_tokens=entry.amounts.get(Kind.inference),
                max_train_tokens=entry.amounts.get(Kind.training),
            )
            new_requests.append(user_service.new_user_request(org, act, spec))
            new_rows.append(entry)
            continue
        if entry.status is not None and entry.status != user.status:
            problems.append(
                _problem(
                    entry.line,
                    entry.email,
                    "status_not_importable",
                    f"{entry.email} is {user.status}; an import does not change a user's"
                    " status. Deactivate or reactivate them first, or keep the column as is.",
                )
            )
            continue
        # Only what differs is a change: an exported row imports back as no change at all,
        # even for a deactivated user (whom `plan` would refuse any allowance change).
        entry.amounts = {k: v for k, v in entry.amounts.items() if v != user.allowance(k)}
        profile = {
            field: value
            for field, value in (("name", entry.name), ("role", entry.role))
            if value and value != getattr(user, field)
        }
        if profile:
            # A stale row's name and role merge like its amounts: refused only when that
            # field was changed since the export (`plan` checks the amounts' fields).
            stale = await allowance_service.check_version(
                session, act, org, user, entry.version, profile
            )
            if stale is not None:
                problems.append(_problem(entry.line, entry.email, stale.code, stale.message))
                continue
        if entry.amounts:
            to_change.append(entry)  # `plan` checks the version of these rows
            changed.append(allowance_service.Request(user, entry.amounts, entry.version))
        if profile:
            profiles.append((user, entry))

    requests = changed + new_requests
    lines = [r.line for r in to_change] + [r.line for r in new_rows]
    change = await allowance_service.change(
        session,
        act,
        org,
        requests,
        dry_run=dry_run or bool(problems),
        reason=IMPORT_REASON,
        refuse=False,
    )
    for refusal in change.plan.refused:
        email = refusal.user.email if refusal.user is not None else str(refusal.ref)
        problems.append(_problem(lines[refusal.index], email, refusal.code, refusal.message))
    result.refused = sorted(problems, key=lambda p: (p.line, p.code))
    result.balance_after = {
        kind.value: KindAfterOut(capacity=a.capacity, allocated=a.allocated, balance=a.balance)
        for kind, a in change.plan.after.items()
    }
    line_of = {r.user.email: line for r, line in zip(requests, lines, strict=True)}
    for entry, request in zip(new_rows, new_requests, strict=True):
        result.new_users.append(
            NewUserRow(
                line=entry.line,
                email=entry.email,
                name=entry.name or "",
                role=entry.role or "member",
                max_tokens=request.allowances[Kind.inference],
                max_train_tokens=request.allowances[Kind.training],
            )
        )
    for planned in change.plan.changes:
        if not planned.new:
            result.changes.append(
                FieldChange(
                    line=line_of[planned.user.email],
                    email=planned.user.email,
                    field=ALLOWANCE_FIELD[planned.kind],
                    before=planned.before,
                    after=planned.after,
                )
            )
    for user, entry in profiles:
        for column in ("name", "role"):
            after = getattr(entry, column)
            if after and after != getattr(user, column):
                result.changes.append(
                    FieldChange(
                        line=entry.line,
                        email=user.email,
                        field=column,
                        before=getattr(user, column),
                        after=after,
                    )
                )
    result.changes.sort(key=lambda c: (c.line, c.field))
    refused_lines = {p.line for p in problems}
    changed_emails = {c.email for c in result.changes}
    result.unchanged = sum(
        1
        for entry in parsed
        if entry.email in existing
        and entry.line not in refused_lines
        and entry.email not in changed_emails
    )
    if not change.applied:
        return result

    for user, entry in profiles:
        await user_service.update(
            session, act, org, user, name=entry.name, role=entry.role, reason=IMPORT_REASON
        )
    try:
        await session.flush()
    except IntegrityError as error:
        # Another organization took one of the new emails since we looked.
        raise EmailTaken(
            "One of the new users' emails was taken meanwhile; nothing was saved. Try again."
        ) from error
    result.applied = True
    return result


def _check_new(entry: _Row, taken: bool, problems: list[RowProblem]) -> bool:
    """Whether a row can create a user; adds its problems when it can't."""
    known_problems = len(problems)

    def problem(code: str, message: str) -> None:
        problems.append(_problem(entry.line, entry.email, code, message))

    if taken:
        problem("email_taken", f"{entry.email} belongs to a user of another organization.")
        return False
    try:
        entry.email = _emails.validate_python(entry.email).lower()
    except ValidationError as error:
        problem("invalid_email", f"'{entry.email}' is not an email address: {_reason(error)}.")
    if not entry.name:
        problem("name_required", f"{entry.email} is a new user; the row needs a name.")
    if entry.status == "deactivated":
        problem("status_not_importable", "New users are created active.")
    if entry.version is not None:
        problem("user_not_found", f"{entry.email} has a version but no such user exists.")
    return len(problems) == known_problems


def refusal(result: ImportResult) -> InvalidRequest:
    """The error of an import with refused rows (each in `details.refused`, with its line)."""
    count = len(result.refused)
    return InvalidRequest(
        f"Nothing was saved: {count:,} {'row' if count == 1 else 'rows'} refused.",
        code="import_refused",
        details={"refused": [p.model_dump() for p in result.refused]},
    )


def _problem(line: int, email: str, code: str, message: str) -> RowProblem:
    return RowProblem(line=line, email=email, code=code, message=message)
