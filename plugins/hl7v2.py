"""HL7 v2.5 ORU^R01 exporter: one OBR for the differential panel, one numeric OBX per cell type.

Built with ``hl7apy`` at strict validation. Result status: P (preliminary), F (final after sign-off),
C (a corrected report, signed off again after a change). The model version is the observation method (OBX-17)
and the equipment instance (OBX-18).
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from bloodcell_core import hookimpl, loinc
from bloodcell_core.plugin_types import Exporter, ReportDocument

RESULT_STATUS = {"preliminary": "P", "final": "F", "amended": "C"}
SEGMENT_TERMINATOR = "\r"


def escape(text: str) -> str:
    """HL7 v2 escape sequences for the delimiters; line breaks become spaces."""
    replacements = {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}
    return "".join(replacements.get(ch, ch) for ch in text)


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def render(document: ReportDocument) -> str:
    status = RESULT_STATUS[document.report_status]
    issued = _timestamp(document.issued)
    message = Message("ORU_R01", version="2.5", validation_level=VALIDATION_LEVEL.STRICT)
    message.msh.msh_3 = "BLOODCELL"
    message.msh.msh_7 = issued
    message.msh.msh_9 = "ORU^R01^ORU_R01"
    message.msh.msh_10 = uuid.uuid5(uuid.NAMESPACE_URL, f"{document.accession_id}|{issued}|{status}").hex[:20]
    message.msh.msh_11 = "P"
    order = message.add_group("ORU_R01_PATIENT_RESULT").add_group("ORU_R01_ORDER_OBSERVATION")
    order.obr.obr_1 = "1"
    order.obr.obr_2 = escape(document.accession_id)
    order.obr.obr_3 = f"{escape(document.accession_id)}^BLOODCELL"
    order.obr.obr_4 = f"{loinc.DIFFERENTIAL_PANEL.code}^{loinc.DIFFERENTIAL_PANEL.display}^LN"
    order.obr.obr_22 = issued
    order.obr.obr_24 = "HM"
    order.obr.obr_25 = status
    notes = [document.conclusion] + [f"FLAG {flag}: {text}" for flag, text in zip(document.flags, document.warnings)]
    if document.signed_off_by:  # the person who approved this very version, never an earlier one's
        role = f" ({document.signed_off_role})" if document.signed_off_role else ""
        at = f" at {document.signed_off_at.isoformat()}" if document.signed_off_at is not None else ""
        comment = f": {document.sign_off_comment}" if document.sign_off_comment else ""
        notes.append(f"Signed off by {document.signed_off_by}{role}{at}{comment}")
    for k, text in enumerate(notes, start=1):
        note = order.add_segment("NTE")
        note.nte_1 = str(k)
        note.nte_3 = escape(text)
    for k, row in enumerate(document.differential, start=1):
        local = f"{escape(row.cell_type)}^{escape(row.cell_type)}^L"
        code = loinc.differential_code(row.cell_type)
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(k)
        obx.obx_2 = "NM"
        obx.obx_3 = f"{code.code}^{code.display}^LN^{local}" if code else local
        obx.obx_5 = f"{row.percent:g}"
        # leukocytes as % of the 100; nucleated red cells and platelets apart, counted per 100 leukocytes
        obx.obx_6 = "%^percent^UCUM" if row.leukocyte else "/100{WBC}^per 100 leukocytes^UCUM"
        if row.abnormal:
            obx.obx_8 = "A"
        obx.obx_11 = status
        obx.obx_14 = issued
        obx.obx_17 = f"bloodcell^image classification {escape(document.model_version)}^L"
        obx.obx_18 = escape(document.model_version)
    message.validate()
    return message.to_er7() + SEGMENT_TERMINATOR


@hookimpl
def register_exporters(register) -> None:
    register(
        Exporter(
            name="hl7v2",
            description="HL7 v2.5 ORU^R01: OBR for LOINC 69738-3, one OBX (NM, %) per cell type, NTE conclusion and flags",
            media_type="application/hl7-v2",
            render=render,
        )
    )
