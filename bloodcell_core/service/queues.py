"""Queue names and declarations, shared by producers (client) and workers so both route alike.

Importing this module also stamps every task message this process publishes with its publish time
(``PUBLISHED_AT_HEADER``): Celery's message protocol 2 carries no sent time, and the metrics need one
for the age of the oldest waiting message. Every producer imports this module (the local client, the
API through it, the workers for webhook deliveries and retries).
"""

from __future__ import annotations

import time
from typing import Any

from celery.signals import before_task_publish
from kombu import Exchange, Queue

CLASSIFY_QUEUE = "classify"
CLASSIFY_GPU_QUEUE = "classify.gpu"
TRAIN_QUEUE = "train"
WEBHOOK_QUEUE = "webhooks"
QUEUES = (CLASSIFY_QUEUE, CLASSIFY_GPU_QUEUE, TRAIN_QUEUE, WEBHOOK_QUEUE)


def task_queues() -> list[Queue]:
    """Each queue with its own direct exchange and routing key.

    A queue declared by name alone inherits Celery's default exchange and routing key, and then
    every queue would receive every message.
    """
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES]


def worker_queues(device: str) -> list[str]:
    """A CPU worker takes CPU classification, training and webhooks; a GPU worker the GPU queue first."""
    common = [CLASSIFY_QUEUE, TRAIN_QUEUE, WEBHOOK_QUEUE]
    return [CLASSIFY_GPU_QUEUE, *common] if device == "gpu" else common


PUBLISHED_AT_HEADER = "bloodcell_published_at"  # seconds since the epoch, when this copy was published


@before_task_publish.connect(weak=False)
def stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """Overwrite, not setdefault: a retry republishes the request's headers, and its wait starts anew."""
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()
