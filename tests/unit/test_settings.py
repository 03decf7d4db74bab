"""Settings: read from the environment (a value that cannot be read is refused naming its variable), documented by the
generated README table, and Settings.validate: each setting that cannot work alone or with another is refused with both
names and values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from helpers import PROJECT, run_cli

from bloodcell_core.config import WEBHOOK_TIMEOUT_S, Settings, configuration_table, with_configuration_table


def settings(**env: str) -> Settings:
    """Settings from the embedded defaults plus ENV, whatever BLOODCELL_* the test run has."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BLOODCELL_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return Settings.from_env()


def test_the_defaults_are_valid():
    defaults = settings()
    defaults.validate()
    assert (defaults.sweep_interval_s, defaults.sweep_webhook_age_s, defaults.sweep_orphan_age_s) == (60, 60, 24 * 3600)


def test_the_environment_is_read_into_typed_settings_and_derived_defaults(tmp_path):
    read = settings(
        BLOODCELL_HOME=str(tmp_path),
        BLOODCELL_REDIS_PORT="7000",
        BLOODCELL_NON_LEUKOCYTE_CLASSES=" erythroblast, ,platelet,smudge ",
        BLOODCELL_REVIEW_THRESHOLD="0.9",
        BLOODCELL_RUNTIME=" OpenVINO ",
        BLOODCELL_SHADOW="1",
        BLOODCELL_API_URL="http://127.0.0.1:9",  # a client-side variable, not a setting
        bloodcell_api_port="9",  # not BLOODCELL_API_PORT: the shell's names are case-sensitive
    )
    assert read.broker_url == "redis://127.0.0.1:7000/0" and read.result_backend == "redis://127.0.0.1:7000/1"
    assert read.database_url == f"sqlite:///{tmp_path / 'bloodcell.db'}" and read.models_dir == tmp_path / "models"
    assert read.non_leukocyte_classes == ("erythroblast", "platelet", "smudge") and read.review_threshold == 0.9
    assert (read.runtime, read.shadow, read.api_port, read.trusted_proxies) == ("openvino", True, 8000, ())
    assert settings().review_threshold is None and settings(BLOODCELL_REVIEW_THRESHOLD="Model").review_threshold is None
    assert settings(BLOODCELL_HOME="~/elsewhere").home == Path("~/elsewhere").expanduser()


UNREADABLE = [  # (environment, words the message has)
    ({"BLOODCELL_API_PORT": "abc"}, ["BLOODCELL_API_PORT='abc'", "integer"]),
    ({"BLOODCELL_PROMOTION_MARGIN": "a lot"}, ["BLOODCELL_PROMOTION_MARGIN='a lot'", "number"]),
    ({"BLOODCELL_REVIEW_THRESHOLD": "high"}, ["BLOODCELL_REVIEW_THRESHOLD='high'", "number"]),
    ({"BLOODCELL_SHADOW": "maybe"}, ["BLOODCELL_SHADOW='maybe'", "boolean"]),
    # a derived default (the broker URL from the Redis port) adds no second message
    ({"BLOODCELL_REDIS_PORT": "x", "BLOODCELL_LOGIN_ATTEMPTS": ""}, ["BLOODCELL_REDIS_PORT='x'", "; BLOODCELL_LOGIN_ATTEMPTS=''"]),
]


@pytest.mark.parametrize("env, words", UNREADABLE, ids=[" ".join(f"{k}={v}" for k, v in env.items()) for env, _ in UNREADABLE])
def test_a_value_that_cannot_be_read_is_refused_naming_its_variable(env: dict[str, str], words: list[str]):
    with pytest.raises(ValueError) as refused:
        settings(**env)
    message = str(refused.value)
    assert all(word in message for word in words) and message.count("BLOODCELL_") == len(env), message
    assert "invalid literal" not in message and "validation error" not in message


def test_a_command_refuses_an_unreadable_value_with_one_line_naming_it(tmp_path):
    result = run_cli("api", env={"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_API_PORT": "abc"}, check=False)
    assert result.returncode == 1 and result.stderr.startswith("Error: BLOODCELL_API_PORT='abc'"), result
    assert "Traceback" not in result.stderr


def test_every_setting_is_documented_and_the_readme_table_is_the_generated_one():
    rows = configuration_table().splitlines()[2:]
    assert len(rows) == len(Settings.model_fields) and all(not row.endswith("|  |") for row in rows)
    readme = (PROJECT / "README.md").read_text()
    assert with_configuration_table(readme) == readme, "the README's configuration table is stale: run scripts/configuration-table"
    assert "| `BLOODCELL_API_PORT` | `8000` | port of the HTTP API |" in rows


