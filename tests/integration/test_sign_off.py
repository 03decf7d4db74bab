"""The sign-off rule over HTTP (docs/sign-off.md): a real API server, PostgreSQL and Redis, and the console's pages.

The model alone is stood in for: ``ChosenLabels`` gives each submitted image the label the test chose, through
the service's own ``classify_sample``, so every figure of a report is known exactly. Submission, reports,
review, sign-off, exports and the console are the real code against the real servers.
"""

from __future__ import annotations

import hashlib
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fhir.resources.R4B.bundle import Bundle
from helpers import DEFAULT_MODEL, encode, run_cli
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from servers import create_token, free_port, settings_for, start_api_server
from sqlalchemy import select

from bloodcell_core.config import Settings
from bloodcell_core.ml.serving import CellPrediction
from bloodcell_core.service import db, users
from bloodcell_core.service.classification import classify_sample
from bloodcell_core.service.samples import find_sample
from bloodcell_core.service.tables import LoginAttempt
from bloodcell_core.service.versions import ensure_production_model

PASSWORD = "correct horse battery"


class ChosenLabels:
    """Stands in for the model only: each image (by sha256) gets the label chosen for it, or fails (None)."""

    def __init__(self, labels: dict[str, str | None]) -> None:
        self.labels = labels

    def classify_batches(self, images: list[tuple[str, bytes]]) -> Iterator[list[CellPrediction]]:
        yield [
            CellPrediction(name=sha, label=label, confidence=0.99, probabilities={label: 0.99})
            if (label := self.labels[sha]) is not None
            else CellPrediction(name=sha, error="cannot identify image file")
            for sha, _ in images
        ]


@dataclass
class Lab:
    url: str
    env: dict[str, str]
    settings: Settings
    tokens: dict[str, str]
    n_samples: int = 0

    def call(self, method: str, path: str, token: str = "review", **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[token]}", **kwargs.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def sample(self, labels: list[str | None]) -> tuple[str, dict]:
        """A new sample of len(LABELS) images, submitted over HTTP and classified with these labels."""
        self.n_samples += 1
        sample_id = f"S-SIGN-{self.n_samples}"
        images = [encode(np.full((24, 24, 3), (self.n_samples, k, 0), np.uint8)) for k in range(len(labels))]  # each its own
        files = [("images", (f"cell{k}.png", data, "image/png")) for k, data in enumerate(images)]
        assert self.call("POST", "/v1/samples", token="lims", data={"accession_id": sample_id}, files=files).status_code == 202
        chosen = ChosenLabels({hashlib.sha256(data).hexdigest(): label for data, label in zip(images, labels)})
        with db.session_scope(self.settings.database_url) as session:
            sample_pk = find_sample(session, sample_id).id
        classify_sample(self.settings, sample_pk, lambda _version: chosen, "test")
        return sample_id, self.report(sample_id)

    def report(self, sample_id: str) -> dict:
        return self.call("GET", f"/v1/samples/{sample_id}").json()

    def sign_off(self, sample_id: str, reviewer: str, **body) -> httpx.Response:
        return self.call("POST", f"/v1/samples/{sample_id}/sign-off", json={"reviewer": reviewer, **body})

    def relabel(self, sample_id: str, image_sha256: str, label: str) -> dict:
        body = {"label": label, "reviewer": "tech", "reason": "seen on the smear"}
        response = self.call("POST", f"/v1/samples/{sample_id}/cells/{image_sha256}/label", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def fhir(self, sample_id: str):
        bundle = Bundle.model_validate_json(self.call("GET", f"/v1/samples/{sample_id}/export/fhir-r4").text)
        return [entry.resource for entry in bundle.entry]

    def hl7(self, sample_id: str):
        text = self.call("GET", f"/v1/samples/{sample_id}/export/hl7v2").text
        return parse_message(text.strip(), validation_level=VALIDATION_LEVEL.STRICT).oru_r01_patient_result.oru_r01_order_observation


def lab_env(redis_server, postgres_server, home: Path, database: str, **extra: str) -> dict[str, str]:
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/9",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/10",
        "BLOODCELL_DATABASE_URL": postgres_server.create_database(database),
        "BLOODCELL_IMAGE_STORE": "database",
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
        "BLOODCELL_REVIEW_THRESHOLD": "0.5",  # every chosen label (0.99) is accepted: no cell waits for review
        "BLOODCELL_SIGNOFF_MIN_LEUKOCYTES": "5",
        **extra,
    }
    db.upgrade(env["BLOODCELL_DATABASE_URL"])
    return env


