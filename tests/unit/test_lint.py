"""The code's habits, checked like behaviour: ruff's rules, ruff's formatting and mypy's types (pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

from helpers import PROJECT

BIN = Path(sys.executable).parent


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command[0]), *command[1:]], cwd=PROJECT, capture_output=True, text=True)


def test_ruff_finds_nothing():
    result = run("ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_ruff_formatted():
    result = run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_error():
    result = run("mypy")  # files and strictness from [tool.mypy]
    assert result.returncode == 0, result.stdout + result.stderr
