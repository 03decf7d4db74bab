"""What a submission returns to its producer; light enough for the HTTP client to import."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(kw_only=True)  # built by keyword: eight fields, several of them counts
class Submission:
    sample_pk: int | None  # None where the submission went through the HTTP API
    accession_id: str
    new_cells: int  # 0 when the same sample and images were submitted before
    status: str
    n_cells: int = 0
    replayed: bool = False  # an Idempotency-Key seen before: the earlier submission's sample
    new_fields: int = 0  # whole fields queued for locating by this submission
    n_fields: int = 0
