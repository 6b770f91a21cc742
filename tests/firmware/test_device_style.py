"""The device code stays MicroPython-shaped: no typing, dataclasses or annotations; const()
for integer constants; integer milliseconds (no float time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from provisioning.relay import bundle

SOURCES = bundle.sources()
FORBIDDEN = {"typing", "dataclasses", "abc", "enum", "hmac", "logging", "time"}


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_device_module_shape(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names = {(node.module or "").split(".")[0]}
        else:
            names = set()
        # brelay/ticks.py may fall back to CPython's time module; nothing else touches it.
        allowed = {"time"} if path.name == "ticks.py" else set()
        assert not (names & (FORBIDDEN - allowed)), f"{path.name} imports {names}"
        assert not isinstance(node, ast.AnnAssign), f"{path.name}:{node.lineno} annotation"
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None and not any(a.annotation for a in node.args.args)
        if isinstance(node, ast.Constant) and isinstance(node.value, float):
            raise AssertionError(f"{path.name}:{node.lineno}: float constant {node.value}")
