from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from node.cli import init_data_dir
from tests.support import RunningAgent, start_agent

# The machines running the suite are shared and noisy: no property test may fail on timing.
settings.register_profile(
    "bitchat", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("bitchat")


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
