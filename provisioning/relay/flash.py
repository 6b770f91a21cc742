"""``relay flash``: copy the firmware bundle and the relay's config onto a board over USB.

Each file goes over the raw REPL in base64 chunks, is hashed on the board with
``hashlib.sha256`` and compared with the manifest; the config (with the key issued by the
home box) is written last, then the board soft-resets into the firmware.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from provisioning.relay.bundle import Bundle
from provisioning.relay.rawrepl import RawRepl, ReplError

CHUNK = 384
CONFIG_PATH = "relay.json"
SETUP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

_HASH = """import hashlib, binascii
h = hashlib.sha256()
with open({path!r}, 'rb') as f:
    while True:
        b = f.read(512)
        if not b:
            break
        h.update(b)
print(binascii.hexlify(h.digest()).decode())
"""


@dataclass(frozen=True)
class RelayConfig:
    """What the board's relay.json holds (see firmware brelay/cfg.py)."""

    relay_id: str
    key: str
    home: str
    ssid: str = ""
    psk: str = ""
    setup: str = ""

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "relay_id": self.relay_id,
            "key": self.key,
            "home": self.home,
            "ssid": self.ssid,
            "psk": self.psk,
            "setup": self.setup,
            "setup_shown": False,
            "epoch": 0,
        }
        return json.dumps(doc).encode()


def new_setup_code() -> str:
    return "".join(secrets.choice(SETUP_ALPHABET) for _ in range(16))


def write_file(repl: RawRepl, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on the board (via a temp file) and check its SHA-256 there."""
    tmp = path + ".part"
    repl.run(f"f = open({tmp!r}, 'wb')\nw = f.write", f"opening {path}")
    try:
        for i in range(0, len(data), CHUNK):
            b64 = base64.b64encode(data[i : i + CHUNK]).decode()
            repl.run(f"import binascii\nw(binascii.a2b_base64({b64!r}))", f"writing {path}")
    finally:
        repl.run("f.close()", f"closing {path}")
    got = repl.run(_HASH.format(path=tmp), f"hashing {path}").strip()
    want = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ReplError(
            f"{repl.name}: {path} is corrupt on the board (sha256 {got[:16]}… != {want[:16]}…); "
            "retry the flash"
        )
    repl.run(
        f"import os\ntry:\n    os.remove({path!r})\nexcept OSError:\n    pass\n"
        f"os.rename({tmp!r}, {path!r})",
        f"renaming {path}",
    )


def makedirs(repl: RawRepl, paths: list[str]) -> None:
    dirs = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    if dirs:
        code = (
            f"import os\nfor d in {dirs!r}:\n    try:\n        os.mkdir(d)\n    except OSError:\n"
        )
        repl.run(code + "        pass\n", "creating directories")


def flash(
    repl: RawRepl,
    bundle: Bundle,
    config: RelayConfig,
    progress: Callable[[str], None] = lambda _: None,
    reset: bool = True,
) -> None:
    """Enter the raw REPL, copy the bundle, verify it, write the config, soft-reset."""
    repl.enter()
    makedirs(repl, [f.path for f in bundle.files])
    for f in bundle.files:
        progress(f"{f.path} ({f.size} bytes)")
        write_file(repl, f.path, bundle.data(f))
    progress(CONFIG_PATH)
    write_file(repl, CONFIG_PATH, config.to_json())
    if reset:
        repl.soft_reset()