@pytest.fixture(scope="module")
def lab(redis_server, postgres_server, tmp_path_factory):
    home = tmp_path_factory.mktemp("home-sign-off")
    env = lab_env(redis_server, postgres_server, home, "bloodcell_sign_off")
    settings = settings_for(env)
    ensure_production_model(settings)
    with db.session_scope(settings.database_url) as session:
        for name, role in (("tech", "technologist"), ("sup", "supervisor"), ("gone", "supervisor")):
            users.create_user(session, name=name, role=role, password=PASSWORD, actor="test")
        users.disable_user(session, name="gone", actor="test")
    tokens = {
        "lims": create_token(env, "lims", "submit", "read")["token"],
        "review": create_token(env, "lis-review", "read", "review")["token"],
    }
    server = start_api_server(env, home / "api.log")
    yield Lab(f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}", env, settings, tokens)
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)


def console_login(url: str, name: str) -> httpx.Client:
    """A browser's session in the console, over plain HTTP: the login form with its double-submit token."""
    browser = httpx.Client(base_url=url, timeout=60)
    form = browser.get("/ui/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)[1]
    answer = browser.post("/ui/login", data={"name": name, "password": PASSWORD, "csrf_token": token, "next": "/ui/"})
    assert answer.status_code == 303, answer.text
    return browser


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page)[1]


def test_a_change_after_sign_off_withdraws_the_approval_until_someone_allowed_signs_again(lab: Lab):
    """Items 1 and 3: the supervisor's name never stands under a report version they did not approve."""
    sample_id, report = lab.sample(["neutrophil"] * 4 + ["lymphocyte"])
    assert report["status"] == "done" and report["report_version"] == 1

    signed = lab.sign_off(sample_id, "tech", comment="normal smear")
    assert signed.status_code == 200, signed.text
    assert signed.json()["report_status"] == "final" and signed.json()["signed_off_role"] == "technologist"
    again = lab.sign_off(sample_id, "sup")
    assert again.status_code == 409 and "already signed off by tech" in again.json()["detail"]
    assert "nothing new to sign off" in again.json()["detail"]

    # a technologist relabels a neutrophil as a blast: 1 of 5 leukocytes is 20 %, the blast flag
    cells = lab.call("GET", f"/v1/samples/{sample_id}/cells").json()
    neutrophil = next(c for c in cells if c["label"] == "neutrophil")
    changed = lab.relabel(sample_id, neutrophil["image_sha256"], "myeloblast")
    assert changed["blast_flag"] and changed["report_version"] == 2
    assert changed["report_status"] == "preliminary" and changed["signed_off_by"] is None
    assert changed["status"] == "needs_review" and changed["awaiting_sign_off_again"]
    assert sample_id in {item["sample_id"] for item in lab.call("GET", "/v1/review").json()}
    [earlier] = changed["sign_offs"]  # the signed version stays readable
    assert earlier["signed_off_by"] == "tech" and earlier["report_version"] == 1 and earlier["withdrawn_at"]
    assert earlier["counts"]["neutrophil"] == 4 and earlier["counts"]["myeloblast"] == 0

    # the exports name nobody for the changed version, and say it waits for a sign-off
    diagnostic = lab.fhir(sample_id)[0]
    assert diagnostic.status == "preliminary" and diagnostic.resultsInterpreter is None
    assert "not approved until signed off again" in diagnostic.conclusion
    order = lab.hl7(sample_id)
    assert order.obr.obr_25.value == "P"
    assert not any("Signed off by" in nte.nte_3.value for nte in order.nte)

    # the technologist may not release a blast report; the supervisor releases the correction under their name
    refused = lab.sign_off(sample_id, "tech")
    assert refused.status_code == 403 and "supervisor role; tech is technologist" in refused.json()["detail"]
    corrected = lab.sign_off(sample_id, "sup", comment="one blast confirmed")
    assert corrected.status_code == 200, corrected.text
    assert corrected.json()["report_status"] == "amended" and corrected.json()["signed_off_by"] == "sup"
    assert [(s["signed_off_by"], s["report_version"], s["report_status"]) for s in corrected.json()["sign_offs"]] == [
        ("tech", 1, "final"),
        ("sup", 2, "amended"),
    ]
    diagnostic = lab.fhir(sample_id)[0]
    assert diagnostic.status == "amended" and diagnostic.resultsInterpreter[0].display == "sup (supervisor)"
    order = lab.hl7(sample_id)
    assert order.obr.obr_25.value == "C"
    assert [n.nte_3.value for n in order.nte if "Signed off by" in n.nte_3.value][0].startswith("Signed off by sup (supervisor)")


