"""GET /metrics on a real stack (Redis, a worker, the API; SQLite and PostgreSQL): the values move by exactly
what happened, the scope is enforced, and a real Prometheus scrapes it and answers every dashboard query."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from helpers import DEFAULT_MODEL, PROJECT, run_cli, unseen_images
from prometheus_client.parser import text_string_to_metric_families
from servers import Api, Stack, WebhookReceiver, create_token, free_port, settings_for, start_api_server, wait_port

pytestmark = pytest.mark.real_data

Samples = dict[tuple[str, frozenset], float]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, redis_server, postgres_server, tmp_path_factory):
    home = tmp_path_factory.mktemp(f"home-metrics-{request.param}")
    db = 13 if request.param == "sqlite" else 14
    env = {
        "BLOODCELL_HOME": str(home),
        "BLOODCELL_BROKER_URL": f"{redis_server.url}/{db}",
        "BLOODCELL_RESULT_BACKEND": f"{redis_server.url}/{db}",
        "BLOODCELL_DATABASE_URL": (
            f"sqlite:///{home}/bloodcell.db" if request.param == "sqlite" else postgres_server.create_database("bloodcell_metrics")
        ),
        "BLOODCELL_DEFAULT_MODEL": str(DEFAULT_MODEL),
        "BLOODCELL_MODELS_DIR": str(home / "models"),
        "BLOODCELL_API_PORT": str(free_port()),
        "BLOODCELL_REVIEW_THRESHOLD": "0.9999",  # some cells go to review
        "BLOODCELL_WEBHOOK_ATTEMPTS": "1",  # the one attempt to a closed port fails the delivery for good
    }
    run_cli("db", "upgrade", env=env)
    closed_port = free_port()
    tokens = {
        "lims": create_token(env, "lims", "submit", "read", webhook_url=f"http://127.0.0.1:{closed_port}/hook")["token"],
        "technologist": create_token(env, "technologist", "read", "review")["token"],
        "prometheus": create_token(env, "prometheus", "metrics")["token"],
    }
    server = start_api_server(env, home / "api.log")
    stack = Stack(env=env, settings=settings_for(env))
    yield Api(f"http://127.0.0.1:{env['BLOODCELL_API_PORT']}", stack, tokens, "", WebhookReceiver())
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)
    stack.stop_workers()


def scrape(api: Api) -> Samples:
    response = api.call("GET", "/metrics", token="prometheus")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def test_metrics_needs_a_token_with_the_metrics_scope(api: Api):
    assert api.call("GET", "/metrics", token=None).status_code == 401
    assert api.call("GET", "/metrics", token="bct_not-a-token").status_code == 401
    for token in ("lims", "technologist"):
        response = api.call("GET", "/metrics", token=token)
        assert response.status_code == 403 and "'metrics' scope" in response.json()["detail"], token
    assert api.call("GET", "/v1/samples/S-X", token="prometheus").status_code == 403  # the scope opens nothing else


def test_counters_follow_a_sample_through_queue_worker_relabel_and_webhook(api: Api):
    before = scrape(api)
    assert value(before, "bloodcell_metrics_source_up", source="database") == 1
    assert value(before, "bloodcell_metrics_source_up", source="redis") == 1
    assert value(before, "bloodcell_workers", queue="classify") == 0
    paths = unseen_images("myeloblast", 2) + unseen_images("neutrophil", 2)
    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
    assert api.call("POST", "/v1/samples", data={"accession_id": "S-MET-1"}, files=files).status_code == 202

    # no worker yet: the message waits in Redis, and its age grows
    time.sleep(1.2)
    queued = scrape(api)
    assert value(queued, "bloodcell_queue_messages", queue="classify") == 1
    assert 1.0 <= value(queued, "bloodcell_queue_oldest_age_seconds", queue="classify") < 60
    assert value(queued, "bloodcell_queue_oldest_age_seconds", queue="train") == 0  # empty
    assert value(queued, "bloodcell_samples", status="queued") == value(before, "bloodcell_samples", status="queued") + 1

    api.stack.start_worker(f"metrics-{api.url.rsplit(':', 1)[1]}")
    report = api.wait_for("S-MET-1")
    cells = api.call("GET", "/v1/samples/S-MET-1/cells").json()
    version = report["model_version"]
    deadline = time.monotonic() + 60  # the webhook's one attempt fails; then the delivery is failed for good
    while api.call("GET", "/v1/samples/S-MET-1/webhooks").json()[0]["status"] != "failed":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    deadline = time.monotonic() + 30  # the census of the workers runs in the background: it sees the new one soon
    while value(done := scrape(api), "bloodcell_workers", queue="classify") != 1:
        assert time.monotonic() < deadline, "the worker census never saw the worker"
        time.sleep(0.5)
    assert value(done, "bloodcell_queue_messages", queue="classify") == 0
    assert value(done, "bloodcell_queue_oldest_age_seconds", queue="classify") == 0
    assert value(done, "bloodcell_workers", queue="classify") == 1 and value(done, "bloodcell_workers", queue="classify.gpu") == 0
    assert value(done, "bloodcell_samples", status=report["status"]) == value(before, "bloodcell_samples", status=report["status"]) + 1
    assert value(done, "bloodcell_samples", status="queued") == value(before, "bloodcell_samples", status="queued")
    assert value(done, "bloodcell_model_info", model_version=version, status="production") == 1
    # per class of the model: classified, sent to review, unfamiliar; exactly this sample's cells
    for label in {c["model_label"] for c in cells}:
        mine = [c for c in cells if c["model_label"] == label]
        key = {"model_version": version, "label": label}
        assert value(done, "bloodcell_cells_classified_total", **key) - value(
            before, "bloodcell_cells_classified_total", **key
        ) == len(mine)
        sent = sum(bool(c["review_reasons"]) for c in mine)
        assert (
            value(done, "bloodcell_cells_sent_to_review_total", **key) - value(before, "bloodcell_cells_sent_to_review_total", **key)
            == sent
        )
        unfamiliar = sum("unlike the training images" in c["review_reasons"] for c in mine)
        assert (
            value(done, "bloodcell_cells_unfamiliar_total", **key) - value(before, "bloodcell_cells_unfamiliar_total", **key)
            == unfamiliar
        )
    assert total(done, "bloodcell_cells_classified_total") - total(before, "bloodcell_cells_classified_total") == len(paths)
    assert (
        value(done, "bloodcell_webhook_deliveries", status="failed")
        == value(before, "bloodcell_webhook_deliveries", status="failed") + 1
    )
    assert value(done, "bloodcell_webhook_deliveries", status="pending") == 0
    assert value(done, "bloodcell_sample_turnaround_samples") >= 1
    assert value(done, "bloodcell_sample_turnaround_seconds", quantile="0.5") >= 1.0  # it waited for the worker

    # a technologist relabels one cell: exactly one relabel from the model's class to the new one
    cell = cells[0]
    new_label = "monocyte" if cell["model_label"] != "monocyte" else "lymphocyte"
    body = {"label": new_label, "reviewer": "anna", "reason": "nucleus shape"}
    response = api.call("POST", f"/v1/samples/S-MET-1/cells/{cell['image_sha256']}/label", token="technologist", json=body)
    assert response.status_code == 200, response.text
    relabelled = scrape(api)
    key = {"model_version": version, "from_label": cell["model_label"], "to_label": new_label}
    assert value(relabelled, "bloodcell_relabels_total", **key) - value(done, "bloodcell_relabels_total", **key) == 1
    assert total(relabelled, "bloodcell_relabels_total") - total(done, "bloodcell_relabels_total") == 1
    assert total(relabelled, "bloodcell_cells_classified_total") == total(done, "bloodcell_cells_classified_total")


def test_prometheus_scrapes_it_and_answers_every_dashboard_query_and_rule(api: Api, tmp_path: Path):
    """Runs after the sample above, so every series the dashboard shows exists."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run scripts/install-services (Debian package prometheus)"
    token = tmp_path / "token"
    token.write_text(api.tokens["prometheus"])
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROJECT / "ops" / "prometheus" / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "bloodcell",
                "authorization": {"type": "Bearer", "credentials_file": str(token)},
                "static_configs": [{"targets": [api.url.removeprefix("http://")]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=PROJECT,
    )
    base = f"http://127.0.0.1:{port}"

    def query(expr: str) -> list:
        answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]

    try:
        wait_port(port, timeout=30)
        deadline = time.monotonic() + 60
        while not query('count_over_time(up{job="bloodcell"}[1m]) >= 4 and up{job="bloodcell"} == 1'):
            assert time.monotonic() < deadline, (tmp_path / "prometheus.log").read_text()[-2000:]
            time.sleep(0.5)
        dashboard = json.loads((PROJECT / "ops" / "grafana" / "dashboards" / "bloodcell.json").read_text())
        for expr in [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]:
            assert query(expr), f"no series for the dashboard's {expr!r}"
        groups = httpx.get(f"{base}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert len(rules) >= 13 and all(rule["health"] == "ok" for rule in rules), rules
        firing = {a["labels"]["alertname"] for a in httpx.get(f"{base}/api/v1/alerts", timeout=10).json()["data"]["alerts"]}
        assert "BloodcellMetricsDown" not in firing and "BloodcellNoClassifyWorker" not in firing, firing
    finally:
        server.terminate()
        server.wait(timeout=30)
