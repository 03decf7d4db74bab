"""Thin Celery tasks: each calls one bloodcell_core service."""

from __future__ import annotations

import logging
import socket
import threading
import time
from functools import cache

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_init, worker_process_init
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError

from bloodcell_core.config import soft_time_limit
from bloodcell_core.ml.serving import Classifier
from bloodcell_core.service import classification, promotion, sweepers, webhooks
from bloodcell_core.service.db import session_scope
from bloodcell_core.service.queues import WEBHOOK_QUEUE
from bloodcell_core.service.samples import mark_sample_failed
from bloodcell_core.service.states import DeliveryStatus
from bloodcell_core.service.tables import ModelVersion
from bloodcell_core.service.training_runs import run_training
from bloodcell_core.service.versions import load_classifier, production_version
from workers.app import app, settings

log = logging.getLogger(__name__)

MAX_DELIVERIES = 3  # a message delivered this often without finishing is a poison message
# the database or Redis briefly away
TRANSIENT = (OperationalError, ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError)
_models: dict[str, Classifier] = {}  # per worker process, filled after the fork
_loading = threading.Lock()  # the preloading thread and a task never load the same model twice


MODELS_IN_MEMORY = 2 if settings.shadow else 1  # production, and the shadow-scored candidate


def classifier_for(version: ModelVersion) -> Classifier:
    """Load each model version once per process; a newly promoted version is loaded on first use."""
    with _loading:
        if version.version not in _models:
            log.info("loading model %s from %s", version.version, version.artifact_path)
            started = time.monotonic()
            while len(_models) >= MODELS_IN_MEMORY:
                _models.pop(next(iter(_models)))  # the least recently loaded
            _models[version.version] = load_classifier(settings, version)
            log.info("model %s loaded in %.1f s", version.version, time.monotonic() - started)
        return _models[version.version]


def _preload_production_model() -> None:
    try:
        with session_scope(settings.database_url) as session:
            version = production_version(session)
            session.expunge(version)
        classifier_for(version)
    except Exception:  # the first task will load it, or report why it cannot
        log.exception("could not preload the production model")


@worker_init.connect
def import_keras_before_the_fork(**_) -> None:
    """Import Keras (about 7 s here) once, in the worker's main process, before it forks its pool processes:
    each starts with it imported, so a killed one is back at work in seconds. Importing builds no model and
    no TensorFlow device state; models are still loaded only after the fork (tested in test_faults.py)."""
    import keras  # noqa: F401


@worker_process_init.connect
def load_production_model(**_) -> None:
    """Start loading the model in each freshly forked process, in a thread, so the first sample does not wait
    for it; the process reports up at once. Celery kills a new pool process that has not reported up within
    worker_proc_alive_timeout (4 s), and loading a model can take longer: loading here, in the signal, made a
    killed pool process's replacements be killed too, over and over."""
    threading.Thread(target=_preload_production_model, name="bloodcell-preload", daemon=True).start()


def worker_name(task: Task) -> str:
    return task.request.hostname or socket.gethostname()


@cache
def _delivery_counter() -> Redis:
    """One client (and connection pool) per worker process, made after the fork."""
    return Redis.from_url(settings.broker_url)


def _delivery_key(task: Task) -> str:
    return f"bloodcell:deliveries:{task.request.id}:{task.request.retries}"


def count_delivery(task: Task) -> int:
    """How often this attempt of the task has started (Redis keeps the count for a day).

    A retry after a transient error (database or broker away) keeps the task id but is a new
    attempt, so it starts a new count: only deliveries that never finished count against the cap.
    """
    redis = _delivery_counter()
    key = _delivery_key(task)
    count = redis.incr(key)
    redis.expire(key, 24 * 3600)
    return int(count)


def deliveries_without_progress(task: Task, count: int) -> int:
    """Deliveries since the last one that kept some work (``record_progress``), this one included."""
    last = _delivery_counter().get(_delivery_key(task) + ":progress")
    return count - int(last or 0)


def record_progress(task: Task, count: int) -> None:
    """Delivery COUNT kept work: a worker killed after it is not a poison message's victim (the OOM killer,
    an operator, a lost machine), so the deliveries before it no longer count against the cap."""
    _delivery_counter().set(_delivery_key(task) + ":progress", count, ex=24 * 3600)