def test_an_api_sign_off_names_an_enabled_console_user_whose_role_is_checked(lab: Lab):
    """Item 2: a review token alone cannot sign off a blast sample; it acts for a console user and their role."""
    sample_id, report = lab.sample(["myeloblast"] * 5 + ["neutrophil"] * 5)
    assert report["blast_flag"]
    for reviewer, words in (("A. Tech", "no enabled user named 'A. Tech'"), ("gone", "no enabled user named 'gone'")):
        refused = lab.sign_off(sample_id, reviewer)
        assert refused.status_code == 403 and words in refused.json()["detail"]
    assert lab.sign_off(sample_id, "tech").status_code == 403
    cli = run_cli("review", "sign-off", sample_id, "--reviewer", "tech", env=lab.env, check=False)  # the CLI, same rule
    assert cli.returncode == 1 and "needs the supervisor role; tech is technologist" in cli.stderr
    assert lab.report(sample_id)["report_status"] == "preliminary"
    assert lab.sign_off(sample_id, "sup").json()["signed_off_role"] == "supervisor"


def test_the_sign_off_comment_is_on_the_sample_page_and_in_both_exports(lab: Lab):
    """Item 4."""
    sample_id, _ = lab.sample(["neutrophil"] * 3 + ["lymphocyte"] * 3)
    comment = "smear reviewed, no atypia"
    assert lab.sign_off(sample_id, "tech", comment=comment).json()["sign_off_comment"] == comment
    assert comment in lab.fhir(sample_id)[0].conclusion
    assert any(n.nte_3.value.endswith(f": {comment}") and "Signed off by tech" in n.nte_3.value for n in lab.hl7(sample_id).nte)
    page = console_login(lab.url, "sup").get(f"/ui/samples/{sample_id}").text
    assert f"Comment by tech: {comment}" in page

    # any change withdraws the approval, also one that raises no flag: the sample goes back to review
    neutrophil = next(c for c in lab.call("GET", f"/v1/samples/{sample_id}/cells").json() if c["label"] == "neutrophil")
    changed = lab.relabel(sample_id, neutrophil["image_sha256"], "lymphocyte")
    assert changed["flags"] == [] and changed["status"] == "needs_review" and changed["sign_off_comment"] is None
    assert sample_id in {item["sample_id"] for item in lab.call("GET", "/v1/review").json()}
    again = lab.sign_off(sample_id, "tech", comment="recounted").json()
    assert (again["status"], again["report_status"], again["sign_off_comment"]) == ("done", "amended", "recounted")


def test_abnormal_flags_only_where_found_and_the_conclusion_counts_changes_only(lab: Lab):
    """Items 5 and 6: ig at 0 % is not abnormal under an immature flag raised by blasts; confirmations are no change."""
    sample_id, report = lab.sample(["myeloblast"] * 5 + ["neutrophil"] * 5)
    assert {"blasts", "immature_cells"} <= set(report["flags"]) and report["counts"]["ig"] == 0
    cells = lab.call("GET", f"/v1/samples/{sample_id}/cells").json()
    neutrophils = [c for c in cells if c["label"] == "neutrophil"]
    lab.relabel(sample_id, neutrophils[0]["image_sha256"], "lymphocyte")  # a change
    for cell in neutrophils[1:3]:
        lab.relabel(sample_id, cell["image_sha256"], "neutrophil")  # two confirmations
    assert lab.report(sample_id)["n_relabelled"] == 1 and lab.report(sample_id)["n_reviewed"] == 3

    abnormal = {
        o.obx.obx_3.obx_3_4.value or o.obx.obx_3.obx_3_1.value: o.obx.obx_8.value for o in lab.hl7(sample_id).oru_r01_observation
    }
    assert abnormal["myeloblast"] == "A" and abnormal["ig"] == "" and abnormal["neutrophil"] == ""
    resources = lab.fhir(sample_id)
    by_type = {o.code.coding[-1].code: o for o in resources if o.get_resource_type() == "Observation"}
    assert by_type["ig"].interpretation is None and by_type["myeloblast"].interpretation[0].coding[0].code == "A"
    assert "1 cells relabelled by a technologist" in resources[0].conclusion


