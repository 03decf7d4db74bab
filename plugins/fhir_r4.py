"""FHIR R4 exporter: a collection Bundle of one DiagnosticReport, one Observation per cell type and the Device.

Built and validated with ``fhir.resources`` (R4B models: DiagnosticReport, Observation and Device have
the same elements in R4 4.0.1 and R4B 4.3.0). Resource ids are urn:uuid values derived from the
accession id, so exporting the same report twice gives the same references.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from bloodcell_core import hookimpl, loinc
from bloodcell_core.plugin_types import Exporter, ReportDocument

CELL_TYPE_SYSTEM = "urn:bloodcell:cell-type"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FLAG_SYSTEM = "urn:bloodcell:flag"  # blasts, immature_cells, unfamiliar_images


def _urn(document: ReportDocument, part: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"{document.accession_system}|{document.accession_id}|{part}").urn


def _observation(document: ReportDocument, row, device_urn: str) -> dict[str, Any]:
    coding = [{"system": CELL_TYPE_SYSTEM, "code": row.cell_type, "display": row.cell_type}]
    code = loinc.differential_code(row.cell_type)
    if code is not None:
        coding.insert(0, {"system": loinc.SYSTEM, "code": code.code, "display": code.display})
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "status": document.report_status,
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": coding, "text": f"{row.cell_type} / 100 leukocytes" + ("" if row.leukocyte else " (not a leukocyte)")},
        "issued": document.issued.isoformat(),
        # leukocytes as % of the 100; nucleated red cells and platelets apart, counted per 100 leukocytes
        "valueQuantity": (
            {"value": row.percent, "unit": "%", "system": loinc.UCUM, "code": "%"}
            if row.leukocyte
            else {"value": row.percent, "unit": "/100 leukocytes", "system": loinc.UCUM, "code": "/100{WBC}"}
        ),
        "method": {"text": f"image classification, model {document.model_version}"},
        "device": {"reference": device_urn},
        "note": [
            {
                "text": f"{row.count} cells; {document.n_leukocytes} leukocytes of {document.n_classified} classified "
                "cells (nucleated red cells and platelets are not leukocytes)"
            }
        ],
    }
    if row.abnormal:
        observation["interpretation"] = [{"coding": [{"system": INTERPRETATION, "code": "A", "display": "Abnormal"}]}]
    if "unfamiliar_images" in document.flags:  # the count itself may not hold: say so beside every value
        observation["note"].append(
            {
                "text": f"WARNING: {document.n_unfamiliar} of {document.n_classified} cells are "
                "unlike the images the model was trained on; this value may not hold"
            }
        )
    return observation


def render(document: ReportDocument) -> str:
    device_urn = _urn(document, "device")
    observations = [(_urn(document, f"obs-{row.cell_type}"), _observation(document, row, device_urn)) for row in document.differential]
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": document.accession_system, "value": document.accession_id}],
        "status": document.report_status,
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "HM", "display": "Hematology"}]}],
        "code": {
            "coding": [{"system": loinc.SYSTEM, "code": loinc.DIFFERENTIAL_PANEL.code, "display": loinc.DIFFERENTIAL_PANEL.display}],
            "text": "Leukocyte differential by image classification",
        },
        "issued": document.issued.isoformat(),
        "result": [{"reference": urn} for urn, _ in observations],
        "conclusion": document.conclusion,
    }
    if document.flags:
        report["conclusionCode"] = [
            {"coding": [{"system": FLAG_SYSTEM, "code": flag, "display": text}], "text": text}
            for flag, text in zip(document.flags, document.warnings)
        ]
    if document.signed_off_by:  # the person who approved this very version, never an earlier one's
        role = f" ({document.signed_off_role})" if document.signed_off_role else ""
        report["resultsInterpreter"] = [{"display": f"{document.signed_off_by}{role}"}]
        if document.sign_off_comment:  # R4's DiagnosticReport has no note: the comment joins the conclusion
            report["conclusion"] += f" Sign-off comment by {document.signed_off_by}: {document.sign_off_comment}"
    device = {
        "resourceType": "Device",
        "deviceName": [{"name": f"bloodcell {document.model_plugin}", "type": "model-name"}],
        "version": [{"value": document.model_version}],
    }
    entries = [(_urn(document, "report"), report), *observations, (device_urn, device)]
    bundle = Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": document.issued.isoformat(),
            "identifier": {"system": document.accession_system, "value": f"{document.accession_id}-{document.report_status}"},
            "entry": [{"fullUrl": urn, "resource": resource} for urn, resource in entries],
        }
    )
    return bundle.model_dump_json(indent=2)


@hookimpl
def register_exporters(register) -> None:
    register(
        Exporter(
            name="fhir-r4",
            description="FHIR R4 Bundle: DiagnosticReport (LOINC 69738-3) + one Observation per cell type (% , UCUM) + Device",
            media_type="application/fhir+json",
            render=render,
        )
    )