@app.task(bind=True, name="bloodcell.classify_sample", autoretry_for=TRANSIENT, retry_backoff=2, retry_backoff_max=60, max_retries=8)
def classify_sample(self: Task, sample_pk: int) -> dict:
    deliveries = count_delivery(self)
    if deliveries_without_progress(self, deliveries) > MAX_DELIVERIES:
        error = f"gave up after {MAX_DELIVERIES} deliveries in a row that did not finish (a worker died each time)"
        with session_scope(settings.database_url) as session:
            mark_sample_failed(session, sample_pk=sample_pk, error=error, actor=worker_name(self))
        raise Reject(error, requeue=False)

    def progress() -> None:
        record_progress(self, deliveries)

    report = classification.classify_sample(settings, sample_pk, classifier_for, worker_name(self), on_progress=progress)
    for delivery_id, task_id in webhooks.assign_new(settings, sample_pk):  # recorded with the report
        _send_delivery(delivery_id, task_id)
    if settings.shadow:
        try:
            promotion.shadow_classify(settings, sample_pk, classifier_for, worker_name(self))
        except Exception:  # the report is done; shadow scoring must never fail the sample
            log.exception("shadow scoring of sample %s failed", sample_pk)
    return report.model_dump(mode="json")


@app.task(bind=True, name="bloodcell.deliver_webhook", max_retries=None)
def deliver_webhook(self: Task, delivery_id: int) -> str:
    """POST one event; retried with exponential backoff up to BLOODCELL_WEBHOOK_ATTEMPTS attempts.

    A message that no longer carries its delivery (delivered, given up, or re-queued by the sweep) does nothing.
    """
    if not webhooks.claim(settings, delivery_id, self.request.id):
        return "skipped"
    if webhooks.attempt_delivery(settings, delivery_id):
        return DeliveryStatus.DELIVERED
    countdown = webhooks.schedule_retry(settings, delivery_id, self.request.id)
    if countdown is None:  # attempts used up (marked failed), or re-queued by the sweep meanwhile
        return "no retry"
    raise self.retry(countdown=countdown)


@app.task(bind=True, name="bloodcell.classify_image", autoretry_for=TRANSIENT, retry_backoff=2, max_retries=8)
def classify_image(self: Task, image_sha256: str) -> dict:
    """One stored image, without a sample: the prediction is persisted and returned."""
    return classification.classify_image(settings, image_sha256, classifier_for, worker_name(self))


@app.task(
    bind=True,
    name="bloodcell.retrain",
    autoretry_for=TRANSIENT,
    retry_backoff=10,
    max_retries=3,
    soft_time_limit=soft_time_limit(settings.train_time_limit_s),
    time_limit=settings.train_time_limit_s,
)
def retrain(self: Task, run_id: int) -> str:
    if count_delivery(self) > MAX_DELIVERIES:
        raise Reject(f"training run {run_id} abandoned after {MAX_DELIVERIES} deliveries", requeue=False)
    candidate = run_training(settings, run_id, worker_name(self))
    promotion.evaluate_for_gate(settings, candidate, worker_name(self))
    return candidate


@app.task(
    bind=True,
    name="bloodcell.evaluate_version",
    autoretry_for=TRANSIENT,
    retry_backoff=10,
    max_retries=3,
    soft_time_limit=soft_time_limit(settings.train_time_limit_s),
    time_limit=settings.train_time_limit_s,
)
def evaluate_version(self: Task, version: str, set_name: str) -> dict:
    return promotion.evaluate_on_set(settings, version, set_name, worker_name(self))


def _send_delivery(delivery_id: int, task_id: str) -> None:
    deliver_webhook.apply_async(args=[delivery_id], task_id=task_id, queue=WEBHOOK_QUEUE)


@app.task(name="bloodcell.sweep")
def sweep() -> dict[str, int]:
    """Celery beat's periodic sweep: overdue webhook deliveries re-queued, orphan image files removed."""
    return sweepers.sweep(settings, _send_delivery).as_dict()
