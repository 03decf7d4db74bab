"""LOINC codes for the leukocyte differential, by bloodcell class name.

Method-less codes ("X/100 leukocytes in Blood", property NFr, scale Qn, unit %), since an image
classifier is neither the analyser's automated count nor a manual count. Checked on 2026-11-28
against LOINC pages (loinc.org 24318-8 and 58413-6, LOINC mirrors of 26485-3 and 71695-1) and the
CIBMTR FHIR IG value set of panel 69738-3; ``verified`` says how firmly. LOINC 2.79 renamed these
terms "X/Leukocytes in Blood"; the codes did not change. A class without an entry (platelet: not a
leukocyte) is exported with bloodcell's own code only.
"""

from __future__ import annotations

from dataclasses import dataclass

SYSTEM = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"


@dataclass(frozen=True)
class LoincCode:
    code: str
    display: str
    verified: str  # "loinc.org", "value set" (member of 69738-3) or "one source"


DIFFERENTIAL_PANEL = LoincCode("69738-3", "Differential panel, method unspecified - Blood", "value set")

DIFFERENTIAL: dict[str, LoincCode] = {
    "basophil": LoincCode("30180-4", "Basophils/100 leukocytes in Blood", "value set"),
    "eosinophil": LoincCode("26450-7", "Eosinophils/100 leukocytes in Blood", "value set"),
    "lymphocyte": LoincCode("26478-8", "Lymphocytes/100 leukocytes in Blood", "value set"),
    "monocyte": LoincCode("26485-3", "Monocytes/100 leukocytes in Blood", "loinc.org"),
    "neutrophil": LoincCode("26511-6", "Neutrophils/100 leukocytes in Blood", "value set"),
    "seg_neutrophil": LoincCode("26505-8", "Neutrophils.segmented/100 leukocytes in Blood", "value set"),
    "band_neutrophil": LoincCode("26508-2", "Neutrophils.band form/100 leukocytes in Blood", "value set"),
    "myeloblast": LoincCode("30445-1", "Myeloblasts/100 leukocytes in Blood", "value set"),
    "blast": LoincCode("26446-5", "Blasts/100 leukocytes in Blood", "loinc.org"),
    "ig": LoincCode("38518-7", "Immature granulocytes/100 leukocytes in Blood", "one source"),
    "erythroblast": LoincCode("19048-8", "Nucleated erythrocytes/100 leukocytes in Blood", "loinc.org"),
}


def differential_code(cell_type: str) -> LoincCode | None:
    return DIFFERENTIAL.get(cell_type)
