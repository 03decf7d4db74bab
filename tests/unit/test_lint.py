import subprocess
import sys
from pathlib import Path

from helpers import PROJECT


def test_ruff_finds_nothing():
    result = subprocess.run([str(Path(sys.executable).parent / "ruff"), "check", "."], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
