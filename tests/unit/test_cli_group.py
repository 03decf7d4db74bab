"""The `bloodcell` command's one group class (bloodcell_core/cli/group.py), as a user runs the command:
an error that is the user's to fix ends as one line ``Error: MESSAGE`` with exit status 1 whichever
audience's module the command lives in, and a group's default subcommand runs one way."""

from __future__ import annotations

import importlib

import pytest
from helpers import run_cli

from bloodcell_core.cli.group import HEAVY_ERRORS


@pytest.fixture(scope="module")
def empty_database(tmp_path_factory) -> dict[str, str]:
    """The environment of a migrated, empty SQLite database; the commands run in process (no API URL)."""
    home = tmp_path_factory.mktemp("bloodcell-home")
    env = {"BLOODCELL_HOME": str(home), "BLOODCELL_DATABASE_URL": f"sqlite:///{home}/bloodcell.db", "BLOODCELL_API_URL": ""}
    run_cli("db", "upgrade", env=env)
    return env


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "NO-SUCH-SAMPLE"], "no sample 'NO-SUCH-SAMPLE'"),  # cli/lab.py
        (["review", "sign-off", "NO-SUCH-SAMPLE", "--reviewer", "someone"], "no sample 'NO-SUCH-SAMPLE'"),  # cli/lab.py
        (["users", "disable", "nobody"], "no user named 'nobody'"),  # cli/admin.py
        (["tokens", "revoke", "nobody"], "no API client named 'nobody'"),  # cli/admin.py
    ],
)
def test_a_service_error_is_one_line_in_lab_and_admin_commands(empty_database, args: list[str], message: str):
    result = run_cli(*args, env=empty_database, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"Error: {message}\n")


def test_an_unmigrated_database_is_one_line_too(tmp_path):
    """`tokens create` once printed this error with a traceback."""
    env = {"BLOODCELL_HOME": str(tmp_path), "BLOODCELL_DATABASE_URL": f"sqlite:///{tmp_path}/new.db", "BLOODCELL_API_URL": ""}
    result = run_cli("tokens", "create", "lims", "--scope", "submit", env=env, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: the database ") and result.stderr.endswith("run `bloodcell db upgrade`\n")
    assert len(result.stderr.splitlines()) == 1


def test_a_default_subcommand_takes_the_arguments_it_could_take(empty_database):
    assert run_cli("models", "--json", env=empty_database).stdout == run_cli("models", "list", "--json", env=empty_database).stdout
    assert run_cli("models", env=empty_database).returncode == 0
    # `models list` takes no argument: another word is an unknown subcommand, not an argument of `list`
    assert "No such command 'bogus'" in run_cli("models", "bogus", env=empty_database, check=False).stderr
    # `locate FIELD...` is `locate fields FIELD...`: tests/ml/test_field_locator.py runs it on real fields
    assert "Usage: bloodcell locate [OPTIONS] COMMAND [ARGS]..." in run_cli("locate", check=False).stderr  # no arguments: the help


def test_the_heavy_modules_named_by_the_error_rule_hold_those_errors():
    """The group reads these errors only from modules already imported: a renamed one must fail here."""
    for module, name in HEAVY_ERRORS:
        assert issubclass(getattr(importlib.import_module(module), name), Exception)
