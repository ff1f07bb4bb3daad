"""Prometheus metrics, served at GET /metrics to a scraper holding TOKENADMIN_METRICS_TOKEN.

What a process counts as it works (requests, metering outcomes, database connections) lives
in prometheus-client metrics. With several server processes (`tokenadmin serve --workers`,
which sets PROMETHEUS_MULTIPROC_DIR before the workers start) each process writes its values
to files in that directory and a scrape of any process reads them all, so it reports the sum
over every process; in one process they are plain in-memory metrics. What the database
knows (reservations open, background jobs' runs and lag, webhooks and emails pending) is
read from it at each scrape, so every process reports the same.
"""

from __future__ import annotations

import hmac
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import event, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from starlette.types import Scope

from tokenadmin.config import Settings
from tokenadmin.database import Database
from tokenadmin.errors import NotFound, TokenAdminError, Unauthenticated
from tokenadmin.models import EmailNotification, JobLease, Reservation, WebhookDelivery

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess mode: set (to an empty directory) before the server's
processes start, and every process's metrics are summed at each scrape."""

REGISTRY = CollectorRegistry(auto_describe=True)
"""tokenadmin's own metrics (not the client library's default process and GC metrics, which
multiprocess mode can't sum)."""

REQUEST_SECONDS = Histogram(
    "tokenadmin_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, route template and status class.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
USAGE_REQUESTS = Counter(
    "tokenadmin_usage_requests",
    "Metering operations committed, by organization, kind, action and outcome (accepted, or"
    " refused with its error code).",
    ["org_id", "kind", "action", "outcome", "code"],
    registry=REGISTRY,
)
USAGE_TOKENS = Counter(
    "tokenadmin_usage_tokens",
    "Tokens of the metering operations committed (asked for, when refused), by organization,"
    " kind, action and outcome.",
    ["org_id", "kind", "action", "outcome", "code"],
    registry=REGISTRY,
)
POOL_CHECKED_OUT = Gauge(
    "tokenadmin_db_pool_checked_out",
    "Database connections in use, summed over the server's processes.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_SIZE = Gauge(
    "tokenadmin_db_pool_size",
    "Database connections each pool keeps open, summed over the server's processes.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
POOL_LIMIT = Gauge(
    "tokenadmin_db_pool_limit",
    "Most database connections the pools may open (size and overflow), summed over the"
    " server's processes.",
    ["pool"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "tokenadmin_webhook_deliveries",
    "Webhook POSTs by result: delivered (answered 2xx), failed_attempt (to be tried again),"
    " gave_up (the last attempt of a day of retries failed).",
    ["result"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERY_SECONDS = Histogram(
    "tokenadmin_webhook_delivery_seconds",
    "Time from a webhook POST to its answer (or its failure).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
EMAILS = Counter(
    "tokenadmin_emails",
    "Notification emails by result: sent, failed_attempt (to be tried again), gave_up.",
    ["result"],
    registry=REGISTRY,
)

_PENDING = "tokenadmin.metrics.metered"
"""Where a metering transaction keeps its outcomes (Session.info) until it commits."""


def _status_class(status: int) -> str:
    return f"{status // 100}xx"


def route_of(scope: Scope) -> str:
    """The template of the route that answered ("/v1/users/{user_id}"), never the raw path,
    so the label has as many values as the app has routes; "unmatched" for none."""
    # Inside a mounted app (/openai, /user, /server, /static) the route's path is the rest.
    app_root = scope.get("app_root_path", "")
    root = scope.get("root_path", "")
    mounted = root[len(app_root) :] if root.startswith(app_root) else ""
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str):
        return f"{mounted}/{{path}}" if mounted else "unmatched"
    if mounted and not path.startswith(mounted):
        return mounted + path
    return path


_REQUEST_SERIES: dict[tuple[str, str, int], Histogram] = {}
"""The request histogram's series by method, route and status class, as `labels` gives
them: looked up here for each request, as `labels` costs more than the observation."""


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    key = (scope["method"], route_of(scope), status // 100)
    series = _REQUEST_SERIES.get(key)
    if series is None:
        series = REQUEST_SECONDS.labels(key[0], key[1], _status_class(status))
        _REQUEST_SERIES[key] = series
    series.observe(seconds)


# --- metering ------------------------------------------------------------------------------


def metered(
    session: AsyncSession,
    action: str,
    org_id: uuid.UUID | None,
    kind: str | None,
    tokens: int | None,
    refusal: TokenAdminError | None,
) -> None:
    """Note a metering operation's outcome; it is counted when its transaction commits
    (a transaction retried or rolled back counts nothing)."""
    outcome = ("accepted", "") if refusal is None else ("refused", refusal.code)
    labels = (str(org_id) if org_id else "unknown", kind or "unknown", action, *outcome)
    session.info.setdefault(_PENDING, []).append((labels, tokens or 0))


@event.listens_for(Session, "after_commit")
def _count_committed(session: Session) -> None:
    pending: list[tuple[tuple[str, ...], int]] | None = session.info.pop(_PENDING, None)
    if not pending:
        return
    # Summed per series first: a batch's thousand operations are a few series, and looking
    # a series up by its labels costs more than counting.
    totals: dict[tuple[str, ...], list[int]] = {}
    for labels, tokens in pending:
        total = totals.get(labels)
        if total is None:
            totals[labels] = [1, tokens]
        else:
            total[0] += 1
            total[1] += tokens
    for labels, (operations, tokens) in totals.items():
        USAGE_REQUESTS.labels(*labels).inc(operations)
        if tokens:
            USAGE_TOKENS.labels(*labels).inc(tokens)


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_PENDING, None)


# --- database pools ------------------------------------------------------------------------


def watch_pools(db: Database) -> None:
    """Count this process's database connections in use, as its pools hand them out."""
    engines: dict[str, AsyncEngine] = {"write": db.engine}
    if db.read_engine is not db.engine:
        engines["read"] = db.read_engine
    for name, engine in engines.items():
        pool: Any = engine.sync_engine.pool
        if hasattr(pool, "size"):
            POOL_SIZE.labels(name).set(pool.size())
            POOL_LIMIT.labels(name).set(pool.size() + max(pool._max_overflow, 0))
        _count_connections(pool, POOL_CHECKED_OUT.labels(name))


def _count_connections(pool: Any, checked_out: Gauge) -> None:
    event.listen(pool, "checkout", lambda *_: checked_out.inc())
    event.listen(pool, "checkin", lambda *_: checked_out.dec())


def process_ended() -> None:
    """This process stops: its gauges leave the sums of multiprocess mode."""
    if os.environ.get(MULTIPROCESS_DIR):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# --- the scrape ----------------------------------------------------------------------------


class _Read(Collector):
    """Metrics read from the database at this scrape."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics


async def _from_database(db: Database, now: datetime) -> list[Metric]:
    count = GaugeMetricFamily(
        "tokenadmin_reservations_open",
        "Reservations open now, by organization and kind.",
        labels=["org_id", "kind"],
    )
    held = GaugeMetricFamily(
        "tokenadmin_reservations_open_tokens",
        "Tokens held by the reservations open now, by organization and kind.",
        labels=["org_id", "kind"],
    )

    async def read(session: AsyncSession) -> None:
        rows = await session.execute(
            select(
                Reservation.org_id,
                Reservation.kind,
                func.count(),
                func.coalesce(func.sum(Reservation.amount), 0),
            )
            .where(Reservation.status == "open")
            .group_by(Reservation.org_id, Reservation.kind)
        )
        for org_id, kind, number, tokens in rows:
            count.add_metric([str(org_id), kind], number)
            held.add_metric([str(org_id), kind], int(tokens))
        for job in (await session.scalars(select(JobLease).order_by(JobLease.name))).all():
            runs.add_metric([job.name], job.runs)
            lag.add_metric([job.name], max((now - job.next_due_at).total_seconds(), 0.0))
            if job.last_ok is not None:
                last_ok.add_metric([job.name], 1 if job.last_ok else 0)
        pending.add_metric(
            ["webhook"],
            await session.scalar(select(func.count()).where(WebhookDelivery.state == "pending"))
            or 0,
        )
        pending.add_metric(
            ["email"],
            await session.scalar(select(func.count()).where(EmailNotification.state == "pending"))
            or 0,
        )

    runs = CounterMetricFamily(
        "tokenadmin_job_runs",
        "Runs of each background job started, by every server process (job_leases).",
        labels=["job"],
    )
    lag = GaugeMetricFamily(
        "tokenadmin_job_lag_seconds",
        "How long each background job is overdue: now minus its next due time, 0 when not due.",
        labels=["job"],
    )
    last_ok = GaugeMetricFamily(
        "tokenadmin_job_last_ok",
        "Whether each background job's last run ended without an error (1) or not (0).",
        labels=["job"],
    )
    pending = GaugeMetricFamily(
        "tokenadmin_notifications_pending",
        "Webhook deliveries and emails not yet delivered nor given up, by channel.",
        labels=["channel"],
    )
    await db.read(read)
    return [count, held, runs, lag, last_ok, pending]


def _registry() -> CollectorRegistry:
    if not os.environ.get(MULTIPROCESS_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


async def scrape(db: Database, now: datetime) -> bytes:
    """Every metric, in Prometheus's text format."""
    read = CollectorRegistry()
    read.register(_Read(await _from_database(db, now)))
    return generate_latest(_registry()) + generate_latest(read)


def _authorize(request: Request, settings: Settings) -> None:
    token = settings.metrics_token
    if token is None:
        raise NotFound(
            "Metrics are off: set TOKENADMIN_METRICS_TOKEN to serve them.", code="not_found"
        )
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        sent.strip().encode(), token.get_secret_value().encode()
    ):
        refusal = Unauthenticated(
            "Send the metrics token (TOKENADMIN_METRICS_TOKEN) as `Authorization: Bearer ...`."
        )
        refusal.headers = {"WWW-Authenticate": "Bearer"}
        raise refusal


def add_route(app: FastAPI, settings: Settings, db: Database) -> None:
    """GET /metrics, for a Prometheus scraper: off (404) unless a metrics token is set."""

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        _authorize(request, settings)
        now = request.app.state.clock.now()
        return Response(await scrape(db, now), media_type=CONTENT_TYPE_LATEST)
