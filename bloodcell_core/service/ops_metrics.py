"""Prometheus metrics of the service, computed from the database and Redis when Prometheus scrapes
GET /metrics (api/app.py).

Nothing is counted in process memory: every API process answers with the same values, and a restart
loses nothing. Labels stay bounded (queues, states, model versions, classes), never a sample or a cell.
Counters (``*_total``) are running totals added to with the events they count (service/counters.py),
so they only grow and a scrape never reads the cells. Workers are counted by a thread that pings them
every WORKER_CENSUS_INTERVAL_S: a scrape never waits for their replies.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import redis
from celery import Celery
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from bloodcell_core.config import Settings
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.queues import PUBLISHED_AT_HEADER, QUEUES
from bloodcell_core.service.states import DeliveryStatus, SampleStatus
from bloodcell_core.service.tables import AuditEvent, CellCount, ModelVersion, RelabelCount, Sample, WebhookDelivery

log = logging.getLogger(__name__)

TURNAROUND_WINDOW = timedelta(minutes=15)
TURNAROUND_QUANTILES = (0.5, 0.9, 0.99)
WORKER_REPLY_TIMEOUT_S = 0.5  # each census waits this long for the workers' replies
WORKER_CENSUS_INTERVAL_S = 2.0  # pause between censuses; a scrape reads the latest one


class WorkerCensus:
    """The queues each Celery worker consumes, asked by broadcast in a background thread of this process."""

    def __init__(self, broker_url: str) -> None:
        self._celery = Celery("bloodcell-metrics", broker=broker_url)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._answered = threading.Event()
        self._replies: dict[str, Any] | None = None  # None: the latest census could not reach the broker

    def active_queues(self) -> dict[str, Any]:
        """{worker: its queues} from the latest census; the first call of a process waits for the first one."""
        with self._lock:
            if self._thread is None:  # started on first use, so after any fork of the server's processes
                self._thread = threading.Thread(target=self._run, name="worker-census", daemon=True)
                self._thread.start()
        self._answered.wait(WORKER_REPLY_TIMEOUT_S + 5)
        if self._replies is None:
            raise ConnectionError("the latest census of the workers could not reach the broker")
        return self._replies

    def _run(self) -> None:
        while True:
            try:
                self._replies = self._celery.control.inspect(timeout=WORKER_REPLY_TIMEOUT_S).active_queues() or {}
            except Exception:
                log.exception("metrics: the census of the workers could not reach the broker")
                self._replies = None
            self._answered.set()
            time.sleep(WORKER_CENSUS_INTERVAL_S)


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class ServiceCollector(Collector):
    """Reads the service's state at each scrape; a source that does not answer gives ``source_up 0``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis = redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
        self._census = WorkerCensus(settings.broker_url)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "bloodcell_metrics_source_up", "1 when this scrape could read the source (database, redis)", labels=["source"]
        )
        for source, read in (("database", self._database), ("redis", self._broker)):
            try:
                metrics = list(read())
            except Exception:
                log.exception("metrics: could not read the %s", source)
                up.add_metric([source], 0)
                continue
            up.add_metric([source], 1)
            yield from metrics
        yield up

    # --- the database -------------------------------------------------------------------------------------

    def _database(self) -> Iterator[Metric]:
        with session_scope(self.settings.database_url) as session:
            yield from _samples(session)
            yield from _models(session)
            yield from _cells(session)
            yield from _relabels(session)
            yield from _webhooks(session)
            yield from _turnaround(session, datetime.now(timezone.utc))

    # --- Redis: the broker ------------------------------------------------------------------------------------

    def _broker(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "bloodcell_queue_messages",
            "Task messages waiting in the Redis queue (not those a worker has taken and not yet acknowledged)",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "bloodcell_queue_oldest_age_seconds",
            "Seconds since the oldest waiting message of the queue was published (its bloodcell_published_at "
            "header, stamped by every producer); 0 when the queue is empty; absent for a message without the header",
            labels=["queue"],
        )
        now = time.time()
        for queue in QUEUES:
            depth.add_metric([queue], self._redis.llen(queue))
            # kombu LPUSHes and BRPOPs: the oldest message is at the tail
            oldest = self._redis.lindex(queue, -1)
            published = _published_at(oldest) if oldest is not None else now
            if published is not None:
                age.add_metric([queue], max(0.0, now - published))
        yield depth
        yield age
        yield self._workers()

    def _workers(self) -> Metric:
        workers = GaugeMetricFamily(
            "bloodcell_workers",
            f"Celery workers consuming the queue that answered the latest control broadcast (one every "
            f"{WORKER_CENSUS_INTERVAL_S:g} s, answers awaited {WORKER_REPLY_TIMEOUT_S} s)",
            labels=["queue"],
        )
        replies = self._census.active_queues()
        for queue in QUEUES:
            workers.add_metric([queue], sum(any(q["name"] == queue for q in queues) for queues in replies.values()))
        return workers


def _published_at(raw: bytes | str) -> float | None:
    try:
        value = json.loads(raw)["headers"][PUBLISHED_AT_HEADER]
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) else None


