"""The development commands a reader runs by hand: `make sample`, and what `make run` installs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _sample(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "scripts.dev.sample", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sample_help_prints_usage_and_writes_nothing(tmp_path: Path, flag: str) -> None:
    # When a reader asks scripts/dev/sample.py for help
    result = _sample(tmp_path, flag)

    # Then it prints its usage and creates no folder (not one named --help)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:"), result.stdout
    assert "folder" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_an_unknown_option_and_writes_nothing(tmp_path: Path) -> None:
    result = _sample(tmp_path, "--slices=3")
    assert result.returncode == 2
    assert "unrecognized arguments: --slices=3" in result.stderr
    assert list(tmp_path.iterdir()) == []
