"""A sample's report in an export format (FHIR R4, HL7 v2 or a plugin's), and the formats there are."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api import schemas
from api.deps import Reader
from bloodcell_core.edge import ClientDep
from bloodcell_core.plugin_manager import exporters

router = APIRouter(tags=["exports"])


@router.get(
    "/v1/samples/{sample_id}/export/{format_name}",
    summary="The report as FHIR R4 (fhir-r4), HL7 v2 ORU^R01 (hl7v2) or a plugin's format (scope: read)",
)
def export(sample_id: str, format_name: str, _: Reader, client: ClientDep) -> Response:
    media_type, body = client.export_document(sample_id, format_name)
    return Response(body, media_type=media_type)


@router.get("/v1/exporters", response_model=list[schemas.Exporter], summary="Export formats (scope: read)")
def list_exporters(_: Reader) -> list[dict[str, str]]:
    return [{"name": e.name, "media_type": e.media_type, "description": e.description} for e in exporters().values()]
