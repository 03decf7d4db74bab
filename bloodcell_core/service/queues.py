"""Queue names and declarations, shared by producers (client) and workers so both route alike."""

from __future__ import annotations

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
