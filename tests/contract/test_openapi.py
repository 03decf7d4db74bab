"""The HTTP API's published contract: every route's answer is described in /openapi.json."""

from __future__ import annotations

from bloodcell_core.config import Settings
from bloodcell_core.service.db import upgrade

# routes whose answer is not JSON: an export document, image bytes
NOT_JSON = {
    ("get", "/v1/samples/{sample_id}/export/{format_name}"),
    ("get", "/v1/images/{image_sha256}"),
    ("get", "/v1/samples/{sample_id}/fields/{field_sha256}/overlay"),  # image/png
    ("get", "/metrics"),  # Prometheus text format
}


def openapi(tmp_path) -> dict:
    from api.app import create_app

    url = f"sqlite:///{tmp_path}/bloodcell.db"
    upgrade(url)
    settings = Settings.from_env().model_copy(update={"database_url": url})
    return create_app(settings).openapi()


def test_every_json_route_names_its_response_schema(tmp_path):
    schema = openapi(tmp_path)
    undescribed = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if (method, path) in NOT_JSON:
                continue
            success = next(operation["responses"][code] for code in ("200", "202") if code in operation["responses"])
            described = success.get("content", {}).get("application/json", {}).get("schema", {})
            if not ("$ref" in described or "items" in described and "$ref" in described["items"]):
                undescribed.append(f"{method.upper()} {path}")
    assert len(schema["paths"]) >= 12 and undescribed == []


def test_states_are_enumerated_in_the_schema(tmp_path):
    components = openapi(tmp_path)["components"]["schemas"]
    assert set(components["SampleStatus"]["enum"]) == {"queued", "running", "done", "needs_review", "failed"}
    assert set(components["SampleFlag"]["enum"]) == {"blasts", "immature_cells", "unfamiliar_images"}
    report = components["SampleReportPublic"]["properties"]
    assert {"counts", "percent", "flags", "needs_review", "links", "n_unfamiliar"} <= set(report)


def test_the_overlay_is_described_as_png(tmp_path):
    operation = openapi(tmp_path)["paths"]["/v1/samples/{sample_id}/fields/{field_sha256}/overlay"]["get"]
    assert "image/png" in operation["responses"]["200"]["content"]


def test_metrics_is_described_as_prometheus_text(tmp_path):
    operation = openapi(tmp_path)["paths"]["/metrics"]["get"]
    assert any(media.startswith("text/plain; version=0.0.4") for media in operation["responses"]["200"]["content"])
    assert "(scope: metrics)" in operation["summary"]
