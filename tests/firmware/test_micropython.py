"""The firmware's compiled modules (.mpy from mpy-cross) inside real MicroPython.

MicroPython's WebAssembly port (npm ``@micropython/micropython-webassembly-pyscript``) runs
under Node; the hardware modules it lacks (machine, network, socket) are small test doubles in
``tests/firmware/mp/``. Inputs made by the box's own code (messages, a sealed provisioning
request) check that both sides speak the same bytes.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from node.relays import _wire as w
from provisioning.relay import bundle, sealing
from tests.support import missing, require_binary

HERE = Path(__file__).resolve().parent
PACKAGE = "@micropython/micropython-webassembly-pyscript"
VERSION = "1.26.0"
KEY = bytes(range(32))
RID = bytes.fromhex("0a0b0c0d0e0f1011")


def wasm_dir() -> Path:
    """The npm package, installed on first use into a cache directory."""
    node = require_binary("node", "nodejs")
    cache = Path(os.environ.get("BITCHAT_MP_WASM_CACHE", Path.home() / ".cache" / "bitchat-node"))
    pkg = cache / "mp-wasm" / "node_modules" / PACKAGE
    if not (pkg / "micropython.wasm").exists():
        npm = require_binary("npm", "npm")
        proc = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--prefix", str(cache / "mp-wasm"),
             f"{PACKAGE}@{VERSION}"],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            missing(f"npm could not install {PACKAGE}@{VERSION}: {proc.stderr.strip()[-300:]}")
    assert node
    return pkg


def run_micropython(files: dict[str, bytes], script: str) -> subprocess.CompletedProcess[str]:
    spec = {"files": {k: base64.b64encode(v).decode() for k, v in files.items()}, "script": script}
    return subprocess.run(
        ["node", str(HERE / "mp_run.mjs"), str(wasm_dir())],
        input=json.dumps(spec), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def vectors() -> dict[str, object]:
    msgs = []
    samples: list[tuple[w.MsgType, tuple[object, ...]]] = [
        (w.MsgType.WELCOME, (b"abcdefgh", 15000)),
        (w.MsgType.ALLOC, (7, 0xC6120005, 0, 1 << 20, 5000, 60000)),
        (w.MsgType.FREE, (7,)),
        (w.MsgType.HEARTBEAT_ACK, ()),
        (w.MsgType.BRIDGE, (b"\x01\x02opaque",)),
        (w.MsgType.HEARTBEAT, (123456, 99, 1, 10, 2000, 0)),
    ]
    for i, (typ, fields) in enumerate(samples):
        msg = w.encode(KEY, typ, RID, 2**40 + i, *fields)
        shown = [("b:" + f.hex()) if isinstance(f, bytes) else f for f in fields]
        if typ == w.MsgType.BRIDGE:
            shown = [fields[0].hex()]  # type: ignore[union-attr]
        msgs.append([int(typ), 2**40 + i, shown, msg.hex()])
    code = "ABCD-EFGH-JKLM-NPQR"
    nonce = bytes(range(8))
    token = f"BR1:{RID.hex()}:{KEY.hex()}:192.168.1.5:7701"
    sealed = sealing.seal(code, nonce, sealing.request("home-wifi", "password1", token))
    return {
        "key": KEY.hex(),
        "rid": RID.hex(),
        "msgs": msgs,
        "sealed": {"code": code, "nonce_d": nonce.hex(), "msg": sealed.hex(), "ssid": "home-wifi"},
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("mpy")
    b = bundle.build("rp2", out)
    files = {f"/lib/{f.path[4:]}": b.data(f) for f in b.files if f.path.startswith("lib/")}
    for fake in (HERE / "mp").glob("*.py"):
        files[f"/lib/{fake.name}"] = fake.read_bytes()
    files["/vectors.json"] = json.dumps(vectors()).encode()
    proc = run_micropython(files, "import sys\nsys.path.insert(0, '/lib')\nimport checks\n")
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or not any(line.startswith("DONE") for line in lines):
        pytest.fail(f"MicroPython run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    found: dict[str, str] = {}
    for line in lines:
        word, _, rest = line.partition(" ")
        if word in ("PASS", "FAIL"):
            name = rest.split(":")[0]
            found[name] = line if word == "FAIL" else "PASS"
    found["_output"] = proc.stdout + proc.stderr
    return found


CHECKS = sorted(
    line.split("(")[0][4:]
    for line in (HERE / "mp" / "checks.py").read_text().splitlines()
    if line.startswith("def check_")
)


@pytest.mark.parametrize("name", CHECKS)
def test_on_micropython(results: dict[str, str], name: str) -> None:
    assert name in results, f"{name} did not run:\n{results['_output'][-2000:]}"
    assert results[name] == "PASS", f"{results[name]}\n{results['_output'][-3000:]}"


def test_micropython_is_1_23_or_later() -> None:
    proc = run_micropython({}, "import sys\nprint(sys.implementation.version)\n")
    major, minor = (int(x) for x in proc.stdout.strip("()\n").split(",")[:2])
    assert (major, minor) >= (1, 23)
