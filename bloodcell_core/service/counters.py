"""Running totals behind the Prometheus counters, added to in the transaction of the event they count, so
a scrape reads a few rows whatever the history (service/ops_metrics.py) and the totals only ever grow."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from sqlalchemy.orm import Session

from bloodcell_core.ml.serving import UNFAMILIAR_REASON, review_reasons
from bloodcell_core.service.db import add_to_counts
from bloodcell_core.service.tables import CellCount, Prediction, RelabelCount


def count_reported_cells(
    session: Session, version_id: int, predictions: Iterable[Prediction], review_above: float, unfamiliar_above: float | None
) -> None:
    """Add a report's cells to the totals of its model version, by the model's class: classified, sent to
    review by the model's rule (before any technologist looked), and unlike the training images."""
    classified, sent, unfamiliar = Counter[str](), Counter[str](), Counter[str]()
    for prediction in predictions:
        reasons = review_reasons(prediction.confidence, review_above, prediction.ood_score, unfamiliar_above)
        classified[prediction.label] += 1
        sent[prediction.label] += bool(reasons)
        unfamiliar[prediction.label] += UNFAMILIAR_REASON in reasons
    for label in sorted(classified):  # one order for every worker: concurrent upserts never deadlock
        add_to_counts(
            session,
            CellCount,
            {"model_version_id": version_id, "label": label},
            {"n_classified": classified[label], "n_sent_to_review": sent[label], "n_unfamiliar": unfamiliar[label]},
        )


def count_relabel(session: Session, version_id: int, from_label: str | None, to_label: str) -> None:
    """Add one technologist's relabel to the totals of the report's model version."""
    add_to_counts(
        session, RelabelCount, {"model_version_id": version_id, "from_label": from_label or "none", "to_label": to_label}, {"n": 1}
    )
