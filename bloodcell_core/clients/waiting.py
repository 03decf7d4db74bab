"""Waiting for a sample's report: the same polling for the in-process and the HTTP client."""

from __future__ import annotations

import time
from typing import Callable

from bloodcell_core.service.results import Report
from bloodcell_core.service.states import FINAL_SAMPLE_STATUSES


def wait_until_classified(read_report: Callable[[str], Report], accession_id: str, timeout: float, poll: float) -> Report:
    """Poll ``read_report`` until the sample is done, needs_review or failed (the in-process and HTTP clients)."""
    deadline = time.monotonic() + timeout
    while True:
        report = read_report(accession_id)
        if report.status in FINAL_SAMPLE_STATUSES:
            return report
        if time.monotonic() > deadline:
            raise TimeoutError(f"sample {accession_id!r} still {report.status} after {timeout:.0f} s")
        time.sleep(poll)
