"""Shared fixtures: run the real command line against real trees on disk."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import helpers  # noqa: E402


@pytest.fixture
def savedir(tmp_path):
    """A freshly initialised save directory."""
    path = str(tmp_path / "savedir")
    helpers.run_ok(["--save-directory", path, "--init-savedir"])
    return path
