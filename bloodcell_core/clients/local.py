"""The producer's Python client: submit samples and single images, read reports, request retraining.

    from bloodcell_core.clients.local import Client
    client = Client()                                   # settings from BLOODCELL_* variables
    client.submit("S-2026-0001", [("cell1.jpg", data1), ("cell2.jpg", data2)])
    client.submit("S-2026-0002", [], fields=[("field1.jpg", field_bytes)])   # whole smear fields
    report = client.wait("S-2026-0001", timeout=300)

Tasks are sent by name, so producers need neither the workers' code nor TensorFlow.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Sequence

from celery import Celery
from sqlalchemy.orm import Session

from bloodcell_core.clients.waiting import wait_until_classified
from bloodcell_core.config import Settings
from bloodcell_core.service import promotion, review, sweepers, users, webhooks
from bloodcell_core.service.audit_log import audit_events
from bloodcell_core.service.db import require_migrated, session_scope
from bloodcell_core.service.fields import field_overlay, get_fields
from bloodcell_core.service.queues import TRAIN_QUEUE, WEBHOOK_QUEUE, task_queues
from bloodcell_core.service.receipts import Submission
from bloodcell_core.service.results import (
    AuditEventInfo,
    CellResult,
    ModelVersionInfo,
    Report,
    SampleFieldInfo,
    SampleForReview,
    TrainingRunInfo,
    WebhookDeliveryInfo,
    WorklistRow,
)
from bloodcell_core.service.samples import find_sample, get_image, get_report, list_samples
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES, ModelStatus
from bloodcell_core.service.submission import store_image, submit_sample
from bloodcell_core.service.training_runs import FINAL_TRAINING_RUN_STATUSES, create_training_run, training_run_status
from bloodcell_core.service.versions import list_versions, register_model_version, report_file, report_file_names, version_classes

log = logging.getLogger(__name__)


class Client:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.settings.validate()
        require_migrated(self.settings.database_url)
        self._celery = Celery("bloodcell-producer", broker=self.settings.broker_url, backend=self.settings.result_backend)
        self._celery.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json", task_queues=task_queues())

    def _send(self, name: str, args: list[Any], queue: str, task_id: str | None = None):
        return self._celery.send_task(name, args=args, queue=queue, task_id=task_id)

    def submit(
        self,
        accession_id: str,
        images: list[tuple[str, bytes]],
        actor: str = "client",
        stored: Sequence[tuple[str, str]] = (),
        client_id: int | None = None,
        idempotency_key: str | None = None,
        fields: Sequence[tuple[str, bytes]] = (),
    ) -> Submission:
        """Store and enqueue a sample; resubmitting the same sample and images enqueues nothing new.

        ``stored``: (name, sha256) of images already in the store. ``idempotency_key`` (with the API
        client's id): a retry with the same key returns the first submission's sample, and queues its
        classification again if it has not finished (the first attempt may have failed to reach Redis).
        ``fields``: whole smear fields as (name, bytes); the worker finds their white cells and
        classifies them as cells of the sample (``images`` may then be empty).
        """
        submission = submit_sample(self.settings, accession_id, images, actor, stored, client_id, idempotency_key, fields)
        if submission.new_cells or submission.new_fields or submission.status not in FINAL_SAMPLE_STATUSES:
            self._send("bloodcell.classify_sample", [submission.sample_pk], self.settings.classify_queue)
        return submission

    def _session(self) -> AbstractContextManager[Session]:
        """One transaction on this client's database: the session every service call takes first."""
        return session_scope(self.settings.database_url)

    def report(self, accession_id: str) -> Report:
        with self._session() as session:
            return get_report(session, settings=self.settings, accession_id=accession_id)

    def cells(self, accession_id: str, needs_review: bool = False) -> list[CellResult]:
        with self._session() as session:
            return review.get_cells(session, accession_id=accession_id, needs_review=needs_review)

    def fields(self, accession_id: str) -> list[SampleFieldInfo]:
        """The sample's whole fields, each with its cells' boxes and labels."""
        with self._session() as session:
            return get_fields(session, accession_id=accession_id)

    def field_overlay(self, accession_id: str, field_sha256: str) -> bytes:
        """One field as PNG with its cells' boxes drawn and labelled."""
        with self._session() as session:
            return field_overlay(session, settings=self.settings, accession_id=accession_id, field_sha256=field_sha256)

    def export(self, accession_id: str, format_name: str) -> str:
        return self.export_document(accession_id, format_name)[1]

    def export_document(self, accession_id: str, format_name: str) -> tuple[str, str]:
        """(media type, document) of the sample's report in a registered export format."""
        from bloodcell_core.service.exports import export_sample

        with self._session() as session:
            return export_sample(session, settings=self.settings, accession_id=accession_id, format_name=format_name)

    def image(self, image_sha256: str) -> bytes:
        """A stored cell image's bytes, by its sha256."""
        with self._session() as session:
            return get_image(session, settings=self.settings, image_sha256=image_sha256)

    def worklist(self, status: str | None = None, flag: str | None = None) -> list[WorklistRow]:
        """Samples newest first, optionally of one status or with one flag (the console's worklist)."""
        with self._session() as session:
            return list_samples(session, status=status, flag=flag)

    def deliveries(self, accession_id: str) -> list[WebhookDeliveryInfo]:
        """The sample's webhook deliveries, each attempt recorded."""
        with self._session() as session:
            return webhooks.get_deliveries(session, accession_id=accession_id)

    def audit(self, subject: str | None = None, limit: int = 100) -> list[AuditEventInfo]:
        """The audit log, newest first, optionally for one subject."""
        with self._session() as session:
            return audit_events(session, subject=subject, limit=limit)

    def review_queue(self, limit: int = 100) -> list[SampleForReview]:
        with self._session() as session:
            return review.review_queue(session, limit=limit)

    def relabel(self, accession_id: str, image_sha256: str, label: str, reviewer: str, reason: str, actor: str = "client") -> Report:
        with self._session() as session:  # committed before the webhook deliveries are handed over
            report = review.relabel_cell(
                session,
                settings=self.settings,
                accession_id=accession_id,
                image_sha256=image_sha256,
                label=label,
                reviewer=reviewer,
                reason=reason,
                actor=actor,
            )
        self._send_webhooks(accession_id)
        return report

    def sign_off(
        self, accession_id: str, reviewer: str, comment: str = "", actor: str = "client", confirm_incomplete: bool = False
    ) -> Report:
        """Release the report under the console user REVIEWER (the sign-off rule: service/signoff.py) and
        tell the client's webhook."""
        with self._session() as session:  # committed before the webhook deliveries are handed over
            report = review.sign_off(
                session,
                settings=self.settings,
                accession_id=accession_id,
                reviewer=reviewer,
                comment=comment,
                actor=actor,
                confirm_incomplete=confirm_incomplete,
            )
        self._send_webhooks(accession_id)
        return report

    def _send_webhooks(self, accession_id: str) -> None:
        """Hand the sample's new webhook deliveries to the webhook queue (those already queued have their message).

        The change is committed already: a broker error here is logged, not raised, and the delivery
        stays pending in the database until the sweep sends it (`bloodcell sweep`, run by Celery beat).
        """
        with self._session() as session:
            sample_pk = find_sample(session, accession_id).id
        try:
            for delivery_id, task_id in webhooks.assign_new(self.settings, sample_pk):
                self._send_delivery(delivery_id, task_id)
        except Exception:
            log.exception("could not queue the webhook deliveries of sample %s", accession_id)

    def _send_delivery(self, delivery_id: int, task_id: str) -> None:
        self._send("bloodcell.deliver_webhook", [delivery_id], WEBHOOK_QUEUE, task_id)

    def sweep(self) -> dict[str, int]:
        """Run the sweep here and now (Celery beat runs it on a worker): overdue webhook deliveries re-queued,
        orphan image files of this machine's file store removed. Returns the counts."""
        return sweepers.sweep(self.settings, self._send_delivery).as_dict()

    def readiness(self, timeout: float = 1.0) -> dict[str, Any]:
        """Whether the database (migrated), Redis and at least one worker answer; details go to the log."""
        checks: dict[str, Any] = {"database": "ok", "redis": "ok", "workers": []}
        try:
            require_migrated(self.settings.database_url)
        except Exception:
            log.exception("readiness: database")
            checks["database"] = "unavailable"
        try:
            replies = self._celery.control.ping(timeout=timeout) or []
            checks["workers"] = sorted(name for reply in replies for name in reply)
        except Exception:
            log.exception("readiness: redis")
            checks["redis"] = "unavailable"
        checks["ready"] = checks["database"] == checks["redis"] == "ok" and bool(checks["workers"])
        return checks

    def wait(self, accession_id: str, timeout: float = 600, poll: float = 0.2) -> Report:
        """Poll until the sample reaches done, needs_review or failed."""
        return wait_until_classified(self.report, accession_id, timeout, poll)

    def classify_image(self, data: bytes, timeout: float = 60) -> dict[str, Any]:
        """Classify one image through the queue and wait for its result."""
        with self._session() as session:  # committed before the worker looks the image up
            sha256 = store_image(session, settings=self.settings, data=data)
        return self._send("bloodcell.classify_image", [sha256], self.settings.classify_queue).get(timeout=timeout)

    def retrain(self, plugin: str, data_dir: str, parameters: dict[str, Any], actor: str = "client") -> int:
        """Queue a retraining run on the training queue; returns the run id."""
        with self._session() as session:
            run_id = create_training_run(session, plugin=plugin, data_dir=data_dir, parameters=parameters, actor=actor)
        self._send("bloodcell.retrain", [run_id], TRAIN_QUEUE)
        return run_id

    def wait_training(self, run_id: int, timeout: float = 7200, poll: float = 1.0) -> TrainingRunInfo:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._session() as session:
                status = training_run_status(session, run_id=run_id)
            if status.status in FINAL_TRAINING_RUN_STATUSES:
                return status
            time.sleep(poll)
        raise TimeoutError(f"training run {run_id} not finished after {timeout:.0f} s")

    def evaluate(self, version: str, set_name: str, timeout: float = 3600) -> dict[str, Any]:
        """Score VERSION on a registered evaluation set, through the training queue."""
        return self._send("bloodcell.evaluate_version", [version, set_name], TRAIN_QUEUE).get(timeout=timeout)

    def register(self, model_dir: str, actor: str = "client") -> str:
        """Register a model directory as a candidate version (a new version if its weights or calibration changed)."""
        with self._session() as session:
            return register_model_version(session, artifact_dir=Path(model_dir), status=ModelStatus.CANDIDATE, actor=actor).version

    def register_evaluation_set(self, name: str, data_dir: str, actor: str = "client") -> dict[str, Any]:
        return promotion.register_evaluation_set(self.settings, name, data_dir, actor)

    def shadow_report(self, version: str) -> dict[str, Any]:
        with self._session() as session:
            return promotion.shadow_report(session, version=version)

    def models(self) -> list[ModelVersionInfo]:
        with self._session() as session:
            return list_versions(session)

    def model_classes(self, version: str) -> list[str]:
        """The classes of one registered model version, in its output order."""
        with self._session() as session:
            return version_classes(session, version=version)

    def model_report_files(self, version: str) -> list[str]:
        """The names of VERSION's report files (plots, generalisation.json): stored with it, or in its directory here."""
        with self._session() as session:
            return report_file_names(session, version=version)

    def model_report_file(self, version: str, name: str) -> bytes:
        """One report file of VERSION: from its registered directory where this host has it, else as stored with it."""
        with self._session() as session:
            return report_file(session, version=version, name=name)

    def promote(self, version: str, actor: str = "client", force: bool = False, reason: str = "") -> str:
        """Make VERSION production if it passes the promotion gate (or ``force`` with a reason, audited)."""
        with self._session() as session:
            return promotion.promote(session, settings=self.settings, version=version, actor=actor, force=force, reason=reason).version

    # Console users and browser sessions: the console's login and administration pages.

    def list_users(self) -> list[dict[str, Any]]:
        """Every console user, by name, with role, state and last login."""
        with self._session() as session:
            return users.list_users(session)

    def create_user(self, name: str, role: str, password: str, actor: str = "client") -> dict[str, Any]:
        with self._session() as session:
            return users.create_user(session, name=name, role=role, password=password, actor=actor)

    def disable_user(self, name: str, actor: str = "client") -> None:
        with self._session() as session:
            users.disable_user(session, name=name, actor=actor)

    def enable_user(self, name: str, actor: str = "client") -> None:
        with self._session() as session:
            users.enable_user(session, name=name, actor=actor)

    def set_user_role(self, name: str, role: str, actor: str = "client") -> None:
        with self._session() as session:
            users.set_role(session, name=name, role=role, actor=actor)

    def set_user_password(self, name: str, password: str, actor: str = "client") -> None:
        with self._session() as session:
            users.set_password(session, name=name, password=password, actor=actor)

    def start_session(self, name: str) -> tuple[str, str]:
        """A browser session for the authenticated user NAME: (session token, CSRF token)."""
        with self._session() as session:
            return users.start_session(session, settings=self.settings, name=name)

    def session_user(self, token: str) -> dict[str, Any] | None:
        """The user of a live browser session (name, role, CSRF token, expiry), else None."""
        with self._session() as session:
            return users.session_user(session, token=token)

    def end_session(self, token: str) -> None:
        with self._session() as session:
            users.end_session(session, token=token)