def test_failed_images_or_too_few_leukocytes_need_an_explicit_confirmation_which_is_recorded(lab: Lab):
    """Item 7, over the API and in the console."""
    sample_id, report = lab.sample(["neutrophil", "lymphocyte", None, None, None])
    assert report["n_failed"] == 3 and report["n_leukocytes"] == 2
    refused = lab.sign_off(sample_id, "tech")
    assert refused.status_code == 409
    assert "3 of 5 images could not be classified" in refused.json()["detail"]
    assert "only 2 leukocytes were classified (BLOODCELL_SIGNOFF_MIN_LEUKOCYTES=5)" in refused.json()["detail"]
    assert lab.report(sample_id)["report_status"] == "preliminary"
    signed = lab.sign_off(sample_id, "tech", confirm_incomplete=True).json()
    assert signed["report_status"] == "final"
    assert signed["sign_offs"][0]["confirmed"] == [
        "3 of 5 images could not be classified",
        "only 2 leukocytes were classified (BLOODCELL_SIGNOFF_MIN_LEUKOCYTES=5)",
    ]

    # the console: the form asks for the confirmation, and a sign-off without it is refused
    few, _ = lab.sample(["neutrophil", "platelet", "platelet"])
    browser = console_login(lab.url, "tech")
    page = browser.get(f"/ui/samples/{few}").text
    assert 'id="signoff-confirm"' in page and "only 1 leukocytes were classified" in page
    form = {"csrf_token": csrf_of(page), "comment": "few cells"}
    without = browser.post(f"/ui/samples/{few}/sign-off", data=form)
    assert without.status_code == 409 and "confirm to sign off anyway" in without.text
    assert browser.post(f"/ui/samples/{few}/sign-off", data=form | {"confirm_incomplete": "true"}).status_code == 303
    assert lab.report(few)["sign_offs"][0]["confirmed"] == ["only 1 leukocytes were classified (BLOODCELL_SIGNOFF_MIN_LEUKOCYTES=5)"]


def test_leukocytes_per_100_with_nucleated_red_cells_and_platelets_apart(lab: Lab):
    sample_id, report = lab.sample(["neutrophil"] * 6 + ["lymphocyte"] * 4 + ["erythroblast"] * 2 + ["platelet"])
    assert report["n_leukocytes"] == 10 and report["non_leukocyte_classes"] == ["erythroblast", "platelet"]
    assert report["percent"]["erythroblast"] == 20.0  # per 100 leukocytes, as laboratories count nucleated red cells
    observations = [o for o in lab.fhir(sample_id) if o.get_resource_type() == "Observation"]
    leukocytes = [o for o in observations if o.valueQuantity.code == "%"]
    apart = [o for o in observations if o.valueQuantity.code == "/100{WBC}"]
    assert sum(o.valueQuantity.value for o in leukocytes) == pytest.approx(100)
    assert [o.code.coding[-1].code for o in apart] == ["erythroblast", "platelet"]  # after the leukocytes
    units = [
        (o.obx.obx_3.obx_3_4.value or o.obx.obx_3.obx_3_1.value, o.obx.obx_6.obx_6_1.value)
        for o in lab.hl7(sample_id).oru_r01_observation
    ]
    assert units[-2:] == [("erythroblast", "/100{WBC}"), ("platelet", "/100{WBC}")] and {u for _, u in units[:-2]} == {"%"}
    page = console_login(lab.url, "tech").get(f"/ui/samples/{sample_id}").text
    differential, apart_table = page.split('id="differential"')[1].split("</table>")[0], page.split('id="non-leukocytes"')[1]
    assert "erythroblast" not in differential and "platelet" not in differential and "neutrophil" in differential
    assert "erythroblast" in apart_table.split("</table>")[0]


