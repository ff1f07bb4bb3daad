"""`tokenadmin distribute`: hand out the balance, both kinds at once, through
`distribution.service` as the API and the dashboard do: a preview, or one atomic apply."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from tokenadmin.act import Act
from tokenadmin.cli.common import Cli, Reason, emit_json, lock_org, out, say, table
from tokenadmin.distribution import service
from tokenadmin.distribution.schemas import DistributionOut, DistributionRequest
from tokenadmin.errors import AllowanceChangeRefused, InvalidRequest
from tokenadmin.tokens import ALLOWANCE_LABEL, Kind


class Method(StrEnum):
    equal = "equal"
    fixed = "fixed"
    percent = "percent"


def _method(kind: str) -> Any:
    return typer.Option(
        f"--{kind}",
        metavar="METHOD",
        help=f"Distribute {kind} tokens: equal, fixed (--{kind}-amount) or percent"
        f" (--{kind}-percent).",
    )


def _amount(kind: str, what: str, text: str) -> Any:
    return typer.Option(f"--{kind}-{what}", metavar="AMOUNT", help=text)


def _percent(kind: str) -> Any:
    return typer.Option(
        f"--{kind}-percent", metavar="N", help="With percent: 1 to 100 % of the balance."
    )


def _rule(
    cli: Cli,
    kind: Kind,
    method: Method | None,
    amount: str | None,
    percent: int | None,
    minimum: str | None,
    maximum: str | None,
) -> dict[str, Any] | None:
    if method is None:
        if any(v is not None for v in (amount, percent, minimum, maximum)):
            cli.fail(InvalidRequest(f"Give --{kind} METHOD with the other --{kind}-... options."))
        return None
    rule = {
        "method": method.value,
        "amount": cli.amount(f"--{kind}-amount", amount, positive=True),
        "percent": percent,
        "minimum": cli.amount(f"--{kind}-min", minimum) or 0,
        "maximum": cli.amount(f"--{kind}-max", maximum),
    }
    return {k: v for k, v in rule.items() if v is not None}


def distribute(
    ctx: typer.Context,
    org: Annotated[str, typer.Option("--org", metavar="ORG", help="Organization id or name.")],
    inference: Annotated[Method | None, _method("inference")] = None,
    inference_amount: Annotated[
        str | None, _amount("inference", "amount", "With fixed: added to each user, e.g. 50K.")
    ] = None,
    inference_percent: Annotated[int | None, _percent("inference")] = None,
    inference_min: Annotated[
        str | None, _amount("inference", "min", "The least added to each user.")
    ] = None,
    inference_max: Annotated[
        str | None, _amount("inference", "max", "The most added to each user.")
    ] = None,
    training: Annotated[Method | None, _method("training")] = None,
    training_amount: Annotated[
        str | None, _amount("training", "amount", "With fixed: added to each user, e.g. 10K.")
    ] = None,
    training_percent: Annotated[int | None, _percent("training")] = None,
    training_min: Annotated[
        str | None, _amount("training", "min", "The least added to each user.")
    ] = None,
    training_max: Annotated[
        str | None, _amount("training", "max", "The most added to each user.")
    ] = None,
    users: Annotated[
        list[str] | None,
        typer.Option(
            "--users",
            metavar="USERS",
            help="Only these users: emails or ids, comma-separated (repeatable).",
        ),
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all", help="Every active user (the default without --users).")
    ] = False,
    reason: Reason = None,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply/--preview",
            help="Apply, in one transaction with its preview; or only preview.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            help="With --apply: apply only if nothing changed since the preview of this token.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Distribute the balance to all active users or chosen ones: equal split, fixed amount
    or percentage per kind, with a minimum and maximum per user; preview, then apply."""
    cli = Cli.of(ctx, json_output)
    if users and all_users:
        cli.fail(InvalidRequest("Give --users or --all, not both."))
    if token is not None and not apply:
        cli.fail(InvalidRequest("--token goes with --apply."))
    rules = {
        "inference": _rule(
            cli,
            Kind.inference,
            inference,
            inference_amount,
            inference_percent,
            inference_min,
            inference_max,
        ),
        "training": _rule(
            cli,
            Kind.training,
            training,
            training_amount,
            training_percent,
            training_min,
            training_max,
        ),
    }
    named = [ref.strip() for item in users or () for ref in item.split(",") if ref.strip()]
    body = {
        **{kind: rule for kind, rule in rules.items() if rule is not None},
        "users": named or None,
        "reason": reason,
    }
    try:
        asked = DistributionRequest.model_validate(body)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        cli.fail(InvalidRequest(f"{where + ': ' if where else ''}{problem['msg']}."))

    async def work(session: AsyncSession, act: Act) -> DistributionOut:
        found = await service.preview(session, act, await lock_org(session, act, org), asked)
        if apply:
            await service.commit(session, act, found, token)
        return found.out()

    _report(cli, cli.write(work))


def _report(cli: Cli, answer: DistributionOut) -> None:
    """The answer (JSON, or tables for people); a refused distribution then exits 2 with
    every refused row."""
    (emit_json if cli.json else _print)(answer)
    if answer.accepted:
        if answer.applied and not cli.json:
            say(f"Applied to {answer.users:,} users in one step.", style="green")
        elif not cli.json:
            say(f"Preview: nothing was saved. Apply it with --apply --token {answer.preview_token}")
        return
    cli.json = False  # the answer printed above says it all
    more = len(answer.refused) - 1
    cli.fail(
        AllowanceChangeRefused(
            f"Would refuse: {answer.refused[0]['message']}"
            + (f" (and {more} more refused rows)" if more else ""),
            details={"refused": answer.refused},
        )
    )


def _print(answer: DistributionOut) -> None:
    summary = [
        (
            ALLOWANCE_LABEL[Kind(k.kind)],
            k.method,
            k.per_user,
            k.added,
            k.balance_before,
            k.balance_after,
        )
        for k in answer.kinds.values()
    ]
    columns = ("allowance", "method", "per user", "added", "balance before", "balance after")
    out().print(table(f"Distribution to {answer.users:,} users", columns, summary))
    for k in answer.kinds.values():
        rows = [(r.email, r.before, r.after, r.after - r.before) for r in k.rows]
        title = ALLOWANCE_LABEL[Kind(k.kind)]
        out().print(table(title, ("email", "before", "after", "added"), rows))
    if answer.refused:
        refused = [
            (str(r.get("email", r.get("user", ""))), str(r["code"]), str(r["message"]))
            for r in answer.refused
        ]
        out().print(table("Refused", ("user", "code", "why"), refused))
    for expiring in answer.expiring:
        say(f"Expiring soon: {expiring.message}", style="yellow")
