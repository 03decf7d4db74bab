"""Review: the queue of samples and cells waiting for a technologist, relabelling a cell, and sign-off."""

from __future__ import annotations

from fastapi import APIRouter, Query

from api import schemas
from api.deps import Reviewer
from bloodcell_core.edge import ClientDep
from bloodcell_core.service.results import Report, SampleForReview

router = APIRouter(tags=["review"])


@router.get(
    "/v1/review", response_model=list[schemas.SampleForReviewPublic], summary="Samples and cells waiting for review (scope: review)"
)
def review_queue(_: Reviewer, client: ClientDep, limit: int = Query(100, ge=1, le=1000)) -> list[SampleForReview]:
    return client.review_queue(limit)


@router.post(
    "/v1/samples/{sample_id}/cells/{image_sha256}/label",
    response_model=schemas.ReportPublic,
    summary="Reclassify a cell; audited, report recomputed (scope: review)",
)
def relabel(sample_id: str, image_sha256: str, body: schemas.Relabel, caller: Reviewer, client: ClientDep) -> Report:
    return client.relabel(sample_id, image_sha256, body.label, body.reviewer, body.reason, f"api:{caller.name}")


@router.post(
    "/v1/samples/{sample_id}/sign-off",
    response_model=schemas.ReportPublic,
    summary="Sign off for a console user: the report becomes final (amended: a corrected one) (scope: review)",
    description="`reviewer` names the console user the sign-off is made for; their role decides whether they may "
    "sign off a sample with a blast flag (docs/sign-off.md).",
)
def sign_off(sample_id: str, body: schemas.SignOffCreate, caller: Reviewer, client: ClientDep) -> Report:
    return client.sign_off(sample_id, body.reviewer, body.comment, f"api:{caller.name}", body.confirm_incomplete)
