"""Completion callbacks: a signed HTTP POST per event to the API client's webhook, with every attempt recorded.

The body is JSON; ``X-Bloodcell-Signature: sha256=<hex>`` is the HMAC-SHA256 of ``<timestamp>.<body>`` under
the client's webhook secret, ``X-Bloodcell-Timestamp`` the Unix time of the attempt. Receivers check both
with ``verify_signature`` (or its few lines in their own language) and deduplicate on the delivery id:
delivery is at least once.

Each delivery records the Celery task id of the one message that carries it (``task_id``) and when its next
attempt is due (``due_at``). A message with another task id is stale and does nothing, so the sweep
(service/sweepers.py) can re-queue a delivery whose message was lost (Redis down when it was sent, a
vanished worker) without a second chain of attempts for one that is only waiting on its retry countdown.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

from bloodcell_core.config import WEBHOOK_TIMEOUT_S, Settings
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.results import WebhookDeliveryInfo
from bloodcell_core.service.samples import find_sample
from bloodcell_core.service.states import DeliveryStatus
from bloodcell_core.service.tables import ApiClient, Sample, WebhookDelivery

SIGNATURE_HEADER = "X-Bloodcell-Signature"
TIMESTAMP_HEADER = "X-Bloodcell-Timestamp"
DELIVERY_HEADER = "X-Bloodcell-Delivery"
EVENT_HEADER = "X-Bloodcell-Event"
BACKOFF_S = 5  # the first retry after 5 s, then 10, 20, ... up to MAX_BACKOFF_S
MAX_BACKOFF_S = 3600


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str, body: bytes, signature: str, tolerance_s: float = 300) -> bool:
    """True if the signature matches and the timestamp is recent (a replayed old request fails)."""
    try:
        fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


def queue_event(session: Session, sample: Sample, event: str) -> int | None:
    """Record a pending delivery for the sample's client, in the caller's transaction (an outbox).

    Returns its id, or None when the client has no webhook. An undelivered event of the same kind
    for the sample is reused, so a redelivered task does not add a second one.
    """
    client = session.get(ApiClient, sample.client_id) if sample.client_id else None
    if client is None or not client.webhook_url or client.revoked_at is not None:
        return None
    waiting = session.scalar(
        select(WebhookDelivery.id).where(
            WebhookDelivery.sample_id == sample.id, WebhookDelivery.event == event, WebhookDelivery.status == DeliveryStatus.PENDING
        )
    )
    if waiting is not None:
        return waiting
    payload = {
        "event": event,
        "sample_id": sample.accession_id,
        "status": sample.status,
        "report_status": sample.report_status,
        "at": datetime.now(timezone.utc).isoformat(),
    }
    delivery = WebhookDelivery(client_id=client.id, sample_id=sample.id, event=event, url=client.webhook_url, payload=payload)
    session.add(delivery)
    session.flush()
    return delivery.id


def assign_new(settings: Settings, sample_pk: int) -> list[tuple[int, str]]:
    """Give the sample's pending deliveries that no message carries yet a task id, due now.

    Returns (delivery id, task id) for the caller to send with exactly that task id. Recorded before the
    message is sent: when sending fails, the delivery is overdue after a while and the sweep sends it.
    """
    now = datetime.now(timezone.utc)
    unassigned = (
        (WebhookDelivery.sample_id == sample_pk)
        & (WebhookDelivery.status == DeliveryStatus.PENDING)
        & WebhookDelivery.task_id.is_(None)
    )
    # only while still unassigned: a concurrent caller (the worker after classifying, a relabel on the same
    # sample) that assigned it first keeps it, or two messages would each carry it
    return _assign_new_task_ids(settings, unassigned, now)


def reassign_overdue(settings: Settings, age_s: float) -> list[tuple[int, str]]:
    """Give pending deliveries whose attempt was due more than AGE_S seconds ago a new task id, due now.

    Overdue means no message carried out its attempt: it was never sent or it was lost. One in flight is
    not overdue (an attempt takes at most WEBHOOK_TIMEOUT_S, below the smallest age Settings allow), nor is
    one waiting on its retry countdown (due at its end). Each row is updated only while still overdue, so a
    message claiming it at the same moment either wins (and the row is skipped) or finds itself stale.
    """
    now = datetime.now(timezone.utc)
    overdue = (WebhookDelivery.status == DeliveryStatus.PENDING) & (
        func.coalesce(WebhookDelivery.due_at, WebhookDelivery.created_at) < now - timedelta(seconds=age_s)
    )
    return _assign_new_task_ids(settings, overdue, now)


def _assign_new_task_ids(settings: Settings, condition: ColumnElement[bool], now: datetime) -> list[tuple[int, str]]:
    """A new task id, due NOW, for each delivery matching CONDITION, each updated only while it still matches
    (another caller may change it in between); (delivery id, task id) of those this call changed."""
    with session_scope(settings.database_url) as session:
        assigned = []
        for delivery_id in session.scalars(select(WebhookDelivery.id).where(condition).order_by(WebhookDelivery.id)).all():
            task_id = str(uuid.uuid4())
            changed = session.execute(
                update(WebhookDelivery).where(WebhookDelivery.id == delivery_id, condition).values(task_id=task_id, due_at=now)
            )
            if changed.rowcount == 1:  # type: ignore[attr-defined]
                assigned.append((delivery_id, task_id))
        return assigned


def claim(settings: Settings, delivery_id: int, task_id: str) -> bool:
    """Whether the message TASK_ID should attempt the delivery now: it is pending and this message carries it.

    A delivery sent without a recorded task id is claimed by the first message that runs; any other message
    for it is stale (superseded by the sweep, or a duplicate) and must do nothing.
    """
    with session_scope(settings.database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.status != DeliveryStatus.PENDING or delivery.task_id not in (None, task_id):
            return False
        delivery.task_id, delivery.due_at = task_id, datetime.now(timezone.utc)
        return True


def schedule_retry(settings: Settings, delivery_id: int, task_id: str) -> float | None:
    """Seconds until the next attempt of a delivery that just failed, recorded as its due time.

    None when there is none: its BLOODCELL_WEBHOOK_ATTEMPTS are used up (it is marked failed), or another
    message carries it now. Counted from the recorded attempts, so a re-queued delivery keeps its count.
    """
    with session_scope(settings.database_url) as session:
        delivery = get_row(session, WebhookDelivery, delivery_id, with_for_update=True)
        if delivery.status != DeliveryStatus.PENDING or delivery.task_id != task_id:
            return None
        if delivery.attempts >= settings.webhook_attempts:
            delivery.status = DeliveryStatus.FAILED
            return None
        # Redis hands a message out again once it waited unacknowledged past the visibility timeout, and a
        # retry's message waits out its countdown in the worker: a longer countdown would be attempted twice
        countdown = min(BACKOFF_S * 2 ** (delivery.attempts - 1), MAX_BACKOFF_S, settings.visibility_timeout // 2)
        delivery.due_at = datetime.now(timezone.utc) + timedelta(seconds=countdown)
        return countdown


def attempt_delivery(settings: Settings, delivery_id: int) -> bool:
    """POST the event once; record the outcome. True when the receiver answered 2xx (now or before)."""
    with session_scope(settings.database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is None or delivery.status == DeliveryStatus.DELIVERED:
            return delivery is not None
        secret = get_row(session, ApiClient, delivery.client_id).webhook_secret
        if secret is None:  # create_client gives every client with a webhook URL a secret
            raise LookupError(f"API client {delivery.client_id} has no webhook secret to sign delivery {delivery_id} with")
        url, event = delivery.url, delivery.event
        body = json.dumps({**delivery.payload, "delivery_id": delivery_id}, sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: timestamp,
        DELIVERY_HEADER: str(delivery_id),
        EVENT_HEADER: event,
        "User-Agent": "bloodcell-webhook",
    }
    status_code, error = None, None
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_S)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}: {response.text[:200]}"
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with session_scope(settings.database_url) as session:
        delivery = get_row(session, WebhookDelivery, delivery_id)
        delivery.attempts += 1
        delivery.last_status_code, delivery.last_error = status_code, error
        if error is None:
            delivery.status, delivery.delivered_at = DeliveryStatus.DELIVERED, datetime.now(timezone.utc)
    return error is None


def get_deliveries(session: Session, *, accession_id: str) -> list[WebhookDeliveryInfo]:
    sample = find_sample(session, accession_id)
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.sample_id == sample.id).order_by(WebhookDelivery.id))
    return [
        WebhookDeliveryInfo(
            id=d.id,
            event=d.event,
            url=d.url,
            status=DeliveryStatus(d.status),
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            created_at=d.created_at.isoformat(),
            delivered_at=d.delivered_at.isoformat() if d.delivered_at else None,
        )
        for d in rows
    ]
