"""Local verification on a real (SQLite) database of synthetic reviewed samples built from ../shared/data.

Cells of known class from the shipped model's test split are submitted as samples (normal ones, some with
blasts, one with immature granulocytes), classified in process by the shipped model, reviewed by a technologist
(every cell the model got wrong or sent to review is relabelled to its class, and two labels are changed on
purpose) and signed off through the service. The dossier's figures are recomputed here from those labels and
the model's calls.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from helpers import DEFAULT_MODEL, KAGGLE5_MODEL, run_cli, unseen_images
from servers import settings_for

from bloodcell_core.clients.local import Client
from bloodcell_core.service import db, review, users, verification
from bloodcell_core.service.classification import classify_sample
from bloodcell_core.service.errors import Conflict, NotFound, ServiceError
from bloodcell_core.service.promotion import promote
from bloodcell_core.service.states import ModelStatus
from bloodcell_core.service.submission import submit_sample
from bloodcell_core.service.versions import ensure_production_model, load_classifier, register_model_version

pytestmark = pytest.mark.real_data

NORMAL = {"neutrophil": 11, "lymphocyte": 6, "monocyte": 2, "eosinophil": 1}
BLASTS = {"myeloblast": 6, "neutrophil": 8, "lymphocyte": 4, "ig": 2}
IMMATURE = {"ig": 3, "neutrophil": 10, "lymphocyte": 5, "monocyte": 2}
FEW_BLASTS = {"myeloblast": 2, "neutrophil": 12, "lymphocyte": 6}  # under the rule in force (5 cells or 20 %)
SAMPLES = {
    **{f"N-{i:02}": NORMAL for i in range(6)},
    **{f"B-{i:02}": BLASTS for i in range(3)},
    "I-00": IMMATURE,
    "L-00": FEW_BLASTS,
}
# The technologist's own call where it differs from the folder's class (sample, class, which one, label)
CHANGED = [("N-00", "lymphocyte", 0, "monocyte"), ("B-01", "myeloblast", 0, "lymphocyte")]
PASSWORD = "correct horse battery"
Z = 1.959963984540054


def laboratory(env: dict[str, str]):
    """A migrated database with the shipped model in production: its settings, and the model per version, loaded once."""
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    settings = settings_for(env)
    ensure_production_model(settings)
    with db.session_scope(settings.database_url) as session:
        for name, role in (("anna", "technologist"), ("sue", "supervisor")):  # a sign-off names a console user
            users.create_user(session, name=name, role=role, password=PASSWORD, actor="test")
    classifiers: dict = {}

    def classifier_for(version):
        if version.version not in classifiers:
            classifiers[version.version] = load_classifier(settings, version)
        return classifiers[version.version]

    return settings, classifier_for


def reviewed_sample(settings, accession_id: str, cells: list[tuple[str, Path]], classifier_for, sign: bool = True):
    """Submit CELLS (class, image), classify them, relabel every cell the model got wrong or sent to review (and the
    changes on purpose in CHANGED), sign the sample off; returns the model's labels and the final ones by sha256."""
    truth, images = {}, []
    for label, path in cells:
        data = path.read_bytes()
        images.append((path.name, data))
        truth[hashlib.sha256(data).hexdigest()] = label
    for sample, label, which, new in CHANGED:
        if sample == accession_id:
            truth[[sha for sha, t in truth.items() if t == label][which]] = new
    submission = submit_sample(settings, accession_id, images, "test")
    classify_sample(settings, submission.sample_pk, classifier_for, "test-worker")
    model_label = {}
    with db.session_scope(settings.database_url) as session:
        for cell in review.get_cells(session, accession_id=accession_id):
            sha = cell.image_sha256
            model_label[sha] = cell.model_label
            if cell.model_label != truth[sha] or cell.needs_review:
                relabel(session, settings, accession_id, sha, truth[sha], "checked on the smear")
        if sign:
            # 20-cell samples: fewer leukocytes than BLOODCELL_SIGNOFF_MIN_LEUKOCYTES, confirmed as the rule asks
            review.sign_off(
                session,
                settings=settings,
                accession_id=accession_id,
                reviewer="sue",
                comment=f"verified {accession_id}",
                actor="user:sue",
                confirm_incomplete=True,
            )
    return model_label, truth


