"""Targets of the hardware-in-the-loop tests, each enabled by an environment variable.

| variable | target |
|---|---|
| ``BITCHAT_HIL_PI=user@host`` | a real box reachable by SSH (agent installed and running) |
| ``BITCHAT_HIL_WEB=http://host:7780/`` | its dashboard (default: port 7780 on the same host) |
| ``BITCHAT_HIL_TOKEN`` | its admin token, for actions (identify LED) |
| ``BITCHAT_HIL_DISK=/dev/sda`` | its data disk, which the disk test detaches and rescans |
| ``BITCHAT_HIL_SERIAL=/dev/ttyUSB0`` | a relay board on a serial port (ESP32 or Pico W) |
| ``BITCHAT_HIL_RELAY_TARGET=esp32`` | that board's target (esp32 or rp2) |
| ``BITCHAT_HIL_EMUBOX=1`` | the emulated arm64 box under QEMU (on by default when CI=true) |
"""

from __future__ import annotations

import os
import subprocess
import urllib.parse
from dataclasses import dataclass

import pytest


def pytest_configure(config: pytest.Config) -> None:
    for marker in ("pi", "serial", "emubox"):
        config.addinivalue_line("markers", f"{marker}: hardware-in-the-loop target {marker}")


@dataclass(frozen=True)
class Pi:
    """A real box under test, driven over SSH."""

    target: str
    web: str

    def ssh(self, command: str, timeout: float = 60, check: bool = True) -> str:
        result = subprocess.run(
            ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", self.target, command],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"ssh {self.target} {command!r}: {result.stderr.strip()}")
        return result.stdout


@pytest.fixture(scope="session")
def pi() -> Pi:
    target = os.environ.get("BITCHAT_HIL_PI")
    if not target:
        pytest.skip("no real box: set BITCHAT_HIL_PI=user@host to run the Raspberry Pi tests")
    host = target.rsplit("@", 1)[-1]
    web = os.environ.get("BITCHAT_HIL_WEB", f"http://{host}:7780/")
    urllib.parse.urlsplit(web)
    return Pi(target, web.rstrip("/") + "/")


@pytest.fixture(scope="session")
def serial_port() -> str:
    port = os.environ.get("BITCHAT_HIL_SERIAL")
    if not port:
        pytest.skip("no relay board: set BITCHAT_HIL_SERIAL=/dev/ttyUSB0 to run the serial tests")
    if not os.path.exists(port):
        pytest.fail(f"BITCHAT_HIL_SERIAL={port} does not exist: is the board plugged in?")
    return port
