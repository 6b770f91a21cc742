from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cli import init_data_dir
from tests.support import RunningAgent, start_agent


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A freshly initialised data dir (identity, admin token, config)."""
    path = tmp_path / "box"
    init_data_dir(path)
    return path


@pytest.fixture
def agent(data_dir: Path) -> Iterator[RunningAgent]:
    """A real agent process on ephemeral loopback ports, stopped after the test."""
    running = start_agent(data_dir)
    try:
        yield running
    finally:
        if running.process.poll() is None:
            running.stop()
