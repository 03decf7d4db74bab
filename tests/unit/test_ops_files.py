"""ops/: the Prometheus configuration and alert rules checked by promtool (with unit tests of every alert), the
Grafana dashboard's JSON and provisioning, and the compose `ops` profile that runs them.

Every panel's query is also evaluated by a real Prometheus that scraped a real API: tests/integration/test_ops_metrics.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
OPS = PROJECT / "ops"
PROMETHEUS = OPS / "prometheus"
DASHBOARD = OPS / "grafana" / "dashboards" / "bloodcell.json"
DATASOURCES = OPS / "grafana" / "provisioning" / "datasources" / "prometheus.yml"


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    assert tool, "promtool is missing: run scripts/install-services (Debian package prometheus)"
    result = subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_prometheus_config_is_valid_with_its_rule_files(tmp_path: Path):
    promtool("check", "config", "--syntax-only", str(PROMETHEUS / "prometheus.yml"))
    # the full check reads the token file too: a copy beside the rules, with the container's path made local
    token = tmp_path / "token"
    token.write_text("bct_example")
    config = (PROMETHEUS / "prometheus.yml").read_text().replace("/run/secrets/bloodcell_metrics_token", str(token))
    assert str(token) in config
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    assert "SUCCESS" in promtool("check", "config", str(tmp_path / "prometheus.yml")).stdout


def test_alert_rules_are_valid_and_every_alert_has_a_unit_test():
    promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    promtool("test", "rules", str(PROMETHEUS / "alerts_test.yml"))
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for group in rules["groups"] for r in group["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts == firing == quiet, (alerts, firing, quiet)  # each alert shown firing and shown quiet
    assert {"BloodcellQueueBackingUp", "BloodcellNoClassifyWorker", "BloodcellWebhookFailures", "BloodcellRelabelRateJump"} <= alerts


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_dashboard_uses_the_provisioned_datasource_and_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert dashboard["uid"] == "bloodcell" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for source in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert source == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
    assert len(dashboard_queries()) >= 12
    provider = yaml.safe_load((OPS / "grafana" / "provisioning" / "dashboards" / "bloodcell.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_ops_profile_mounts_these_files_and_secrets():
    compose = yaml.safe_load((PROJECT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["ops"]
    for name in ("prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (PROJECT / source).exists(), f"{name} mounts {source}, which does not exist"
        assert all(not port.startswith(("0.0.0.0", "9090", "3000")) for port in services[name]["ports"]), "localhost only"
    assert services["prometheus"]["secrets"] == ["bloodcell_metrics_token"]
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["authorization"]["credentials_file"] == "/run/secrets/bloodcell_metrics_token"
    assert scrape["static_configs"][0]["targets"] == ["api:8000"] and "api" in services
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./ops/secrets/")
    ignored = subprocess.run(["git", "check-ignore", "-q", "ops/secrets/metrics_token"], cwd=PROJECT)
    assert ignored.returncode == 0, "ops/secrets/ must be ignored by git"