REFUSED = [  # (environment, words every one of which the message has)
    (
        {"BLOODCELL_VISIBILITY_TIMEOUT": "7140"},
        ["BLOODCELL_VISIBILITY_TIMEOUT=7140", "BLOODCELL_TRAIN_TIME_LIMIT_S=7140"],
    ),
    ({"BLOODCELL_VISIBILITY_TIMEOUT": "600"}, ["BLOODCELL_VISIBILITY_TIMEOUT=600", "BLOODCELL_TRAIN_TIME_LIMIT_S=7140"]),
    (
        {"BLOODCELL_VISIBILITY_TIMEOUT": "100", "BLOODCELL_TRAIN_TIME_LIMIT_S": "90", "BLOODCELL_CLASSIFY_TIME_LIMIT_S": "120"},
        ["BLOODCELL_VISIBILITY_TIMEOUT=100", "BLOODCELL_CLASSIFY_TIME_LIMIT_S=120"],
    ),
    ({"BLOODCELL_CLASSIFY_TIME_LIMIT_S": "5"}, ["BLOODCELL_CLASSIFY_TIME_LIMIT_S", "got 5"]),
    ({"BLOODCELL_REDIS_PORT": "8000"}, ["BLOODCELL_REDIS_PORT=8000", "BLOODCELL_API_PORT=8000"]),
    ({"BLOODCELL_FLOWER_PORT": "6379"}, ["BLOODCELL_REDIS_PORT=6379", "BLOODCELL_FLOWER_PORT=6379"]),
    ({"BLOODCELL_API_PORT": "5555"}, ["BLOODCELL_API_PORT=5555", "BLOODCELL_FLOWER_PORT=5555"]),
    (
        {"BLOODCELL_MAX_IMAGE_BYTES": "2000", "BLOODCELL_MAX_REQUEST_BYTES": "1000"},
        ["BLOODCELL_MAX_IMAGE_BYTES=2000", "BLOODCELL_MAX_REQUEST_BYTES=1000"],
    ),
    (
        {"BLOODCELL_WORKER_DEVICE": "gpu", "BLOODCELL_RUNTIME": "openvino"},
        ["BLOODCELL_WORKER_DEVICE=gpu", "BLOODCELL_RUNTIME=openvino"],
    ),
    ({"BLOODCELL_WEBHOOK_ATTEMPTS": "0"}, ["BLOODCELL_WEBHOOK_ATTEMPTS", "got 0"]),
    ({"BLOODCELL_SWEEP_INTERVAL_S": "0"}, ["BLOODCELL_SWEEP_INTERVAL_S", "got 0"]),
    (
        {"BLOODCELL_SWEEP_INTERVAL_S": "120", "BLOODCELL_SWEEP_WEBHOOK_AGE_S": "60"},
        ["BLOODCELL_SWEEP_INTERVAL_S=120", "BLOODCELL_SWEEP_WEBHOOK_AGE_S=60"],
    ),
    (
        {"BLOODCELL_SWEEP_INTERVAL_S": "5", "BLOODCELL_SWEEP_WEBHOOK_AGE_S": str(WEBHOOK_TIMEOUT_S)},
        ["BLOODCELL_SWEEP_WEBHOOK_AGE_S=10", "10 s"],
    ),
    ({"BLOODCELL_SWEEP_ORPHAN_AGE_S": "60"}, ["BLOODCELL_SWEEP_ORPHAN_AGE_S=60", "3600 s"]),
]


@pytest.mark.parametrize("env, words", REFUSED, ids=[" ".join(f"{k}={v}" for k, v in env.items()) for env, _ in REFUSED])
def test_settings_that_cannot_work_are_refused_with_names_and_values(env: dict[str, str], words: list[str]):
    with pytest.raises(ValueError) as refused:
        settings(**env).validate()
    assert all(word in str(refused.value) for word in words), str(refused.value)


ACCEPTED = [
    {"BLOODCELL_VISIBILITY_TIMEOUT": "7141"},
    {"BLOODCELL_VISIBILITY_TIMEOUT": "100", "BLOODCELL_TRAIN_TIME_LIMIT_S": "90", "BLOODCELL_CLASSIFY_TIME_LIMIT_S": "90"},
    {"BLOODCELL_MAX_IMAGE_BYTES": "1000", "BLOODCELL_MAX_REQUEST_BYTES": "1000"},
    {"BLOODCELL_WORKER_DEVICE": "gpu", "BLOODCELL_RUNTIME": "keras"},
    {"BLOODCELL_WORKER_DEVICE": "cpu", "BLOODCELL_RUNTIME": "openvino"},
    {"BLOODCELL_WEBHOOK_ATTEMPTS": "1"},
    {"BLOODCELL_SWEEP_INTERVAL_S": "1", "BLOODCELL_SWEEP_WEBHOOK_AGE_S": "11", "BLOODCELL_SWEEP_ORPHAN_AGE_S": "3600"},
]


@pytest.mark.parametrize("env", ACCEPTED, ids=[" ".join(f"{k}={v}" for k, v in env.items()) for env in ACCEPTED])
def test_the_edges_that_work_are_accepted(env: dict[str, str]):
    settings(**env).validate()


@pytest.mark.parametrize("command", [["worker"], ["api"], ["up"], ["beat"], ["sweep"]])
def test_the_commands_that_start_the_service_refuse_such_settings(tmp_path, command: list[str]):
    env = {"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_API_PORT": "6379"}
    result = run_cli(*command, env=env, check=False)
    assert result.returncode != 0 and "BLOODCELL_REDIS_PORT=6379 and BLOODCELL_API_PORT=6379" in result.stderr, result
    assert not (tmp_path / "run").exists()  # nothing was started


def test_a_celery_worker_started_directly_refuses_such_settings(tmp_path):
    """`celery -A workers.app worker` skips the CLI: the worker's own start-up check refuses it."""
    env = {**os.environ, "BLOODCELL_HOME": str(tmp_path), "BLOODCELL_VISIBILITY_TIMEOUT": "60"}
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool", "solo"],
        capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "refuses to start" in result.stderr and "BLOODCELL_VISIBILITY_TIMEOUT=60" in result.stderr
