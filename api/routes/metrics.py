"""Prometheus metrics, computed from the database and Redis when scraped (``ServiceMetrics``, one per app)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import MetricsReader
from bloodcell_core.service.ops_metrics import ServiceMetrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics, computed from the database and Redis when scraped (scope: metrics)",
    response_class=Response,
    responses={200: {"content": {ServiceMetrics.content_type: {}}}},
)
def metrics(request: Request, _: MetricsReader) -> Response:
    service_metrics: ServiceMetrics = request.app.state.metrics
    return Response(service_metrics.render(), media_type=ServiceMetrics.content_type)