def _samples(session: Session) -> Iterator[Metric]:
    counts = dict(session.execute(select(Sample.status, func.count()).group_by(Sample.status)).tuples().all())
    samples = GaugeMetricFamily("bloodcell_samples", "Samples by status", labels=["status"])
    for status in SampleStatus:
        samples.add_metric([status.value], counts.get(status.value, 0))
    yield samples


def _models(session: Session) -> Iterator[Metric]:
    info = GaugeMetricFamily(
        "bloodcell_model_info", "1 per registered model version, with its status", labels=["model_version", "status"]
    )
    for version, status in session.execute(select(ModelVersion.version, ModelVersion.status)).tuples():
        info.add_metric([version, status], 1)
    yield info


def _cells(session: Session) -> Iterator[Metric]:
    """Cells of reports, by the model version of the report and the class the model gave, with the
    model's review decision: running totals (service/counters.py), so a few rows whatever the history."""
    rows = session.execute(
        select(ModelVersion.version, CellCount.label, CellCount.n_classified, CellCount.n_sent_to_review, CellCount.n_unfamiliar)
        .join(ModelVersion, ModelVersion.id == CellCount.model_version_id)
        .order_by(ModelVersion.version, CellCount.label)
    ).tuples()
    labels = ["model_version", "label"]
    classified = CounterMetricFamily(
        "bloodcell_cells_classified", "Cells of sample reports classified, by model version and the model's class", labels=labels
    )
    review = CounterMetricFamily(
        "bloodcell_cells_sent_to_review",
        "Of those, cells the model sent to a technologist (low confidence or unlike the training images)",
        labels=labels,
    )
    ood = CounterMetricFamily(
        "bloodcell_cells_unfamiliar", "Of those, cells unlike the training images (over the model's OOD threshold)", labels=labels
    )
    for version, label, n, n_review, n_unfamiliar in rows:
        classified.add_metric([version, label], n)
        review.add_metric([version, label], n_review)
        ood.add_metric([version, label], n_unfamiliar)
    yield from (classified, review, ood)


def _relabels(session: Session) -> Iterator[Metric]:
    rows = session.execute(
        select(ModelVersion.version, RelabelCount.from_label, RelabelCount.to_label, RelabelCount.n)
        .join(ModelVersion, ModelVersion.id == RelabelCount.model_version_id)
        .order_by(ModelVersion.version, RelabelCount.from_label, RelabelCount.to_label)
    ).tuples()
    relabels = CounterMetricFamily(
        "bloodcell_relabels",
        "Technologists' relabels of cells, by the report's model version, the label before (the model's, or an "
        "earlier review's; none when there was none) and the label given",
        labels=["model_version", "from_label", "to_label"],
    )
    for version, before, after, n in rows:
        relabels.add_metric([version, before, after], n)
    yield relabels


def _webhooks(session: Session) -> Iterator[Metric]:
    counts = dict(session.execute(select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)).tuples().all())
    deliveries = GaugeMetricFamily(
        "bloodcell_webhook_deliveries", "Webhook deliveries by status (failed: every attempt used up)", labels=["status"]
    )
    for status in DeliveryStatus:
        deliveries.add_metric([status.value], counts.get(status.value, 0))
    yield deliveries


def _turnaround(session: Session, now: datetime) -> Iterator[Metric]:
    since = now - TURNAROUND_WINDOW
    classified_at = func.min(AuditEvent.at)
    rows = session.execute(
        select(Sample.created_at, classified_at)
        .join(AuditEvent, and_(AuditEvent.subject == Sample.accession_id, AuditEvent.action == "sample.classified"))
        .where(Sample.created_at >= since, AuditEvent.at >= since)
        .group_by(Sample.id, Sample.created_at)
    ).tuples()
    seconds = [(_utc(done) - _utc(created)).total_seconds() for created, done in rows]
    window = int(TURNAROUND_WINDOW.total_seconds())
    turnaround = GaugeMetricFamily(
        "bloodcell_sample_turnaround_seconds",
        f"Seconds from a sample's submission to its first report (queue wait and classification), quantiles over "
        f"the samples submitted and classified in the last {window} s; absent when there were none",
        labels=["quantile"],
    )
    for q in TURNAROUND_QUANTILES if seconds else ():
        turnaround.add_metric([str(q)], quantile(seconds, q))
    yield turnaround
    yield GaugeMetricFamily(
        "bloodcell_sample_turnaround_samples", f"Samples submitted and classified in the last {window} s", value=len(seconds)
    )


def _utc(value: Any) -> datetime:
    # the UTCDateTime column type does this for whole rows; aggregates such as min() come back as stored
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class ServiceMetrics:
    """The registry GET /metrics renders; one per API process."""

    # the text format every Prometheus 2.x reads; our names need none of the newer format's UTF-8 names
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)  # no describe(): nothing is read at start-up
        self.registry.register(ServiceCollector(settings))

    def render(self) -> bytes:
        return generate_latest(self.registry)