def test_messages_keep_their_quotes_images_are_not_sniffed_and_upload_names_are_labels(lab: Lab):
    """Item 10 (the message half) and item 11 (the API half)."""
    missing = lab.call("GET", "/v1/samples/NOPE-404")
    assert missing.status_code == 404 and missing.json()["detail"] == "no sample 'NOPE-404'"
    unknown = lab.call("GET", f"/v1/images/{'0' * 64}")
    assert unknown.status_code == 404 and not unknown.json()["detail"].startswith("'")

    payload = b"<html><script>alert(1)</script></html>"  # stored bytes that a browser could take for a page
    files = [
        ("images", ("..", payload, "text/html")),
        ("images", ("run/3/cell.png", encode(np.zeros((8, 8, 3), np.uint8)), "image/png")),
    ]
    assert lab.call("POST", "/v1/samples", token="lims", data={"accession_id": "S-NAMES"}, files=files).status_code == 202
    cells = lab.call("GET", "/v1/samples/S-NAMES/cells").json()
    assert [c["name"] for c in cells] == ["image-0", "cell.png"]
    image = lab.call("GET", f"/v1/images/{cells[0]['image_sha256']}")
    assert image.headers["x-content-type-options"] == "nosniff" and image.headers["content-type"] == "application/octet-stream"
    assert image.headers["cache-control"] == "private, max-age=86400, immutable"

    # the console's uploads go through the same sanitiser; its thumbnails carry the same headers
    browser = console_login(lab.url, "tech")
    token = csrf_of(browser.get("/ui/submit").text)
    form = {"csrf_token": token, "accession_id": "S-NAMES-UI", "kind": "images"}
    sent = browser.post("/ui/submit", data=form, files=[("files", part) for _, part in files])
    assert sent.status_code == 303, sent.text
    assert [c["name"] for c in lab.call("GET", "/v1/samples/S-NAMES-UI/cells").json()] == ["image-0", "cell.png"]
    thumbnail = browser.get(f"/ui/images/{cells[1]['image_sha256']}")
    assert thumbnail.headers["cache-control"] == "private, max-age=86400, immutable"
    assert thumbnail.headers["x-content-type-options"] == "nosniff"


def test_forwarded_headers_count_only_from_configured_proxies(redis_server, postgres_server, tmp_path):
    """Item 8: X-Forwarded-For from a local process cannot dodge the per-address login throttle; a configured
    proxy's header is believed."""
    for database, proxies in (("bloodcell_no_proxy", ""), ("bloodcell_proxy", "127.0.0.1")):
        env = lab_env(redis_server, postgres_server, tmp_path / database, database, BLOODCELL_TRUSTED_PROXIES=proxies)
        settings = settings_for(env)
        with db.session_scope(settings.database_url) as session:
            users.create_user(session, name="tech", role="technologist", password=PASSWORD, actor="test")
        server = start_api_server(env, tmp_path / f"{database}.log")
        try:
            url = f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}"
            for k in range(settings.login_attempts):  # a different name each time: only the address throttle counts them
                browser = httpx.Client(base_url=url)
                token = csrf_of(browser.get("/ui/login").text)
                browser.post("/ui/login", data={"name": f"guess{k}", "password": "wrong password", "csrf_token": token})
            browser = httpx.Client(base_url=url)
            token = csrf_of(browser.get("/ui/login").text)
            forged = {"X-Forwarded-For": "203.0.113.9"}
            answer = browser.post("/ui/login", data={"name": "tech", "password": PASSWORD, "csrf_token": token}, headers=forged)
            if proxies:  # the proxy said the person is elsewhere: that address has no failures
                assert answer.status_code == 303
            else:
                assert answer.status_code == 429 and "too many failed logins" in answer.text
            with db.session_scope(settings.database_url) as session:
                addresses = set(session.scalars(select(LoginAttempt.address)))
            assert addresses == ({"127.0.0.1", "203.0.113.9"} if proxies else {"127.0.0.1"})
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
