"""Exporter plugins and webhook signatures, without servers: awkward strings, missing LOINC codes, replays."""

from __future__ import annotations

import time
from datetime import datetime, timezone

from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from bloodcell_core.plugin_manager import exporters
from bloodcell_core.plugin_types import DifferentialRow, ReportDocument
from bloodcell_core.service import webhooks

DOCUMENT = ReportDocument(
    accession_id="S-2026:0001.a_b",
    accession_system="urn:oid:1.2.3.4",
    report_status="amended",
    issued=datetime(2026, 11, 28, 9, 30, tzinfo=timezone.utc),
    model_version="compact_cnn-0123456789ab",
    model_plugin="compact_cnn",
    differential=(DifferentialRow("lymphocyte", 60, 60.0), DifferentialRow("platelet", 40, 40.0, leukocyte=False)),
    n_classified=100,
    n_failed=1,
    n_reviewed=2,
    n_needs_review=0,
    blast_class="myeloblast",
    blast_flag=False,
    conclusion="100 cells classified; a|b^c&d~e\\f. no blast flag.",
    signed_off_by="O'Brien^Jr|&~\\",
    signed_off_at=datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc),
)


def test_built_in_exporters_are_registered_as_plugins():
    assert {"fhir-r4", "hl7v2"} <= set(exporters())


def test_fhir_bundle_round_trips_and_a_class_without_loinc_keeps_its_own_code():
    bundle = Bundle.model_validate_json(exporters()["fhir-r4"].render(DOCUMENT))
    report, lymphocyte, platelet, device = (entry.resource for entry in bundle.entry)
    assert report.status == lymphocyte.status == "amended" and report.resultsInterpreter[0].display == DOCUMENT.signed_off_by
    assert [c.code for c in lymphocyte.code.coding] == ["26478-8", "lymphocyte"]
    assert [c.system for c in platelet.code.coding] == ["urn:bloodcell:cell-type"]
    # leukocytes in % of the 100; a platelet is not a leukocyte: counted apart, per 100 leukocytes
    assert lymphocyte.valueQuantity.code == "%" and platelet.valueQuantity.code == "/100{WBC}"
    assert lymphocyte.device.reference == bundle.entry[3].fullUrl and device.version[0].value == DOCUMENT.model_version
    assert exporters()["fhir-r4"].render(DOCUMENT) == exporters()["fhir-r4"].render(DOCUMENT)  # stable ids


def test_hl7_escapes_delimiters_and_marks_a_correction():
    text = exporters()["hl7v2"].render(DOCUMENT)
    message = parse_message(text.strip(), validation_level=VALIDATION_LEVEL.STRICT)
    order = message.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.value == "C" and len(order.oru_r01_observation) == 2
    assert "O'Brien\\S\\Jr\\F\\\\T\\\\R\\\\E\\" in text and "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f" in text
    assert [obs.obx.obx_3.obx_3_1.value for obs in order.oru_r01_observation] == ["26478-8", "platelet"]
    assert [obs.obx.obx_6.obx_6_1.value for obs in order.oru_r01_observation] == ["%", "/100{WBC}"]


def test_webhook_signature_rejects_tampering_replay_and_a_wrong_secret():
    body, now = b'{"event":"sample.classified"}', str(int(time.time()))
    signature = webhooks.sign("secret", now, body)
    assert webhooks.verify_signature("secret", now, body, signature)
    assert not webhooks.verify_signature("secret", now, body + b" ", signature)
    assert not webhooks.verify_signature("other", now, body, signature)
    old = str(int(time.time()) - 3600)
    assert not webhooks.verify_signature("secret", old, body, webhooks.sign("secret", old, body))
    assert not webhooks.verify_signature("secret", "not-a-time", body, signature)


FLAGGED = DOCUMENT.__class__(
    **{
        **DOCUMENT.__dict__,
        "differential": (
            DifferentialRow("ig", 30, 30.0, abnormal=True),
            DifferentialRow("lymphocyte", 60, 60.0),
            DifferentialRow("myeloblast", 10, 10.0, abnormal=True),
        ),
        "blast_flag": True,
        "immature_classes": ("ig", "myeloblast"),
        "n_unfamiliar": 40,
        "flags": ("blasts", "immature_cells", "unfamiliar_images"),
        "warnings": ("blast cells found", "immature cells above the share", "cells unlike the training images"),
    }
)


def test_fhir_carries_every_flag_as_conclusion_code_interpretation_and_note():
    bundle = Bundle.model_validate_json(exporters()["fhir-r4"].render(FLAGGED))
    report, ig, lymphocyte, myeloblast, _ = (entry.resource for entry in bundle.entry)
    assert [c.coding[0].code for c in report.conclusionCode] == list(FLAGGED.flags)
    assert ig.interpretation[0].coding[0].code == myeloblast.interpretation[0].coding[0].code == "A"
    assert lymphocyte.interpretation is None
    assert all(any("unlike the images the model was trained on" in n.text for n in o.note) for o in (ig, lymphocyte, myeloblast))


def test_hl7_carries_every_flag_as_abnormal_flag_and_nte():
    text = exporters()["hl7v2"].render(FLAGGED)
    order = parse_message(text.strip(), validation_level=VALIDATION_LEVEL.STRICT).oru_r01_patient_result.oru_r01_order_observation
    assert [obs.obx.obx_8.value for obs in order.oru_r01_observation] == ["A", "", "A"]
    notes = [nte.nte_3.value for nte in order.nte]
    assert any(n.startswith("FLAG unfamiliar_images") for n in notes) and any(n.startswith("FLAG immature_cells") for n in notes)
