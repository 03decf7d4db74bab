"""The report's rules without servers: the differential per 100 leukocytes and the sample flags."""

from __future__ import annotations

import pytest

from bloodcell_core.config import Settings
from bloodcell_core.service.samples import differential_percent, sample_flags

SETTINGS = Settings.from_env()


def test_nucleated_red_cells_and_platelets_do_not_count_towards_the_100():
    counts = {"neutrophil": 60, "lymphocyte": 40, "erythroblast": 10, "platelet": 5, "myeloblast": 0}
    percent, leukocytes = differential_percent(SETTINGS, counts)
    assert leukocytes == 100
    assert percent == {"neutrophil": 60.0, "lymphocyte": 40.0, "erythroblast": 10.0, "platelet": 5.0, "myeloblast": 0.0}
    assert differential_percent(SETTINGS, {"platelet": 3, "neutrophil": 0}) == ({"platelet": 0.0, "neutrophil": 0.0}, 0)


@pytest.mark.parametrize(
    ("counts", "unfamiliar", "expected"),
    [
        ({"neutrophil": 100}, 0, []),
        ({"neutrophil": 95, "myeloblast": 5}, 0, ["blasts"]),  # the count reaches BLOODCELL_BLAST_COUNT
        ({"neutrophil": 94, "ig": 6}, 0, ["immature_cells"]),  # ig + myeloblast over 5 % of leukocytes
        ({"neutrophil": 95, "ig": 5}, 0, []),  # at 5 %: not over
        ({"neutrophil": 90, "ig": 4, "myeloblast": 4}, 0, ["immature_cells"]),
        ({"neutrophil": 100}, 11, ["unfamiliar_images"]),  # over 10 % of classified cells
        ({"neutrophil": 100}, 10, []),
        ({"neutrophil": 2, "myeloblast": 2}, 1, ["blasts", "immature_cells", "unfamiliar_images"]),  # 50 % blasts
    ],
)
def test_flags(counts, unfamiliar, expected):
    n = sum(counts.values())
    assert sample_flags(SETTINGS, counts, n, unfamiliar) == expected


def test_flag_settings_are_checked():
    with pytest.raises(ValueError, match="BLOODCELL_UNFAMILIAR_SHARE"):
        SETTINGS.model_copy(update={"unfamiliar_share": 1.5}).validate()
    with pytest.raises(ValueError, match="BLOODCELL_IMMATURE_PERCENT"):
        SETTINGS.model_copy(update={"immature_percent": -1.0}).validate()
