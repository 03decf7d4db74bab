"""The HTTP API's Python client, for programs on other machines than the database and Redis.

    from bloodcell_core.clients.http import HttpClient
    api = HttpClient("http://bloodcell.lab:8000", token)
    api.submit("S-2026-0001", [("cell1.jpg", data1)], idempotency_key="order-4711")
    api.submit("S-2026-0002", [], fields=[("field1.jpg", field_bytes)])   # whole smear fields
    report = api.wait("S-2026-0001")
    fhir_bundle = api.export("S-2026-0001", "fhir-r4")

It offers the methods of the in-process ``Client`` that the CLI uses, so the CLI can talk to either;
their ``actor`` arguments are ignored here: the API records the token's client as the actor.
"""

from __future__ import annotations

from typing import Any, Sequence

import httpx

from bloodcell_core.clients.waiting import wait_until_classified
from bloodcell_core.service.receipts import Submission
from bloodcell_core.service.results import CellResult, ModelVersionInfo, Report, SampleFieldInfo, SampleForReview


class HttpApiError(RuntimeError):
    def __init__(self, status_code: int, detail: Any) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class HttpClient:
    def __init__(self, base_url: str, token: str, timeout: float = 120) -> None:
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise HttpApiError(response.status_code, detail)
        return response

    def submit(
        self,
        accession_id: str,
        images: list[tuple[str, bytes]],
        actor: str = "",
        idempotency_key: str | None = None,
        fields: Sequence[tuple[str, bytes]] = (),
    ) -> Submission:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        files = [("images", (name, data, "application/octet-stream")) for name, data in images]
        files += [("fields", (name, data, "application/octet-stream")) for name, data in fields]
        body = self._request("POST", "/v1/samples", data={"accession_id": accession_id}, files=files, headers=headers).json()
        return Submission(
            sample_pk=None,
            accession_id=body["sample_id"],
            new_cells=body["new_cells"],
            status=body["status"],
            n_cells=body["n_cells"],
            replayed=body["replayed"],
            new_fields=body["new_fields"],
            n_fields=body["n_fields"],
        )

    def report(self, accession_id: str) -> Report:
        return Report.model_validate(self._request("GET", f"/v1/samples/{accession_id}").json())

    def wait(self, accession_id: str, timeout: float = 600, poll: float = 0.5) -> Report:
        """Poll until the sample reaches done, needs_review or failed."""
        return wait_until_classified(self.report, accession_id, timeout, poll)

    def cells(self, accession_id: str, needs_review: bool = False) -> list[CellResult]:
        rows = self._request("GET", f"/v1/samples/{accession_id}/cells", params={"needs_review": str(needs_review).lower()}).json()
        return [CellResult.model_validate(row) for row in rows]

    def fields(self, accession_id: str) -> list[SampleFieldInfo]:
        return [SampleFieldInfo.model_validate(field) for field in self._request("GET", f"/v1/samples/{accession_id}/fields").json()]

    def field_overlay(self, accession_id: str, field_sha256: str) -> bytes:
        return self._request("GET", f"/v1/samples/{accession_id}/fields/{field_sha256}/overlay").content

    def export(self, accession_id: str, format_name: str) -> str:
        return self._request("GET", f"/v1/samples/{accession_id}/export/{format_name}").text

    def review_queue(self, limit: int = 100) -> list[SampleForReview]:
        return [SampleForReview.model_validate(item) for item in self._request("GET", "/v1/review", params={"limit": limit}).json()]

    def relabel(self, accession_id: str, image_sha256: str, label: str, reviewer: str, reason: str, actor: str = "") -> Report:
        body = {"label": label, "reviewer": reviewer, "reason": reason}
        return Report.model_validate(self._request("POST", f"/v1/samples/{accession_id}/cells/{image_sha256}/label", json=body).json())

    def sign_off(
        self, accession_id: str, reviewer: str, comment: str = "", actor: str = "", confirm_incomplete: bool = False
    ) -> Report:
        body = {"reviewer": reviewer, "comment": comment, "confirm_incomplete": confirm_incomplete}
        return Report.model_validate(self._request("POST", f"/v1/samples/{accession_id}/sign-off", json=body).json())

    def models(self) -> list[ModelVersionInfo]:
        return [ModelVersionInfo.model_validate(v) for v in self._request("GET", "/v1/models").json()["versions"]]
