from __future__ import annotations

from tests.firmware.fakes import install_micropython

install_micropython()
