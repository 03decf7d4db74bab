"""The Celery app. Every reliability setting here is chosen on purpose; the comments say why.

Start a worker with ``bloodcell worker`` (or ``celery -A workers.app worker -Q classify,train,webhooks``),
the periodic sweep's scheduler with ``bloodcell beat`` (one per deployment).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from celery import Celery  # noqa: E402
from celery.signals import worker_init  # noqa: E402

from bloodcell_core.config import Settings, soft_time_limit  # noqa: E402
from bloodcell_core.service.db import DatabaseNotMigrated, require_migrated  # noqa: E402
from bloodcell_core.service.queues import CLASSIFY_QUEUE, TRAIN_QUEUE, WEBHOOK_QUEUE, task_queues  # noqa: E402
from bloodcell_core.service.versions import ensure_production_model  # noqa: E402

settings = Settings.from_env()
app = Celery("bloodcell", broker=settings.broker_url, backend=settings.result_backend, include=["workers.tasks"])
app.conf.update(
    # JSON only: a pickled message could run code in the worker, so it is refused outright.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # Acknowledge after the task finished, and requeue when a worker dies mid-task: a sample is
    # never lost to a crash. tasks.py caps deliveries so a message that kills workers cannot loop.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # One message at a time per process: a long sample must not hold others hostage in a prefetch buffer.
    worker_prefetch_multiplier=1,
    # Time limits: classify tasks are seconds to minutes; the hard limit kills a stuck process.
    task_soft_time_limit=soft_time_limit(settings.classify_time_limit_s),
    task_time_limit=settings.classify_time_limit_s,
    # Redis redelivers a message whose worker vanished (machine lost, SIGKILL of the main process)
    # after the visibility timeout; it must exceed the longest task (retraining: under 2 hours), or a
    # running task is handed to a second worker too (harmless, results are idempotent, but wasted).
    broker_transport_options={"visibility_timeout": settings.visibility_timeout},
    broker_connection_retry_on_startup=True,
    # Separate queues: retraining never delays a sample. GPU workers take their own queue.
    task_queues=task_queues(),
    task_default_queue=CLASSIFY_QUEUE,
    task_routes={
        "bloodcell.retrain": {"queue": TRAIN_QUEUE},
        "bloodcell.evaluate_version": {"queue": TRAIN_QUEUE},
        "bloodcell.deliver_webhook": {"queue": WEBHOOK_QUEUE},
        "bloodcell.sweep": {"queue": WEBHOOK_QUEUE},
    },
    # Celery beat (`bloodcell beat`, started by `bloodcell up` and compose) sends the sweep; a sweep still
    # queued when the next one is due has expired, so a busy or absent worker does not pile them up.
    beat_schedule={
        "sweep": {
            "task": "bloodcell.sweep",
            "schedule": settings.sweep_interval_s,
            "options": {"queue": WEBHOOK_QUEUE, "expires": settings.sweep_interval_s},
        }
    },
    # Events for Flower: task runtimes, failures, worker heartbeats.
    worker_send_task_events=True,
    task_send_sent_event=True,
    task_track_started=True,
    result_expires=7 * 24 * 3600,
    # TensorFlow is not fork-safe once it has built models: Keras is imported before the fork, but models
    # load only in each pool process (tasks.py), and a process is replaced after many tasks to bound memory.
    worker_max_tasks_per_child=1000,
)


@worker_init.connect
def check_database(**_) -> None:
    """Refuse settings that cannot work and an unmigrated database (every task would fail); make sure a
    production model exists. `bloodcell worker` checks the settings too; `celery -A workers.app worker` only here."""
    try:
        settings.validate()
        require_migrated(settings.database_url)
    except (ValueError, DatabaseNotMigrated) as exc:
        print(f"bloodcell worker refuses to start: {exc}", file=sys.stderr, flush=True)
        os._exit(2)  # Celery logs and swallows exceptions raised in signal handlers
    ensure_production_model(settings)
