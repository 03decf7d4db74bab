"""Completion callbacks: a signed HTTP POST per event to the API client's webhook, with every attempt recorded.

The body is JSON; ``X-Bloodcell-Signature: sha256=<hex>`` is the HMAC-SHA256 of ``<timestamp>.<body>`` under
the client's webhook secret, ``X-Bloodcell-Timestamp`` the Unix time of the attempt. Receivers check both
with ``verify_signature`` (or its few lines in their own language) and deduplicate on the delivery id:
delivery is at least once. Retries and their backoff are the worker's (workers/tasks.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import datetime, timezone

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from bloodcell_core.config import WEBHOOK_TIMEOUT_S, Settings
from bloodcell_core.service.db import get_row, session_scope
from bloodcell_core.service.models import ApiClient, Sample, WebhookDelivery
from bloodcell_core.service.samples import find_sample
from bloodcell_core.service.states import DeliveryStatus

SIGNATURE_HEADER = "X-Bloodcell-Signature"
TIMESTAMP_HEADER = "X-Bloodcell-Timestamp"
DELIVERY_HEADER = "X-Bloodcell-Delivery"
EVENT_HEADER = "X-Bloodcell-Event"


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


def pending_deliveries(settings: Settings, sample_pk: int) -> list[int]:
    """Ids of the sample's deliveries not yet delivered or given up, to hand to the webhook queue."""
    with session_scope(settings.database_url) as session:
        return list(
            session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.sample_id == sample_pk, WebhookDelivery.status == DeliveryStatus.PENDING)
                .order_by(WebhookDelivery.id)
            )
        )


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


def mark_failed(settings: Settings, delivery_id: int) -> None:
    with session_scope(settings.database_url) as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        if delivery is not None and delivery.status != DeliveryStatus.DELIVERED:
            delivery.status = DeliveryStatus.FAILED


def get_deliveries(settings: Settings, accession_id: str) -> list[dict]:
    with session_scope(settings.database_url) as session:
        sample = find_sample(session, accession_id)
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.sample_id == sample.id).order_by(WebhookDelivery.id))
        return [
            {
                "id": d.id,
                "event": d.event,
                "url": d.url,
                "status": d.status,
                "attempts": d.attempts,
                "last_status_code": d.last_status_code,
                "last_error": d.last_error,
                "created_at": d.created_at.isoformat(),
                "delivered_at": d.delivered_at.isoformat() if d.delivered_at else None,
            }
            for d in rows
        ]
