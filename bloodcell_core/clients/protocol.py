"""What a laboratory's program may call on either client: ``local.Client`` (in process) and ``http.HttpClient``.

Code written against ``LabClient`` (the CLI's commands, a LIMS bridge) runs unchanged over HTTP or in process.
``actor`` names who acts in the audit log in process; over HTTP the API records the token's client instead.
mypy checks that both clients satisfy it (tests/unit/test_client_protocol.py).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from bloodcell_core.service.receipts import Submission
from bloodcell_core.service.results import CellResult, ModelVersionInfo, Report, SampleFieldInfo, SampleForReview


class LabClient(Protocol):
    def submit(
        self,
        accession_id: str,
        images: list[tuple[str, bytes]],
        actor: str = ...,
        *,
        idempotency_key: str | None = ...,
        fields: Sequence[tuple[str, bytes]] = ...,
    ) -> Submission:
        """Store and queue a sample's cell images (or whole ``fields``); a resubmission queues nothing new."""
        ...

    def report(self, accession_id: str) -> Report: ...

    def wait(self, accession_id: str, timeout: float = ..., poll: float = ...) -> Report:
        """Poll until the sample is done, needs review or failed."""
        ...

    def cells(self, accession_id: str, needs_review: bool = ...) -> list[CellResult]: ...

    def fields(self, accession_id: str) -> list[SampleFieldInfo]: ...

    def field_overlay(self, accession_id: str, field_sha256: str) -> bytes: ...

    def export(self, accession_id: str, format_name: str) -> str: ...

    def review_queue(self, limit: int = ...) -> list[SampleForReview]: ...

    def relabel(self, accession_id: str, image_sha256: str, label: str, reviewer: str, reason: str, actor: str = ...) -> Report: ...

    def sign_off(
        self, accession_id: str, reviewer: str, comment: str = ..., actor: str = ..., confirm_incomplete: bool = ...
    ) -> Report: ...

    def models(self) -> list[ModelVersionInfo]: ...