def relabel(session, settings, accession_id: str, sha256: str, label: str, reason: str) -> None:
    """Anna's label for one cell, as the console records it."""
    review.relabel_cell(
        session,
        settings=settings,
        accession_id=accession_id,
        image_sha256=sha256,
        label=label,
        reviewer="anna",
        reason=reason,
        actor="user:anna",
    )


def relabel_after_sign_off(settings, accession_id: str) -> None:
    with db.session_scope(settings.database_url) as session:
        first = review.get_cells(session, accession_id=accession_id)[0].image_sha256
        relabel(session, settings, accession_id, first, "basophil", "second look after sign-off")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Signed-off samples, one unsigned sample and one relabelled after its sign-off; the model's calls and the
    reference labels by (sample, image sha256)."""
    home = tmp_path_factory.mktemp("verification")
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_DATABASE_URL": f"sqlite:///{home / 'bloodcell.db'}",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
    }
    settings, classifier_for = laboratory(env)
    wanted = Counter()
    for composition in [*SAMPLES.values(), NORMAL, NORMAL]:
        wanted.update(composition)
    pool = {label: unseen_images(label, k) for label, k in wanted.items()}
    model_label, reference = {}, {}
    for accession_id, composition in [*SAMPLES.items(), ("U-00", NORMAL), ("A-00", NORMAL)]:
        cells = [(label, pool[label].pop()) for label, k in composition.items() for _ in range(k)]
        calls, truth = reviewed_sample(settings, accession_id, cells, classifier_for, sign=accession_id != "U-00")
        model_label |= {(accession_id, sha): label for sha, label in calls.items()}
        if accession_id in SAMPLES:
            reference |= {(accession_id, sha): label for sha, label in truth.items()}
    relabel_after_sign_off(settings, "A-00")
    return {
        "env": env,
        "settings": settings,
        "home": home,
        "model": model_label,
        "reference": reference,
        "classifier_for": classifier_for,
    }


def test_signed_off_samples_on_postgresql(postgres_server, tmp_path: Path):
    """The one rule of what counts as signed off, and the sign-off date window, on the production database."""
    env = {
        "BLOODCELL_HOME": str(tmp_path),
        "BLOODCELL_DATABASE_URL": postgres_server.create_database("bloodcell_verification"),
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(tmp_path / "models"),
    }
    settings, classifier_for = laboratory(env)
    images = [("neutrophil", path) for path in unseen_images("neutrophil", 9)]
    for accession_id, cells, sign in (("P-1", images[:3], True), ("P-2", images[3:6], True), ("P-3", images[6:], False)):
        reviewed_sample(settings, accession_id, cells, classifier_for, sign)
    relabel_after_sign_off(settings, "P-2")
    today = datetime.now(timezone.utc).date()
    with db.session_scope(settings.database_url) as session:
        assert [s.accession_id for s in verification.signed_off_samples(session)] == ["P-1"]
        assert [s.accession_id for s in verification.signed_off_samples(session, today, today)] == ["P-1"]
        assert verification.signed_off_samples(session, today + timedelta(days=1)) == []
        assert verification.signed_off_samples(session, None, today - timedelta(days=1)) == []
    dossier = verification.build_dossier(settings)
    assert [s["sample_id"] for s in dossier["samples"]] == ["P-1"] and dossier["models"][0]["conclusion"] == "no conclusion"


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre, half = p + Z * Z / (2 * n), Z * np.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return (centre - half) / (1 + Z * Z / n), (centre + half) / (1 + Z * Z / n)


def percent(counts: Counter, label: str) -> float:
    leukocytes = sum(k for c, k in counts.items() if c not in ("erythroblast", "platelet"))
    return round(100.0 * counts[label] / leukocytes, 2)


def test_the_dossier_figures_equal_the_ones_computed_from_the_labels(lab, tmp_path: Path):
    settings, model, reference = lab["settings"], lab["model"], lab["reference"]
    criteria = verification.read_criteria(None) | {"min_samples": 10, "min_cells": 150, "allowable_difference": {"neutrophil": 8}}
    dossier = verification.make_dossier(settings, tmp_path, "cli:test", criteria=criteria, command="bloodcell verify --out X")
    assert [s["sample_id"] for s in dossier["samples"]] == list(SAMPLES)  # neither the unsigned nor the changed one
    assert [s["signed_off_by"] for s in dossier["samples"]] == ["sue"] * len(SAMPLES)
    assert dossier["samples"][0]["sign_off"]["comment"] == "verified N-00"
    (scored,) = dossier["models"]
    assert scored["role"] == "production" and len(scored["provenance"]["sha256"]) == 64
    assert scored["provenance"]["preprocessing"]["steps"] == ["locate_cell", "reinhard"]

    cells = scored["cell_level"]
    n = len(reference)
    correct = sum(model[key] == label for key, label in reference.items())
    assert cells["n_cells"] == n == 20 * len(SAMPLES)
    assert (cells["agreement"]["k"], cells["agreement"]["n"]) == (correct, n)
    low, high = wilson(correct, n)
    assert cells["agreement"]["low"] == pytest.approx(low, abs=1e-4) and cells["agreement"]["high"] == pytest.approx(high, abs=1e-4)
    blasts = scored["cell_level"]["per_class"]["myeloblast"]
    tp = sum(label == "myeloblast" and model[key] == "myeloblast" for key, label in reference.items())
    fn = sum(label == "myeloblast" and model[key] != "myeloblast" for key, label in reference.items())
    fp = sum(label != "myeloblast" and model[key] == "myeloblast" for key, label in reference.items())
    assert (blasts["tp"], blasts["fn"], blasts["fp"], blasts["tn"]) == (tp, fn, fp, n - tp - fn - fp)
    classes = cells["classes"]
    i, j = classes.index("lymphocyte"), classes.index("monocyte")
    assert cells["confusion_matrix"][j][i] == sum(label == "monocyte" and model[k] == "lymphocyte" for k, label in reference.items())
    assert sum(map(sum, cells["confusion_matrix"])) == n

    # per sample: the neutrophil percentage, model against technologist
    model_pct, verified_pct = [], []
    for accession_id in SAMPLES:
        keys = [k for k in reference if k[0] == accession_id]
        model_pct.append(percent(Counter(model[k] for k in keys), "neutrophil"))
        verified_pct.append(percent(Counter(reference[k] for k in keys), "neutrophil"))
    neutrophils = scored["sample_level"]["neutrophil"]
    d = np.array(model_pct) - np.array(verified_pct)
    assert neutrophils["pairs"] == [[v, m] for v, m in zip(verified_pct, model_pct)]
    assert neutrophils["bland_altman"]["bias"] == pytest.approx(d.mean(), abs=1e-4)
    assert neutrophils["bland_altman"]["upper_limit"] == pytest.approx(d.mean() + Z * d.std(ddof=1), abs=1e-3)
    assert [o["sample_id"] for o in neutrophils["outside_allowable"]] == [s for s, x in zip(SAMPLES, d) if abs(x) > 8]

    # flags per sample: truly blast-positive when the technologist's count reaches the rule (5 blast cells)
    truth = {s: sum(reference[k] == "myeloblast" for k in reference if k[0] == s) >= 5 for s in SAMPLES}
    calls = {s: Counter(model[k] for k in reference if k[0] == s) for s in SAMPLES}
    called = {s: calls[s]["myeloblast"] >= 5 or percent(calls[s], "myeloblast") >= 20 for s in SAMPLES}
    flag = scored["flags"]["blasts"]
    assert (flag["tp"], flag["fp"], flag["fn"], flag["tn"]) == (
        sum(truth[s] and called[s] for s in SAMPLES),
        sum(called[s] and not truth[s] for s in SAMPLES),
        sum(truth[s] and not called[s] for s in SAMPLES),
        sum(not truth[s] and not called[s] for s in SAMPLES),
    )
    assert sum(truth.values()) == 3  # B-01 keeps 5 blasts after the technologist's change
    sweep = scored["flags"]["sweep"]
    in_force = next(row for row in sweep if row["in_force"])
    assert in_force["blast_count"] == 5 and in_force["sensitivity"] == flag["sensitivity"]["value"]
    sensitivities = [row["sensitivity"] for row in sweep]
    specificities = [row["specificity"] for row in sweep]
    assert sensitivities == sorted(sensitivities, reverse=True) and specificities == sorted(specificities)  # stricter: fewer flags
    for row in sweep:  # what each candidate count would cost, recounted from the model's calls
        k = row["blast_count"]
        flags = {s: calls[s]["myeloblast"] >= k or percent(calls[s], "myeloblast") >= 20 for s in SAMPLES}
        assert row["extra_reviews"] == sum(flags[s] and not truth[s] for s in SAMPLES)
        assert row["missed"] == sum(truth[s] and not flags[s] for s in SAMPLES)
    assert [row["blast_count"] for row in sweep] == [1, 2, 3, 5, 8, 10, 15]
    assert sweep[0]["extra_reviews"] >= 1  # one blast cell flags the sample with two: a looser rule costs reviews

    met = {row["criterion"]: row["met"] for row in scored["criteria"]}
    assert met["samples"] and met["cells"]
    assert scored["conclusion"] in ("accepted", "not accepted")
    assert scored["conclusion"] == ("accepted" if all(v is not False for v in met.values()) else "not accepted")
    assert {p.name for p in tmp_path.iterdir()} >= {"dossier.json", "dossier.html", "dossier.pdf"}
    assert (tmp_path / "dossier.pdf").read_bytes().startswith(b"%PDF")
    assert "Passing-Bablok" in (tmp_path / "dossier.html").read_text()
    assert json.loads((tmp_path / "dossier.json").read_text()) == json.loads(json.dumps(dossier))


def test_too_few_samples_give_no_conclusion(lab, tmp_path: Path):
    dossier = verification.build_dossier(lab["settings"], accession_ids=["N-00", "N-01", "B-00"])
    (scored,) = dossier["models"]
    assert scored["conclusion"] == "no conclusion"
    assert "too few samples: 3, the criteria ask >= 20" in scored["conclusion_text"]
    today = datetime.now(timezone.utc).date()  # sign-off dates are UTC days, both ends included
    assert len(verification.build_dossier(lab["settings"], day_from=today, day_to=today)["samples"]) == len(SAMPLES)


def test_bad_input_gives_clear_messages(lab, tmp_path: Path):
    settings = lab["settings"]
    tomorrow = date.today() + timedelta(days=1)
    with pytest.raises(Conflict, match="no signed-off samples signed off between"):
        verification.build_dossier(settings, day_from=tomorrow)
    with pytest.raises(ServiceError, match="is after --to"):
        verification.build_dossier(settings, day_from=tomorrow, day_to=date.today())
    with pytest.raises(NotFound, match="unknown model version 'no-such-version'"):
        verification.build_dossier(settings, model="no-such-version")
    with pytest.raises(NotFound, match="no sample 'X-99'"):
        verification.build_dossier(settings, accession_ids=["N-00", "X-99"])
    with pytest.raises(Conflict, match="'U-00' is not signed off"):
        verification.build_dossier(settings, accession_ids=["U-00"])
    bad = tmp_path / "criteria.json"
    bad.write_text('{"min_sample": 3}')
    with pytest.raises(ServiceError, match="unknown keys \\['min_sample'\\]"):
        verification.read_criteria(bad)
    with db.session_scope(settings.database_url) as session:
        candidate = register_model_version(session, artifact_dir=KAGGLE5_MODEL, status=ModelStatus.CANDIDATE, actor="test").version
    cells = 20 * len(SAMPLES)
    with pytest.raises(Conflict, match=f"model {candidate} has no predictions on {cells} of the {cells} verified cells"):
        verification.build_dossier(settings, model=candidate)
    empty = {**lab["env"], "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"}
    db.upgrade(empty["BLOODCELL_DATABASE_URL"])
    ensure_production_model(settings_for(empty))
    result = run_cli("verify", "--out", str(tmp_path / "none"), env=empty, check=False)
    assert result.returncode == 1 and "no signed-off samples: the dossier needs samples" in result.stderr
    result = run_cli("verify", "--from", "2026-05-02", "--to", "2026-05-01", "--out", str(tmp_path / "x"), env=lab["env"], check=False)
    assert result.returncode == 1 and "--from 2026-05-02 is after --to 2026-05-01" in result.stderr


def test_a_candidate_beside_production_on_the_same_cells_and_from_the_cli(lab, tmp_path: Path):
    settings = lab["settings"]
    with db.session_scope(settings.database_url) as session:
        candidate = register_model_version(session, artifact_dir=KAGGLE5_MODEL, status=ModelStatus.CANDIDATE, actor="test").version
    dossier = verification.build_dossier(settings, model=candidate, classify=True, classifier_for=lab["classifier_for"])
    production, challenger = dossier["models"]
    assert (production["role"], challenger["role"], challenger["version"]) == ("production", "candidate", candidate)
    assert production["cell_level"]["n_cells"] == challenger["cell_level"]["n_cells"] == 20 * len(SAMPLES)
    assert challenger["cell_level"]["per_class"]["erythroblast"]["tp"] == 0  # the notebook's 5 classes
    # the promotion gate, with BLOODCELL_PROMOTION_VERIFIED, compares the two on these cells
    agreement = challenger["cell_level"]["agreement"]["value"], production["cell_level"]["agreement"]["value"]
    assert agreement[0] < agreement[1]
    gated = settings.model_copy(update={"promotion_verified": True})
    expected = f"on {len(SAMPLES)} verified samples its cell agreement {agreement[0]:.4f} is below production's {agreement[1]:.4f}"
    assert expected in verification.verified_refusals(gated, candidate)
    for checked, refused in ((gated, True), (settings, False)):
        with db.session_scope(settings.database_url) as session, pytest.raises(Conflict) as refusal:
            promote(session, settings=checked, version=candidate, actor="cli:test")
        assert (expected in str(refusal.value)) is refused
    samples = tmp_path / "samples.txt"
    samples.write_text("N-00\nN-01\nB-00\nB-01\n")
    out = tmp_path / "cli"
    result = run_cli("verify", "--model", candidate, "--samples", str(samples), "--out", str(out), env=lab["env"])
    assert "production" in result.stdout and f"candidate {candidate}" in result.stdout
    assert "no conclusion" in result.stdout
    written = json.loads((out / "dossier.json").read_text())
    assert [s["sample_id"] for s in written["samples"]] == ["N-00", "N-01", "B-00", "B-01"]
    assert written["command"].startswith("bloodcell verify --model") and len(written["models"]) == 2


def test_the_console_page_is_for_supervisors_and_makes_a_dossier(lab):
    from api.app import create_app

    settings = lab["settings"]
    client = Client(settings)
    for name, role in (("tina", "technologist"), ("sam", "supervisor")):
        client.create_user(name, role, PASSWORD, "test")
    app = TestClient(create_app(settings))

    def login(name: str) -> str:
        token, csrf = client.start_session(name)
        app.cookies.set("bloodcell_session", token)
        return csrf

    login("tina")
    assert app.get("/ui/verification").status_code == 403
    csrf = login("sam")
    page = app.get("/ui/verification")
    assert page.status_code == 200 and "No dossier yet" in page.text
    assert app.post("/ui/verification", data={"csrf_token": "stale"}).status_code == 403
    made = app.post("/ui/verification", data={"csrf_token": csrf}, follow_redirects=True)
    assert made.status_code == 200 and "Latest dossier" in made.text and "cell agreement" in made.text
    run = verification.latest_dossier(settings)
    assert run is not None and app.get(f"/ui/verification/{run.name}/dossier.pdf").content.startswith(b"%PDF")
    assert app.get(f"/ui/verification/{run.name}/..%2Fbloodcell.db").status_code == 404
    refused = app.post("/ui/verification", data={"csrf_token": csrf, "day_from": "2026-02-30"})
    assert refused.status_code == 422 and "is not a date" in refused.text
